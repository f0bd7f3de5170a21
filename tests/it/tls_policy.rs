//! Outbound TLS that cannot be downgraded, against loopback peers: MTA-STS
//! policies served over HTTPS on 127.0.0.x:443 (certificates from test CAs
//! the config trusts), MX sinks with right and wrong certificates, TLSA
//! records from a test DNS server that sets the AD bit like a validating
//! resolver, and the TLS report (RFC 8460) mailed to the domain's `rua`.

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::dns::TestDns;
use crate::support::server::TestServer;
use crate::support::sink::{Behaviour, Sink, tls_config};
use crate::support::sts_peer::PolicyServer;
use crate::support::tls::TestCa;
use portcullis::delivery::result::TlsPolicyKind;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// An MX sink for `mx.DOMAIN` at `ip`:`port` whose certificate names `names`.
async fn mx_sink(dir: &Path, ip: &str, port: u16, names: &[&str]) -> (Sink, TestCa) {
    let dir = dir.join(format!("mx-{ip}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::generate_for(&dir, names);
    let sink = Sink::start(
        ip,
        port,
        Behaviour {
            tls: Some(tls_config(&ca)),
            ..Behaviour::accept_all()
        },
    )
    .await;
    (sink, ca)
}

fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// Publishes `domain`: its MX at `mx_ip`, and (when `sts_ip` is set) the
/// `_mta-sts` record and the policy host's address.
fn publish(dns: &TestDns, domain: &str, mx_ip: &str, sts_ip: Option<&str>) {
    dns.mx(domain, 10, &format!("mx.{domain}"));
    dns.host(&format!("mx.{domain}"), mx_ip);
    if let Some(ip) = sts_ip {
        dns.txt(
            &format!("_mta-sts.{domain}"),
            "v=STSv1; id=20261205T000000;",
        );
        dns.host(&format!("mta-sts.{domain}"), ip);
    }
}

fn trust(dir: &Path, cas: &[&TestCa]) -> String {
    let path = dir.join("trusted.pem");
    let pem: String = cas.iter().map(|c| c.ca_pem.clone()).collect();
    std::fs::write(&path, pem).unwrap();
    path.display().to_string()
}

async fn send(server: &TestServer, to: &str) -> String {
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "pc.office.test").await;
    let r = c
        .send_mail(
            "app@office.test",
            &[to],
            format!("Subject: to {to}\r\n\r\nbody\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// The recipient's state once an attempt was recorded (bounded wait).
async fn attempted(server: &TestServer, id: &str) -> portcullis::spool::RecipientState {
    let start = std::time::Instant::now();
    loop {
        let cmd = portcullis::queue::QueueCommand::Show {
            id: portcullis::spool::QueueId::parse(id).unwrap(),
            body: false,
        };
        let data = server.data_dir();
        let answer = tokio::task::block_in_place(|| {
            portcullis::control::ask_queue(&data, &cmd, Duration::from_secs(5))
        });
        match answer {
            Ok(portcullis::queue::QueueAnswer::Show { message }) => {
                let r = message.state.recipients[0].clone();
                if r.last_result.is_some() {
                    return r;
                }
            }
            // Gone from the queue: delivered.
            _ => panic!("message {id} left the queue"),
        }
        assert!(start.elapsed() < WAIT, "no attempt recorded for {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_enforce_delivers_only_to_a_listed_mx_with_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start().await;
    let port = crate::support::free_port("127.0.0.121");
    let (good_mx, good_ca) = mx_sink(dir.path(), "127.0.0.121", port, &["mx.good.test"]).await;
    let (bad_mx, bad_ca) = mx_sink(dir.path(), "127.0.0.122", port, &["someone-else.test"]).await;
    let Some(good_sts) = PolicyServer::start(
        dir.path(),
        "127.0.0.131",
        "good.test",
        &policy("enforce", "mx.good.test"),
    )
    .await
    else {
        eprintln!("skipped: binding port 443 needs root");
        return;
    };
    let wrong_sts = PolicyServer::start(
        dir.path(),
        "127.0.0.132",
        "wrongname.test",
        &policy("enforce", "mx.wrongname.test"),
    )
    .await
    .unwrap();
    let unlisted_sts = PolicyServer::start(
        dir.path(),
        "127.0.0.133",
        "unlisted.test",
        &policy("enforce", "*.elsewhere.test"),
    )
    .await
    .unwrap();
    publish(&dns, "good.test", "127.0.0.121", Some("127.0.0.131"));
    publish(&dns, "wrongname.test", "127.0.0.122", Some("127.0.0.132"));
    publish(&dns, "unlisted.test", "127.0.0.121", Some("127.0.0.133"));
    let trusted = trust(
        dir.path(),
        &[
            &good_ca,
            &bad_ca,
            &good_sts.ca,
            &wrong_sts.ca,
            &unlisted_sts.ca,
        ],
    );
    let server = TestServer::start(&format!(
        "{}[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[delivery]\nmx_port = {port}\nmta_sts = \"on\"\ntls_ca_file = \"{trusted}\"\nretry_schedule = [\"1h\"]\n",
        dns.config()
    ))
    .await;
    send(&server, "a@good.test").await;
    let got = good_mx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
    assert_eq!(
        good_sts.fetches.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let id = send(&server, "b@wrongname.test").await;
    let r = attempted(&server, &id).await;
    let result = r.last_result.unwrap();
    let p = result.tls_policy.expect("the policy is part of the result");
    assert_eq!(p.policy, TlsPolicyKind::StsEnforce);
    assert_eq!(
        p.failure.as_deref(),
        Some("certificate-host-mismatch"),
        "{p:?}"
    );
    assert!(
        bad_mx.messages().is_empty(),
        "nothing sent to a host that failed the check"
    );

    let id = send(&server, "c@unlisted.test").await;
    let r = attempted(&server, &id).await;
    let p = r.last_result.unwrap().tls_policy.unwrap();
    assert_eq!(p.failure.as_deref(), Some("validation-failure"), "{p:?}");
    assert!(
        p.detail.contains("not one the MTA-STS policy names"),
        "{p:?}"
    );
    assert_eq!(good_mx.messages().len(), 1, "an unlisted MX gets nothing");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_testing_delivers_and_the_tls_report_tells_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start().await;
    let port = crate::support::free_port("127.0.0.123");
    let (testing_mx, testing_ca) =
        mx_sink(dir.path(), "127.0.0.123", port, &["wrong.name.test"]).await;
    let (none_mx, none_ca) = mx_sink(dir.path(), "127.0.0.124", port, &["also.wrong.test"]).await;
    let reports = Sink::start("127.0.0.125", 0, Behaviour::accept_all()).await;
    let Some(testing_sts) = PolicyServer::start(
        dir.path(),
        "127.0.0.134",
        "testing.test",
        &policy("testing", "mx.testing.test"),
    )
    .await
    else {
        eprintln!("skipped: binding port 443 needs root");
        return;
    };
    let none_sts = PolicyServer::start(
        dir.path(),
        "127.0.0.135",
        "none.test",
        "version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n",
    )
    .await
    .unwrap();
    publish(&dns, "testing.test", "127.0.0.123", Some("127.0.0.134"));
    publish(&dns, "none.test", "127.0.0.124", Some("127.0.0.135"));
    dns.txt(
        "_smtp._tls.testing.test",
        "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test",
    );
    let trusted = trust(
        dir.path(),
        &[&testing_ca, &none_ca, &testing_sts.ca, &none_sts.ca],
    );
    let server = TestServer::start(&format!(
        "{}[server]\nhostname = \"relay.office.test\"\n[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[delivery]\nmx_port = {port}\nmta_sts = \"on\"\ntls_rpt = true\ntls_rpt_period = \"3s\"\ntls_ca_file = \"{trusted}\"\nretry_schedule = [\"1h\"]\n[[route]]\ndomain = \"reports.test\"\nhost = \"127.0.0.125:{}\"\n",
        dns.config(),
        reports.addr.port()
    ))
    .await;
    send(&server, "a@testing.test").await;
    send(&server, "b@none.test").await;
    assert_eq!(
        testing_mx.wait_for(1, WAIT).await.len(),
        1,
        "testing: delivered all the same"
    );
    assert_eq!(none_mx.wait_for(1, WAIT).await.len(), 1, "none: no policy");
    // The period ends and the report goes to the rua address.
    let got = reports.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "one report, for testing.test only");
    let mail = &got[0];
    assert_eq!(mail.rcpts, ["tlsrpt@reports.test"]);
    let parsed = mail_parser::MessageParser::default()
        .parse(&mail.data)
        .unwrap();
    assert!(
        parsed
            .subject()
            .unwrap()
            .starts_with("Report Domain: testing.test Submitter: relay.office.test"),
        "{:?}",
        parsed.subject()
    );
    let attachment = parsed
        .attachments()
        .find(|a| mail_parser::MimeHeaders::is_content_type(*a, "application", "tlsrpt+gzip"))
        .expect("a gzipped JSON report");
    let mut json = String::new();
    flate2::read::GzDecoder::new(attachment.contents())
        .read_to_string(&mut json)
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    // The fields RFC 8460 section 4.4 requires.
    assert_eq!(report["organization-name"], "relay.office.test");
    assert!(
        report["date-range"]["start-datetime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(report["date-range"]["end-datetime"].is_string());
    assert!(
        report["contact-info"]
            .as_str()
            .unwrap()
            .contains("postmaster@relay.office.test")
    );
    assert!(!report["report-id"].as_str().unwrap().is_empty());
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{report:#}");
    let p = &policies[0];
    assert_eq!(p["policy"]["policy-type"], "sts");
    assert_eq!(p["policy"]["policy-domain"], "testing.test");
    assert!(
        p["policy"]["policy-string"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "mode: testing")
    );
    assert_eq!(p["policy"]["mx-host"][0], "mx.testing.test");
    assert_eq!(p["summary"]["total-successful-session-count"], 0);
    assert_eq!(p["summary"]["total-failure-session-count"], 1);
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "certificate-host-mismatch");
    assert_eq!(f["receiving-mx-hostname"], "mx.testing.test");
    assert_eq!(f["receiving-ip"], "127.0.0.123");
    assert_eq!(f["failed-session-count"], 1);
    server.stop().await;
}

/// SHA-256 of the SubjectPublicKeyInfo of the key in `key_path` (TLSA 3 1 1).
fn spki_sha256(key_path: &Path) -> Vec<u8> {
    use sha2::Digest;
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(key_path).unwrap()).unwrap();
    sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_pins_the_mx_certificate_when_the_resolver_vouches_for_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start().await;
    let port = crate::support::free_port("127.0.0.126");
    // Self-made certificates nobody's CA trusts: DANE-EE needs no CA.
    let (pinned_mx, pinned_ca) =
        mx_sink(dir.path(), "127.0.0.126", port, &["mx.pinned.test"]).await;
    let (other_mx, _) = mx_sink(dir.path(), "127.0.0.127", port, &["mx.mismatch.test"]).await;
    publish(&dns, "pinned.test", "127.0.0.126", None);
    publish(&dns, "mismatch.test", "127.0.0.127", None);
    dns.tlsa(
        &format!("_{port}._tcp.mx.pinned.test"),
        3,
        1,
        1,
        spki_sha256(&pinned_ca.key_path),
    );
    let mut wrong = spki_sha256(&pinned_ca.key_path);
    wrong[0] ^= 0xff;
    dns.tlsa(&format!("_{port}._tcp.mx.mismatch.test"), 3, 1, 1, wrong);
    // DANE-TA: the sink presents its chain with the CA, and the record pins that CA.
    let ta_dir = dir.path().join("ta");
    std::fs::create_dir_all(&ta_dir).unwrap();
    let ta_ca = TestCa::generate_for(&ta_dir, &["mx.anchored.test"]);
    let chain = ta_dir.join("chain.pem");
    std::fs::write(
        &chain,
        format!(
            "{}{}",
            std::fs::read_to_string(&ta_ca.cert_path).unwrap(),
            ta_ca.ca_pem
        ),
    )
    .unwrap();
    let anchored_mx = Sink::start(
        "127.0.0.128",
        port,
        Behaviour {
            tls: Some(portcullis::tls::server_config(&chain, &ta_ca.key_path).unwrap()),
            ..Behaviour::accept_all()
        },
    )
    .await;
    publish(&dns, "anchored.test", "127.0.0.128", None);
    let ca_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(ta_ca.ca_pem.as_bytes()).unwrap()
    };
    {
        use sha2::Digest;
        dns.tlsa(
            &format!("_{port}._tcp.mx.anchored.test"),
            2,
            0,
            1,
            sha2::Sha256::digest(ca_der.as_ref()).to_vec(),
        );
    }
    dns.set_authentic(true);
    let server = TestServer::start(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\nvalidating = true\n[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[delivery]\nmx_port = {port}\ndane = \"on\"\nretry_schedule = [\"1h\"]\n",
        dns.addr
    ))
    .await;
    send(&server, "a@pinned.test").await;
    let got = pinned_mx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);

    send(&server, "t@anchored.test").await;
    let got = anchored_mx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "DANE-TA: the chain ends at the pinned anchor");
    assert!(got[0].tls);

    let id = send(&server, "b@mismatch.test").await;
    let r = attempted(&server, &id).await;
    let p = r.last_result.unwrap().tls_policy.expect("DANE governed it");
    assert_eq!(p.policy, TlsPolicyKind::Dane);
    assert_eq!(p.failure.as_deref(), Some("tlsa-invalid"), "{p:?}");
    assert!(other_mx.messages().is_empty());
    server.stop().await;

    // Without the AD bit the same records prove nothing: DANE does not
    // apply and the mail goes out with opportunistic TLS.
    dns.set_authentic(false);
    let server = TestServer::start(&format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\nvalidating = true\n[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[delivery]\nmx_port = {port}\ndane = \"on\"\nretry_schedule = [\"1h\"]\n",
        dns.addr
    ))
    .await;
    send(&server, "c@mismatch.test").await;
    assert_eq!(other_mx.wait_for(1, WAIT).await.len(), 1);
    server.stop().await;
}

/// A private CA installed the way admins install one (here SSL_CERT_FILE,
/// which the system trust store honours) is trusted without tls_ca_file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systems_trust_store_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let dns = TestDns::start().await;
    let port = crate::support::free_port("127.0.0.129");
    let (mx, mx_ca) = mx_sink(dir.path(), "127.0.0.129", port, &["mx.system.test"]).await;
    let Some(sts) = PolicyServer::start(
        dir.path(),
        "127.0.0.136",
        "system.test",
        &policy("enforce", "mx.system.test"),
    )
    .await
    else {
        eprintln!("skipped: binding port 443 needs root");
        return;
    };
    publish(&dns, "system.test", "127.0.0.129", Some("127.0.0.136"));
    let trusted = trust(dir.path(), &[&mx_ca, &sts.ca]);
    let ca = TestCa::generate(dir.path());
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        crate::support::server::complete_config(
            &format!(
                "{}[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[delivery]\nmx_port = {port}\nmta_sts = \"on\"\nretry_schedule = [\"1h\"]\n",
                dns.config()
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let mut shell = std::process::Command::new("sh");
    shell.args([
        "-c",
        &format!(
            "SSL_CERT_FILE={trusted} SSL_CERT_DIR=/nonexistent exec \"$0\" serve --config \"$1\""
        ),
    ]);
    let server = crate::support::server::ProcessServer::spawn_shell(
        shell,
        crate::support::server::binary(),
        &path,
    );
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "pc.office.test").await;
    let r = c
        .send_mail(
            "app@office.test",
            &["a@system.test"],
            b"Subject: s\r\n\r\nbody\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let got = mx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered under the enforced policy");
    assert!(got[0].tls);
    assert_eq!(
        sts.fetches.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the policy server's certificate was trusted through the system store"
    );
}
