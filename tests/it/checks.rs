//! The anti-spam checks over real SMTP and real DNS: the test's own DNS
//! server serves the lists, PTR, A and MX records (and a zone that never
//! answers); clients come from distinct loopback addresses, or from a network
//! namespace where a real (non-loopback) address is needed.

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::dns::TestDns;
use crate::support::server::TestServer;
use std::time::{Duration, Instant};

const INBOUND: &str = "[relay]\ninbound_domains = [\"example.lan\"]\n[[network]]\nrange = \"127.0.0.3\"\nauth = \"none\"\n";

fn config(dns: &TestDns, checks: &str) -> String {
    format!("{}{INBOUND}[checks]\n{checks}\n", dns.config())
}

/// Sends EHLO and MAIL from `source`; returns the MAIL reply.
async fn mail_from(
    server: &TestServer,
    source: &str,
    helo: &str,
    sender: &str,
) -> crate::support::client::Reply {
    let mut c = SmtpClient::greeted(server.addr(), source, helo).await;
    c.cmd(&format!("MAIL FROM:<{sender}>")).await
}

/// Waits (bounded) until the zone health check has run once.
async fn zones_checked(dns: &TestDns, zone: &str) {
    let started = Instant::now();
    while dns.queries_for(&format!("1.0.0.127.{zone}")) == 0 {
        assert!(started.elapsed() < WAIT, "no health check of {zone}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_refuses_a_listed_client_naming_the_zone() {
    let dns = TestDns::start().await;
    dns.dns_list("bl.test");
    dns.dns_list("codes.test");
    dns.dns_list("wl.test");
    dns.list_in(
        "bl.test",
        "127.0.3.50",
        "127.0.0.2",
        Some("Listed for spam, see bl.test/lookup"),
    );
    dns.list_in("codes.test", "127.0.3.51", "127.0.0.4", None);
    dns.list_in("bl.test", "127.0.3.52", "127.0.0.2", None);
    dns.list_in("wl.test", "127.0.3.52", "127.0.0.2", None);
    let server = TestServer::start(&config(
        &dns,
        "dnsbl = [\"bl.test\", \"codes.test=127.0.0.2\"]\ndnswl = [\"wl.test\"]\ndns_timeout = \"2s\"",
    ))
    .await;
    zones_checked(&dns, "bl.test").await;
    // Listed: refused, the reply names the zone and its reason.
    let r = mail_from(&server, "127.0.3.50", "client.test", "a@client.test").await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(
        r.text().contains("5.7.1") && r.text().contains("bl.test"),
        "{r:?}"
    );
    assert!(
        r.text().contains("Listed for spam"),
        "the TXT reason is passed on: {r:?}"
    );
    // Listed only with a code the config does not count: allowed.
    assert_eq!(
        mail_from(&server, "127.0.3.51", "client.test", "a@client.test")
            .await
            .code,
        250
    );
    // Listed, but on the white list too: allowed.
    assert_eq!(
        mail_from(&server, "127.0.3.52", "client.test", "a@client.test")
            .await
            .code,
        250
    );
    // Not listed: allowed; the trusted LAN client is not even looked up.
    assert_eq!(
        mail_from(&server, "127.0.3.53", "client.test", "a@client.test")
            .await
            .code,
        250
    );
    assert_eq!(
        mail_from(&server, "127.0.0.3", "lan.test", "a@client.test")
            .await
            .code,
        250
    );
    assert!(
        dns.queries_for("2.0.0.127.bl.test") >= 1,
        "the zone's health was checked"
    );
    assert_eq!(
        dns.queries_for(&portcullis::checks::dns_lists::query_name(
            "127.0.0.3".parse().unwrap(),
            "bl.test"
        )),
        0,
        "skip_for_trusted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_works_for_ipv6_clients() {
    let dns = TestDns::start().await;
    dns.dns_list("bl6.test");
    dns.list_in("bl6.test", "::1", "127.0.0.2", None);
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\"]\n[[listener]]\naddress = \"[::1]:0\"\n[checks]\ndnsbl = [\"bl6.test\"]\n",
        dns.config()
    ))
    .await;
    zones_checked(&dns, "bl6.test").await;
    let mut c = SmtpClient::greeted(server.addr(), "::1", "v6.test").await;
    let r = c.cmd("MAIL FROM:<a@client.test>").await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().contains("bl6.test"), "{r:?}");
}

