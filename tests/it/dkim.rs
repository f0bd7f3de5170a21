//! DKIM signing checked by an independent verifier: keys made by `portcullis
//! dkim keygen` (RSA and Ed25519) and published by a test DNS server;
//! Python's dkimpy (Debian's python3-dkim, with python3-nacl for Ed25519)
//! verifies each signature of a message the relay delivered, and fails once
//! a byte of the body changed. A stranger's message and a foreign From: are
//! not signed; `doctor` says whether the published record matches the key.

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::dns::TestDns;
use crate::support::server::{TestServer, binary};
use crate::support::sink::{Behaviour, Received, Sink};
use std::path::Path;
use std::process::Command;

/// Runs `portcullis dkim keygen`; the TXT value it printed.
fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: &str,
) -> (std::path::PathBuf, String) {
    let out = dir.join(format!("{selector}.key"));
    let run = Command::new(binary())
        .args([
            "dkim",
            "keygen",
            domain,
            selector,
            "--algorithm",
            algorithm,
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is private");
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let record = stdout
        .lines()
        .find(|l| l.starts_with("v=DKIM1;"))
        .expect("the record value is printed")
        .to_string();
    assert!(stdout.contains(&format!("{selector}._domainkey.{domain}. IN TXT")));
    (out, record)
}

/// dkimpy's verdict on each DKIM-Signature of `message`, asking `dns`.
fn verify(dir: &Path, dns: &TestDns, message: &[u8]) -> Vec<bool> {
    let script = dir.join("verify.py");
    std::fs::write(
        &script,
        format!(
            r#"
import json, sys
import dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["{ip}"]
resolver.port = {port}
dns.resolver.default_resolver = resolver
message = open(sys.argv[1], "rb").read()
d = dkim.DKIM(message)
count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
print(json.dumps([bool(d.verify(idx=i)) for i in range(count)]))
"#,
            ip = dns.addr.ip(),
            port = dns.addr.port()
        ),
    )
    .unwrap();
    let path = dir.join("message.eml");
    std::fs::write(&path, message).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn send(server: std::net::SocketAddr, source: &str, from: &str, to: &str) {
    let mut c = SmtpClient::greeted(server, source, "pc.office.test").await;
    let body = format!(
        "From: \"Accounts\" <{from}>\r\nTo: <{to}>\r\nSubject: invoice 42\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <42@office.test>\r\n\r\nDear customer,\r\n\r\nyour invoice is attached.   \r\n.leading dot line\r\n"
    );
    let r = c.send_mail(from, &[to], body.as_bytes()).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
}

fn signatures(m: &Received) -> usize {
    String::from_utf8_lossy(&m.data)
        .matches("DKIM-Signature:")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_mail_is_signed_with_rsa_and_ed25519_and_verifies_independently() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_key, rsa_record) = keygen(dir.path(), "office.test", "r2026", "rsa");
    let (ed_key, ed_record) = keygen(dir.path(), "office.test", "e2026", "ed25519");
    let dns = TestDns::start().await;
    dns.txt_long("r2026._domainkey.office.test", &rsa_record);
    dns.txt_long("e2026._domainkey.office.test", &ed_record);
    let sink = Sink::start("127.0.0.96", 0, Behaviour::accept_all()).await;
    let server = TestServer::start(&format!(
        "{}[[network]]\nrange = \"127.0.0.2/32\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"inbound.test\"]\n[[route]]\ndomain = [\"far.example\", \"inbound.test\"]\nhost = \"127.0.0.96:{}\"\n[[dkim]]\ndomain = \"office.test\"\nselector = \"r2026\"\nkey_file = \"{}\"\n[[dkim]]\ndomain = \"office.test\"\nselector = \"e2026\"\nkey_file = \"{}\"\n",
        dns.config(),
        sink.addr.port(),
        rsa_key.display(),
        ed_key.display()
    ))
    .await;
    // Trusted, our domain: signed twice.
    send(
        server.addr(),
        "127.0.0.2",
        "billing@office.test",
        "customer@far.example",
    )
    .await;
    // Trusted, a domain without a key: not signed.
    send(
        server.addr(),
        "127.0.0.2",
        "someone@elsewhere.example",
        "customer@far.example",
    )
    .await;
    // A stranger writing as our domain to our inbound domain: never signed.
    send(
        server.addr(),
        "127.0.0.9",
        "billing@office.test",
        "staff@inbound.test",
    )
    .await;
    let got = sink.wait_for(3, WAIT).await;
    assert_eq!(got.len(), 3);
    let ours = got
        .iter()
        .find(|m| m.from == "billing@office.test" && m.rcpts == ["customer@far.example"])
        .unwrap();
    assert_eq!(
        signatures(ours),
        2,
        "{}",
        String::from_utf8_lossy(&ours.data)
    );
    let text = String::from_utf8_lossy(&ours.data);
    assert!(
        text.contains("a=rsa-sha256") && text.contains("a=ed25519-sha256"),
        "{text}"
    );
    assert_eq!(verify(dir.path(), &dns, &ours.data), [true, true], "{text}");
    // One byte of the body changed: both fail.
    let mut forged = ours.data.clone();
    let at = forged.windows(8).position(|w| w == b"invoice ").unwrap();
    forged[at] = b'I';
    assert_eq!(verify(dir.path(), &dns, &forged), [false, false]);
    // A From: added after signing breaks it too (From is over-signed).
    let mut added = b"From: mallory@evil.example\r\n".to_vec();
    added.extend_from_slice(&ours.data);
    assert_eq!(verify(dir.path(), &dns, &added), [false, false]);
    for m in got.iter().filter(|m| !std::ptr::eq(*m, ours)) {
        assert_eq!(signatures(m), 0, "{}", String::from_utf8_lossy(&m.data));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_whether_the_published_key_matches() {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = keygen(dir.path(), "office.test", "s1", "ed25519");
    let (_other, other_record) = keygen(dir.path(), "office.test", "s2", "ed25519");
    let dns = TestDns::start().await;
    let config = dir.path().join("portcullis.toml");
    let run = |selector: &str| {
        std::fs::write(
            &config,
            format!(
                "{}[server]\ndata_dir = \"{}\"\nhostname = \"relay.office.test\"\n[diagnostics]\npublic_ip = \"192.0.2.10\"\n[[dkim]]\ndomain = \"office.test\"\nselector = \"{selector}\"\nkey_file = \"{}\"\n",
                dns.config(),
                dir.path().join("data").display(),
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(binary())
            .args(["doctor", "--json", "--timeout", "2", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with("DKIM"))
            .cloned()
            .expect("a DKIM check")
    };
    let c = tokio::task::block_in_place(|| run("s1"));
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["fix"].as_str().unwrap().contains(&record), "{c}");
    dns.txt_long("s1._domainkey.office.test", &record);
    dns.txt_long("s9._domainkey.office.test", &other_record);
    let c = tokio::task::block_in_place(|| run("s1"));
    assert_eq!(c["status"], "ok", "{c}");
    let c = tokio::task::block_in_place(|| run("s9"));
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("not the key"), "{c}");
}