/// A zone that never answers: a lookup under it waits at most dns_timeout and
/// then tempfails (or passes, with on_dns_error = "accept"); the health
/// check sets the zone aside, after which mail flows without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_zone_costs_at_most_the_timeout_and_is_set_aside() {
    let dns = TestDns::start().await;
    dns.dns_list("slow.test");
    // The zone is healthy, but the client's own entry never gets an answer.
    dns.silent(&portcullis::checks::dns_lists::query_name(
        "127.0.3.60".parse().unwrap(),
        "slow.test",
    ));
    for (policy, want) in [("tempfail", 451), ("accept", 250)] {
        let server = TestServer::start(&config(
            &dns,
            &format!("dnsbl = [\"slow.test\"]\ndns_timeout = \"1s\"\non_dns_error = \"{policy}\""),
        ))
        .await;
        zones_checked(&dns, "slow.test").await;
        let started = Instant::now();
        let r = mail_from(&server, "127.0.3.60", "client.test", "a@client.test").await;
        assert_eq!(r.code, want, "{policy}: {r:?}");
        if want == 451 {
            assert!(r.text().starts_with("4.4.3"), "{r:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded by dns_timeout"
        );
    }
    // A zone that does not answer its test entries at all is set aside.
    let dead = TestDns::start().await;
    dead.silent("2.0.0.127.dead.test");
    dead.silent("1.0.0.127.dead.test");
    dead.silent(&portcullis::checks::dns_lists::query_name(
        "127.0.3.61".parse().unwrap(),
        "dead.test",
    ));
    let server = crate::support::server::ProcessServer::spawn(&{
        let dir = tempfile::tempdir().unwrap().keep();
        let ca = crate::support::tls::TestCa::generate(&dir);
        let text = crate::support::server::complete_config(
            &config(&dead, "dnsbl = [\"dead.test\"]\ndns_timeout = \"1s\""),
            &dir,
            &ca,
        );
        let path = dir.join("portcullis.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    assert!(
        server.wait_for_log("DNS list zone set aside"),
        "{}",
        server.log.lock().unwrap()
    );
    let mut c = SmtpClient::greeted(server.addr, "127.0.3.61", "client.test").await;
    c.expect("MAIL FROM:<a@client.test>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helo_and_sender_domain_lookups() {
    let dns = TestDns::start().await;
    dns.host("real.client.test", "127.0.3.70");
    dns.host("elsewhere.client.test", "127.0.3.99");
    dns.mx("good.test", 10, "mx.good.test");
    dns.null_mx("nomail.test");
    let server = TestServer::start(&config(
        &dns,
        "helo_lookup = \"matches\"\nsender_domain = \"exists\"",
    ))
    .await;
    assert_eq!(
        mail_from(&server, "127.0.3.70", "real.client.test", "a@good.test")
            .await
            .code,
        250
    );
    let r = mail_from(
        &server,
        "127.0.3.70",
        "elsewhere.client.test",
        "a@good.test",
    )
    .await;
    assert_eq!(r.code, 550, "HELO resolves elsewhere: {r:?}");
    let r = mail_from(&server, "127.0.3.70", "nowhere.client.test", "a@good.test").await;
    assert_eq!(r.code, 550, "HELO does not resolve: {r:?}");
    let r = mail_from(&server, "127.0.3.70", "real.client.test", "a@nomail.test").await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().starts_with("5.1.8"), "{r:?}");
    let r = mail_from(
        &server,
        "127.0.3.70",
        "real.client.test",
        "a@no-such-domain.test",
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    // "resolves" only asks that the name resolve at all.
    let server = TestServer::start(&config(&dns, "helo_lookup = \"resolves\"")).await;
    assert_eq!(
        mail_from(&server, "127.0.3.70", "elsewhere.client.test", "a@x.test")
            .await
            .code,
        250
    );
    assert_eq!(
        mail_from(&server, "127.0.3.70", "nowhere.client.test", "a@x.test")
            .await
            .code,
        550
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talkers_and_unauthenticated_pipelining_are_refused() {
    use tokio::io::AsyncWriteExt;
    let dns = TestDns::start().await;
    let server = TestServer::start(&config(
        &dns,
        "pregreet = \"reject\"\npregreet_wait = \"500ms\"",
    ))
    .await;
    // Talks before the banner.
    let mut s = crate::support::client::tcp_from("127.0.3.80", server.addr()).await;
    s.write_all(b"EHLO eager.test\r\n").await.unwrap();
    let mut c = SmtpClient::from_stream(s);
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.5.1"), "{r:?}");
    // Waits for the banner: welcome.
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.81", "patient.test").await;
    // Content before the 354, from a stranger: refused and cut off.
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.send_raw(b"DATA\r\nSubject: hurried\r\n\r\nx\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().contains("pipelining"), "{r:?}");
    assert!(c.closed().await);
    assert!(server.queued().is_empty());
    // The trusted LAN client may be sloppy.
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "lan.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.send_raw(b"DATA\r\nSubject: hurried\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(c.read_reply().await.code, 354);
    assert_eq!(c.read_reply().await.code, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists() {
    let dns = TestDns::start().await;
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\"]\n[[network]]\nrange = \"127.0.0.3\"\nauth = \"none\"\n[lists]\nreject_senders = [\"spammer@example.net\", \"@bad.example\"]\nreject_recipients = [\"@competitor.example\"]\nallow_senders = [\"@office.example\"]\n",
        dns.config()
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.3", "lan.test").await;
    c.expect("MAIL FROM:<Spammer@Example.NET>", 550).await;
    c.expect("MAIL FROM:<anyone@bad.example>", 550).await;
    c.expect("MAIL FROM:<clerk@office.example>", 250).await;
    c.expect("RCPT TO:<boss@competitor.example>", 550).await;
    c.expect("RCPT TO:<partner@far.example>", 250).await;
    c.expect("RSET", 250).await;
    // A sender not on allow_senders may not relay, but may still write to us.
    c.expect("MAIL FROM:<someone@elsewhere.example>", 250).await;
    let r = c.expect("RCPT TO:<partner@far.example>", 550).await;
    assert!(r.text().contains("may not send"), "{r:?}");
    c.expect("RCPT TO:<boss@example.lan>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_auth_failure_bans() {
    let dns = TestDns::start().await;
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\"]\n[limits]\nmessages_per_hour_per_ip = 2\nrecipients_per_hour_per_ip = 3\nauth_failures_before_ban = 3\nban_duration = \"2s\"\n",
        dns.config()
    ))
    .await;
    crate::support::write_users(&server.config.users_file(), &[("bob", "builder")]);
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.90", "busy.test").await;
    for i in 0..2 {
        let r = c
            .send_mail(
                "a@x.test",
                &["b@example.lan"],
                format!("Subject: {i}\r\n\r\nx\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let r = c.cmd("MAIL FROM:<a@x.test>").await;
    assert_eq!(r.code, 450, "the third message within the hour: {r:?}");
    assert!(r.text().starts_with("4.7.1"), "{r:?}");
    // Recipients: two counted above, one more allowed, then refused.
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.91", "other.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    for _ in 0..3 {
        c.expect("RCPT TO:<b@example.lan>", 250).await;
    }
    c.expect("RCPT TO:<c@example.lan>", 450).await;
    // Three failed logins from one address: banned, at once and at connect.
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.92", "guesser.test").await;
    assert_eq!(c.auth_plain("bob", "guess1").await.code, 535);
    assert_eq!(c.auth_plain("bob", "guess2").await.code, 535);
    let r = c.auth_plain("bob", "guess3").await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.closed().await);
    let mut again = SmtpClient::connect_raw(server.addr(), "127.0.3.92").await;
    assert_eq!(again.read_reply().await.code, 421, "banned at connect");
    // Another address is not affected; the ban ends after ban_duration.
    SmtpClient::connect(server.addr(), "127.0.3.93").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Greeted again (the EHLO gets its 250) once the ban is over.
    SmtpClient::greeted(server.addr(), "127.0.3.92", "back.test").await;
}

/// Reverse DNS needs a client at a real address (loopback reverse names are
/// answered by the resolver itself): clients in a network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_dns_ptr_and_fcrdns() {
    let ns = crate::support::netns::Namespace::with_default_route("10.80.0.2/24", "10.80.0.1");
    ns.link_host_end("10.80.0.1/24");
    ns.add_address("10.80.0.3/24");
    ns.add_address("10.80.0.4/24");
    let dns = TestDns::start().await;
    dns.ptr("10.80.0.2", "client.rdns.test");
    dns.host("client.rdns.test", "10.80.0.2");
    dns.ptr("10.80.0.3", "liar.rdns.test");
    dns.host("liar.rdns.test", "10.80.0.99");
    for (mode, honest, liar, nameless) in [("fcrdns", 250, 550, 550), ("ptr", 250, 250, 550)] {
        let server = TestServer::start(&format!(
            "{}{INBOUND}[[listener]]\naddress = \"10.80.0.1:0\"\n[checks]\nreverse_dns = \"{mode}\"\n",
            dns.config()
        ))
        .await;
        let addr = server.addr();
        let got = tokio::task::block_in_place(|| {
            ["10.80.0.2", "10.80.0.3", "10.80.0.4"]
                .map(|src| ns.mail_from(src, addr, "a@client.test"))
        });
        assert_eq!(
            [got[0].0, got[1].0, got[2].0],
            [honest, liar, nameless],
            "{mode}: {got:?}"
        );
        assert!(got[2].1.contains("5.7.25"), "{got:?}");
        server.stop().await;
    }
    // IPv6: the PTR under ip6.arpa (nibbles), forward-confirmed by AAAA.
    ns.add_address("fd80::2/64");
    ns.link_host_end("fd80::1/64");
    dns.ptr("fd80::2", "v6.rdns.test");
    dns.host("v6.rdns.test", "fd80::2");
    let server = TestServer::start(&format!(
        "{}{INBOUND}[[listener]]\naddress = \"[fd80::1]:0\"\n[checks]\nreverse_dns = \"fcrdns\"\n",
        dns.config()
    ))
    .await;
    let addr = server.addr();
    let (code, text) =
        tokio::task::block_in_place(|| ns.mail_from("fd80::2", addr, "a@client.test"));
    assert_eq!(code, 250, "{text}");
    ns.add_address("fd80::3/64");
    let (code, text) =
        tokio::task::block_in_place(|| ns.mail_from("fd80::3", addr, "a@client.test"));
    assert_eq!(code, 550, "no PTR for fd80::3: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_verification_by_list_and_by_callout() {
    use crate::support::sink::{Behaviour, Sink};
    let dns = TestDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("valid-recipients");
    std::fs::write(&list, "boss@example.lan\n@sales.example.lan\n").unwrap();
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\", \"sales.example.lan\"]\nverify_recipients = \"list\"\nvalid_recipients_file = \"{}\"\n",
        dns.config(),
        list.display()
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.100", "stranger.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    let r = c.expect("RCPT TO:<nobody@example.lan>", 550).await;
    assert!(r.text().starts_with("5.1.1"), "{r:?}");
    c.expect("RCPT TO:<Boss@example.lan>", 250).await;
    c.expect("RCPT TO:<anyone@sales.example.lan>", 250).await;

    // Callout: the office server behind the route is asked, and the answers kept.
    let office = Sink::start(
        "127.0.0.93",
        0,
        Behaviour {
            reject_rcpt: vec![("nobody", 550, "5.1.1 no such user")],
            ..Behaviour::accept_all()
        },
    )
    .await;
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\", \"down.example.lan\"]\nverify_recipients = \"callout\"\n[[route]]\ndomain = \"example.lan\"\nhost = \"{}\"\n[[route]]\ndomain = \"down.example.lan\"\nhost = \"127.0.0.94:1\"\n",
        dns.config(),
        office.addr
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.101", "stranger.test").await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<nobody@example.lan>", 550).await;
    c.expect("RCPT TO:<boss@example.lan>", 250).await;
    let r = c.expect("RCPT TO:<anyone@down.example.lan>", 451).await;
    assert!(
        r.text().starts_with("4.4.3"),
        "next hop down: try later, {r:?}"
    );
    assert!(office.messages().is_empty(), "a callout sends no message");
}

/// With verification off, a stranger's mail to an address the next hop
/// refuses bounces — with the headers only, never the stranger's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_bounce_carries_headers_only() {
    use crate::support::sink::{Behaviour, Sink};
    let dns = TestDns::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let office = Sink::start(
        "127.0.0.95",
        port,
        Behaviour {
            reject_rcpt: vec![("nobody", 550, "5.1.1 no such user")],
            ..Behaviour::accept_all()
        },
    )
    .await;
    let victim = Sink::start("127.0.0.96", port, Behaviour::accept_all()).await;
    dns.mail_domain("victim.example", "127.0.0.96");
    let server = TestServer::start(&format!(
        "{}[relay]\ninbound_domains = [\"example.lan\"]\n[delivery]\nmx_port = {port}\nretry_schedule = [\"1s\"]\n[[route]]\ndomain = \"example.lan\"\nhost = \"127.0.0.95:{port}\"\n",
        dns.config()
    ))
    .await;
    let mut c = SmtpClient::greeted(server.addr(), "127.0.3.102", "spammer.test").await;
    // 2,000 header lines of spam before the body: none of them may travel either.
    let mut message = String::from("Subject: buy now\r\n");
    for i in 0..2000 {
        message.push_str(&format!("X-Spam-{i}: SPAM HEADER CONTENT\r\n"));
    }
    message.push_str("\r\nSPAM CONTENT THAT MUST NOT TRAVEL\r\n");
    let r = c
        .send_mail(
            "someone@victim.example",
            &["nobody@example.lan"],
            message.as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250);
    let bounces = victim.wait_for(1, WAIT).await;
    assert_eq!(bounces.len(), 1, "a bounce goes to the named sender");
    let text = String::from_utf8_lossy(&bounces[0].data);
    assert!(text.contains("text/rfc822-headers"), "{text}");
    assert!(
        text.contains("Subject: buy now"),
        "the headers are there: {text}"
    );
    assert!(!text.contains("SPAM CONTENT"), "the body is not: {text}");
    assert!(
        !text.contains("SPAM HEADER CONTENT"),
        "nor the stranger's other header lines"
    );
    assert!(
        bounces[0].data.len() < 16 * 1024,
        "{} bytes",
        bounces[0].data.len()
    );
    drop(office);
}

/// `explain` does the same lookups through the same resolver, and agrees
/// with the server; `--offline` skips them and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_runs_the_checks_like_the_server() {
    use crate::support::run_with_timeout;
    let dns = TestDns::start().await;
    dns.dns_list("bl.test");
    dns.list_in("bl.test", "127.0.3.110", "127.0.0.2", Some("seen spamming"));
    let server = TestServer::start(&config(&dns, "dnsbl = [\"bl.test\"]")).await;
    zones_checked(&dns, "bl.test").await;
    let real = mail_from(&server, "127.0.3.110", "client.test", "a@client.test").await;
    let path = server.dir.path().join("explain.toml");
    std::fs::write(&path, toml::to_string(&server.config).unwrap()).unwrap();
    let explain = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(crate::support::server::binary());
        cmd.args(["explain", "--json", "--config"])
            .arg(&path)
            .args([
                "--ip",
                "127.0.3.110",
                "--from",
                "a@client.test",
                "--to",
                "b@example.lan",
            ])
            .args(extra);
        let (ok, out, err) = run_with_timeout(&mut cmd, WAIT);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (ok, v)
    };
    let (ok, v) = tokio::task::block_in_place(|| explain(&[]));
    assert!(!ok);
    let reply = v["reply"].as_str().unwrap();
    assert!(
        reply.starts_with(&real.code.to_string()) && reply.contains("bl.test"),
        "{reply} vs {real:?}"
    );
    assert!(reply.contains("seen spamming"), "{reply}");
    let (ok, v) = tokio::task::block_in_place(|| explain(&["--offline"]));
    assert!(ok, "{v}");
    assert!(
        v["steps"][0]["text"]
            .as_str()
            .unwrap()
            .contains("--offline"),
        "{v}"
    );
}
