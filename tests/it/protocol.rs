//! The receive side against hostile and unusual clients, over real sockets.

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use crate::support::strip_received;
use std::time::Duration;

const LAN: &str = "127.0.0.2";
const OUTSIDER: &str = "127.0.3.9";

fn config(extra_server: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n"
    )
}

async fn ehlo(server: &TestServer, source: &str) -> SmtpClient {
    SmtpClient::greeted(server.addr(), source, "client.test").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_advertises_the_extensions() {
    let server = TestServer::start(&config("")).await;
    let mut c = SmtpClient::connect(server.addr(), LAN).await;
    let r = c.expect("EHLO client.test", 250).await;
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "STARTTLS",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(r.lines.iter().any(|l| l == ext), "missing {ext}: {r:?}");
    }
    c.expect("NOOP", 250).await;
    assert!(
        c.expect("VRFY someone", 252)
            .await
            .text()
            .starts_with("2.5.0")
    );
    c.expect("EXPN list", 502).await;
    c.expect("HELP", 214).await;
    c.expect("QUIT", 221).await;
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_errors() {
    let server = TestServer::start(&config("")).await;
    let mut c = SmtpClient::connect(server.addr(), LAN).await;
    c.expect("MAIL FROM:<a@x.test>", 503).await;
    c.expect("EHLO client.test", 250).await;
    c.expect("RCPT TO:<a@example.lan>", 503).await;
    c.expect("DATA", 503).await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("MAIL FROM:<a@x.test>", 503).await;
    c.expect("DATA", 554).await;
    c.expect("RSET", 250).await;
    c.expect("RCPT TO:<a@example.lan>", 503).await;
    c.expect("MAIL FROM:a@x.test", 553).await;
    c.expect("FROB", 500).await;
    c.expect("MAIL FROM:<a@x.test> FOO=BAR", 555).await;
    c.expect("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_is_spooled_once() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    c.send_raw(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@example.lan>\r\nRCPT TO:<c@elsewhere.example>\r\nRCPT TO:<b@example.lan>\r\nDATA\r\n").await;
    for want in [250, 250, 250, 250, 354] {
        assert_eq!(c.read_reply().await.code, want);
    }
    c.send_raw(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        .await;
    let done = c.read_reply().await;
    assert_eq!(done.code, 250, "{done:?}");
    assert_eq!(c.read_reply().await.code, 221);
    let ids = server.queued();
    assert_eq!(ids.len(), 1);
    let msg = server.spool().load(&crate::support::qid(&ids[0])).unwrap();
    let rcpts: Vec<&str> = msg
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(
        rcpts,
        ["b@example.lan", "c@elsewhere.example"],
        "duplicates are dropped"
    );
    assert!(done.text().contains(&ids[0]), "250 names the queue ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_content_is_byte_exact_with_a_received_header() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    let original = b"From: a@x.test\r\nSubject: exact\r\n\r\n.leading dot\r\n..two dots\r\n\r\n\ttab line \r\nlast\r\n";
    let mut wire = Vec::new();
    for line in original.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    let r = c.send_mail("a@x.test", &["b@example.lan"], &wire).await;
    assert_eq!(r.code, 250, "{r:?}");
    let ids = server.queued();
    let body = server
        .spool()
        .read_body(&crate::support::qid(&ids[0]))
        .unwrap();
    assert_eq!(strip_received(&body), original);
    let header = String::from_utf8_lossy(&body[..body.len() - original.len()]).into_owned();
    assert!(
        header.contains("from client.test ([127.0.0.2])"),
        "{header}"
    );
    assert!(
        header.contains("by relay.test (Portcullis) with ESMTP id"),
        "{header}"
    );
    assert!(
        header.contains(&ids[0]) && header.contains("for <b@example.lan>"),
        "{header}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bdat_chunks_are_joined_and_checked() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    // BDAT before MAIL: the chunk is read and refused, the session goes on.
    c.send_raw(b"BDAT 5\r\nhello").await;
    assert_eq!(c.read_reply().await.code, 503);
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    let part1 = b"Subject: chunks\r\n\r\n.not stuffed\r\n";
    let part2 = b"end\r\n";
    c.send_raw(format!("BDAT {}\r\n", part1.len()).as_bytes())
        .await;
    c.send_raw(part1).await;
    assert_eq!(c.read_reply().await.code, 250);
    c.send_raw(format!("BDAT {} LAST\r\n", part2.len()).as_bytes())
        .await;
    c.send_raw(part2).await;
    assert_eq!(c.read_reply().await.code, 250);
    let ids = server.queued();
    assert_eq!(ids.len(), 1);
    let body = server
        .spool()
        .read_body(&crate::support::qid(&ids[0]))
        .unwrap();
    assert_eq!(strip_received(&body), [&part1[..], &part2[..]].concat());
    // A bare LF inside BDAT from a stranger is refused as well.
    let mut c = ehlo(&server, OUTSIDER).await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    let bad = b"bare\nLF\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", bad.len()).as_bytes())
        .await;
    c.send_raw(bad).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.6.11"));
    c.expect("NOOP", 250).await;
    assert_eq!(server.queued().len(), 1);
}

/// `curl -T file.eml` sends the file's LF line ends as they are. From the
/// trusted LAN that is normalised to CRLF and spooled; from a stranger it
/// is still refused (the smuggling defence); a network can ask for the
/// refusal for its own clients too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_lf_line_ends_from_the_lan_is_normalised_and_refused_from_strangers() {
    let server = TestServer::start(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n\
         [[network]]\nrange = \"127.0.0.4/32\"\nauth = \"none\"\nbare_newline = \"reject\"\n\
         [relay]\ninbound_domains = [\"example.lan\"]\n",
    )
    .await;
    let eml = server.dir.path().join("lf.eml");
    std::fs::write(
        &eml,
        "From: app@client.test\nTo: b@example.lan\nSubject: from curl\n\nline one\nline two\n",
    )
    .unwrap();
    let curl = |source: &str| {
        let (ok, out, err) = crate::support::run_with_timeout(
            std::process::Command::new("curl")
                .args(["--verbose", "--interface", source])
                .arg(format!(
                    "smtp://127.0.0.1:{}/client.test",
                    server.addr().port()
                ))
                .args([
                    "--mail-from",
                    "app@client.test",
                    "--mail-rcpt",
                    "b@example.lan",
                    "-T",
                ])
                .arg(&eml),
            crate::support::WAIT,
        );
        (ok, out + &err)
    };
    let (ok, said) = tokio::task::block_in_place(|| curl(LAN));
    assert!(ok, "the LAN's LF-only file is taken: {said}");
    let ids = server.queued();
    assert_eq!(ids.len(), 1);
    let body = server
        .spool()
        .read_body(&crate::support::qid(&ids[0]))
        .unwrap();
    let body = strip_received(&body);
    assert!(
        body.starts_with(b"From: app@client.test\r\nTo: b@example.lan\r\nSubject: from curl\r\n\r\nline one\r\nline two\r\n"),
        "normalised to CRLF: {:?}",
        String::from_utf8_lossy(body)
    );
    assert!(
        !body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
        "no bare LF is kept"
    );
    for source in [OUTSIDER, "127.0.0.4"] {
        let (ok, said) = tokio::task::block_in_place(|| curl(source));
        assert!(!ok, "{source}: refused: {said}");
        assert!(said.contains("554"), "{source}: {said}");
    }
    assert_eq!(server.queued().len(), 1, "nothing more was spooled");
}

const SMUGGLING_ENDINGS: [&[u8]; 6] = [
    b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
];

fn smuggling_body(ending: &[u8]) -> Vec<u8> {
    let mut b = b"Subject: innocent\r\n\r\nhello".to_vec();
    b.extend_from_slice(ending);
    b.extend_from_slice(b"MAIL FROM:<admin@example.lan>\r\nRCPT TO:<victim@elsewhere.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_is_refused_by_default() {
    let server = TestServer::start(&config("")).await;
    for ending in SMUGGLING_ENDINGS {
        let mut c = ehlo(&server, OUTSIDER).await;
        c.expect("MAIL FROM:<a@x.test>", 250).await;
        c.expect("RCPT TO:<b@example.lan>", 250).await;
        c.expect("DATA", 354).await;
        c.send_raw(&smuggling_body(ending)).await;
        c.send_raw(b".\r\n").await;
        let r = c.read_reply().await;
        assert_eq!(r.code, 554, "{ending:?}: {r:?}");
        assert!(r.text().starts_with("5.6.11"), "{r:?}");
        assert!(
            c.closed().await,
            "{ending:?}: connection closed after a bare newline"
        );
    }
    assert!(server.queued().is_empty(), "nothing is spooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_with_normalisation_keeps_one_message() {
    let server = TestServer::start(&config("bare_newline = \"normalize\"")).await;
    for ending in SMUGGLING_ENDINGS {
        let mut c = ehlo(&server, OUTSIDER).await;
        c.expect("MAIL FROM:<a@x.test>", 250).await;
        c.expect("RCPT TO:<b@example.lan>", 250).await;
        c.expect("DATA", 354).await;
        c.send_raw(&smuggling_body(ending)).await;
        c.send_raw(b".\r\n").await;
        let r = c.read_reply().await;
        assert_eq!(
            r.code, 250,
            "{ending:?}: the whole text is one message: {r:?}"
        );
        c.expect("QUIT", 221).await;
    }
    let ids = server.queued();
    assert_eq!(
        ids.len(),
        SMUGGLING_ENDINGS.len(),
        "one message per session, none smuggled"
    );
    for id in ids {
        let m = server.spool().load(&crate::support::qid(&id)).unwrap();
        assert_eq!(m.envelope.sender, "a@x.test");
        let body = server.spool().read_body(&crate::support::qid(&id)).unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("MAIL FROM:<admin@example.lan>"),
            "smuggled lines stay message text"
        );
        assert!(
            !text.replace("\r\n", "").contains('\n') && !text.replace("\r\n", "").contains('\r'),
            "no bare CR/LF is passed on"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_byte_command_line_is_refused_and_the_session_survives() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    let mut line = vec![b'A'; 1_000_000];
    line.extend_from_slice(b"\r\n");
    c.send_raw(&line).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 500, "{r:?}");
    assert!(r.text().starts_with("5.5.2"));
    c.expect("NOOP", 250).await;
    // A command just over 512 octets is refused too.
    let long = format!("MAIL FROM:<{}@x.test>", "a".repeat(520));
    c.expect(&long, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_byte_text_line_is_refused() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 1_000_000));
    body.extend_from_slice(b"\r\n.\r\n");
    c.send_raw(&body).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.6.0"));
    c.expect("NOOP", 250).await;
    assert!(server.queued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_recipients() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    let (mut ok, mut too_many) = (0, 0);
    for batch in 0..100 {
        let mut cmds = String::new();
        for i in 0..100 {
            cmds.push_str(&format!(
                "RCPT TO:<user{}@example.lan>\r\n",
                batch * 100 + i
            ));
        }
        c.send_raw(cmds.as_bytes()).await;
        for _ in 0..100 {
            let r = c.read_reply().await;
            match r.code {
                250 => ok += 1,
                452 => {
                    assert!(r.text().starts_with("4.5.3"), "{r:?}");
                    too_many += 1;
                }
                other => panic!("unexpected {other}: {r:?}"),
            }
        }
    }
    assert_eq!((ok, too_many), (100, 9_900));
    // The same address over and over counts too: no unbounded policy work.
    let mut c2 = ehlo(&server, LAN).await;
    c2.expect("MAIL FROM:<a@x.test>", 250).await;
    let same = "RCPT TO:<same@example.lan>\r\n".repeat(1000);
    c2.send_raw(same.as_bytes()).await;
    let mut same_ok = 0;
    for _ in 0..1000 {
        if c2.read_reply().await.code == 250 {
            same_ok += 1;
        }
    }
    assert_eq!(same_ok, 100, "repeats count toward max_recipients");
    c.expect("DATA", 354).await;
    c.send_raw(b"Subject: many\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.read_reply().await.code, 250);
    let ids = server.queued();
    assert_eq!(
        server
            .spool()
            .load(&crate::support::qid(&ids[0]))
            .unwrap()
            .envelope
            .recipients
            .len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_a_second_client_is_cut_off() {
    let server = TestServer::start(&config(
        "command_timeout = \"2s\"\ndata_timeout = \"2s\"\ndata_block_timeout = \"2s\"",
    ))
    .await;
    // During a command: one byte a second, never a whole line within 2 s.
    let mut c = SmtpClient::connect(server.addr(), LAN).await;
    trickle(&mut c, b"EHLO slow.client.test\r\n", 5).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.4.2"), "{r:?}");
    assert!(c.closed().await);
    // During DATA.
    let mut c = ehlo(&server, LAN).await;
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    trickle(&mut c, b"Subject: slow\r\n\r\nbody\r\n", 5).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.4.2"), "{r:?}");
    assert!(c.closed().await);
    assert!(server.queued().is_empty());
}

/// Sends `bytes` one a second, at most `max` of them; stops early if the server hangs up.
async fn trickle(c: &mut SmtpClient, bytes: &[u8], max: usize) {
    for b in bytes.iter().take(max) {
        if !c.try_send(&[*b]).await {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_end_the_session() {
    let server = TestServer::start(&config("")).await;
    for req in [
        "GET / HTTP/1.1",
        "POST /login HTTP/1.1",
        "CONNECT mail.example:25 HTTP/1.0",
    ] {
        let mut c = SmtpClient::connect(server.addr(), OUTSIDER).await;
        let r = c.cmd(req).await;
        assert_eq!(r.code, 554, "{req}: {r:?}");
        assert!(c.closed().await, "{req}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_pipelined_before_starttls_is_discarded() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    c.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@x.test>\r\n")
        .await;
    assert_eq!(c.read_reply().await.code, 220);
    let io_cfg = server.ca.client_config();
    c.upgrade_after_220(io_cfg).await;
    // The first reply after the handshake answers our EHLO, not the injected MAIL.
    let r = c.cmd("EHLO client.test").await;
    assert_eq!(r.code, 250);
    assert!(r.lines[0].contains("greets"), "{r:?}");
    assert!(
        !r.lines.iter().any(|l| l == "STARTTLS"),
        "STARTTLS is not offered twice"
    );
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("STARTTLS", 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_forgotten_after_starttls() {
    let server = TestServer::start(&config("")).await;
    let mut c = ehlo(&server, LAN).await;
    c.starttls(server.ca.client_config()).await;
    c.expect("MAIL FROM:<a@x.test>", 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limits() {
    let server = TestServer::start(&config("max_message_size = 1000")).await;
    let mut c = ehlo(&server, LAN).await;
    let r = c.expect("MAIL FROM:<a@x.test> SIZE=5000", 552).await;
    assert!(r.text().starts_with("5.3.4"));
    c.expect("MAIL FROM:<a@x.test> SIZE=500", 250).await;
    c.expect("RCPT TO:<b@example.lan>", 250).await;
    c.expect("DATA", 354).await;
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..40 {
        body.extend_from_slice(&[b'y'; 78]);
        body.extend_from_slice(b"\r\n");
    }
    c.send_raw(&body).await;
    c.send_raw(b".\r\n").await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 552, "{r:?}");
    assert!(r.text().starts_with("5.3.4"));
    c.expect("NOOP", 250).await;
    assert!(server.queued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_closes_the_session() {
    let server = TestServer::start(&config("max_errors = 3")).await;
    let mut c = ehlo(&server, LAN).await;
    c.expect("BOGUS1", 500).await;
    c.expect("BOGUS2", 500).await;
    c.expect("BOGUS3", 500).await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps() {
    let server =
        TestServer::start(&config("max_connections_per_ip = 2\nmax_connections = 3")).await;
    let _a = SmtpClient::connect(server.addr(), "127.0.0.5").await;
    let _b = SmtpClient::connect(server.addr(), "127.0.0.5").await;
    let mut third = SmtpClient::connect_raw(server.addr(), "127.0.0.5").await;
    let r = third.read_reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().contains("4.7.0"));
    let _c = SmtpClient::connect(server.addr(), "127.0.0.6").await;
    let mut fourth = SmtpClient::connect_raw(server.addr(), "127.0.0.7").await;
    assert_eq!(fourth.read_reply().await.code, 421);
    drop(_a);
    // The slot comes back once the first session has ended.
    let mut ok = false;
    for _ in 0..50 {
        let mut again = SmtpClient::connect_raw(server.addr(), "127.0.0.5").await;
        if again.read_reply().await.code == 220 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "a freed slot is reusable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_mechanisms() {
    let server = TestServer::start(&config("")).await;
    crate::support::write_users(&server.config.users_file(), &[("bob", "builder")]);
    let mut c = ehlo(&server, OUTSIDER).await;
    let r = c.auth_plain("bob", "wrong").await;
    assert_eq!(r.code, 535, "{r:?}");
    assert!(r.text().starts_with("5.7.8"));
    assert_eq!(c.auth_plain("nobody", "builder").await.code, 535);
    // LOGIN, with a cancel first.
    c.expect("AUTH LOGIN", 334).await;
    c.expect("*", 501).await;
    c.expect("AUTH LOGIN", 334).await;
    c.expect("Ym9i", 334).await; // bob
    c.expect("YnVpbGRlcg==", 235).await; // builder
    c.expect("AUTH PLAIN AGJvYgBidWlsZGVy", 503).await;
    c.expect("MAIL FROM:<bob@x.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtps_listener_speaks_tls_first_and_requires_auth() {
    let server = TestServer::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtps\"\n[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
    )
    .await;
    crate::support::write_users(&server.config.users_file(), &[("fay", "pw")]);
    let addr = server.addr_of(portcullis::config::ListenerKind::Smtps);
    let mut c = SmtpClient::connect_tls(addr, LAN, server.ca.client_config()).await;
    let ehlo = c.expect("EHLO tls.test", 250).await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    // Even a trusted-network client must authenticate on a submission-type listener.
    let r = c.expect("MAIL FROM:<fay@x.test>", 530).await;
    assert!(r.text().starts_with("5.7.0"));
    assert_eq!(c.auth_plain("fay", "pw").await.code, 235);
    let r = c
        .send_mail(
            "fay@x.test",
            &["far@elsewhere.example"],
            b"Subject: tls\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let ids = server.queued();
    let body = server
        .spool()
        .read_body(&crate::support::qid(&ids[0]))
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("with ESMTPSA"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_went_round_too_often_is_refused_as_a_loop() {
    let server = TestServer::start(&config("max_hops = 5")).await;
    let mut c = ehlo(&server, LAN).await;
    let looped = received_lines(5);
    let r = c
        .send_mail(
            "a@x.test",
            &["b@example.lan"],
            format!("{looped}Subject: loop\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text().starts_with("5.4.6"), "{r:?}");
    // Four earlier hops plus ours is still within the limit.
    let fine = received_lines(4);
    let r = c
        .send_mail(
            "a@x.test",
            &["b@example.lan"],
            format!("{fine}Subject: ok\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(server.queued().len(), 1);
}

/// `n` Received: header lines, as earlier relays would have added them.
fn received_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "Received: from hop{i}.test by relay.test; Mon, 23 Nov 2026 10:00:0{i} +0000\r\n"
            )
        })
        .collect()
}

/// An old printer that fails on modern TLS: STARTTLS can be hidden from its
/// range (or on a listener). It is not advertised there, the command is
/// refused, and the printer sends in clear; everyone else still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_can_be_hidden_from_old_printers() {
    let server = TestServer::start(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\noffer_starttls = false\n\
         [[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[[network]]\nrange = \"127.0.0.40/32\"\nauth = \"none\"\noffer_starttls = false\n",
    )
    .await;
    let mut printer = SmtpClient::connect(server.addr(), "127.0.0.40").await;
    let ehlo = printer.expect("EHLO printer.office.lan", 250).await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    let r = printer.expect("STARTTLS", 502).await;
    assert!(r.text().starts_with("5.5.1"), "{r:?}");
    let r = printer
        .send_mail(
            "scanner@office.example",
            &["boss@partner.example"],
            b"Subject: scan\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let mut pc = SmtpClient::connect(server.addr(), LAN).await;
    let ehlo = pc.expect("EHLO pc.office.lan", 250).await;
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    let submission = server.addr_of(portcullis::config::ListenerKind::Submission);
    let mut c = SmtpClient::connect(submission, LAN).await;
    let ehlo = c.expect("EHLO pc.office.lan", 250).await;
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
}

/// Remembered password checks never outlive the password: after a change
/// (and after a deletion) the old password is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_deleted_password_is_refused_at_once_despite_the_cache() {
    let server = TestServer::start(&config("")).await;
    let users = server.config.users_file();
    crate::support::write_users(&users, &[("app", "old-pass")]);
    for _ in 0..3 {
        let mut c = ehlo(&server, OUTSIDER).await;
        assert_eq!(c.auth_plain("app", "old-pass").await.code, 235);
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    crate::support::write_users(&users, &[("app", "new-pass")]);
    let mut c = ehlo(&server, OUTSIDER).await;
    assert_eq!(c.auth_plain("app", "old-pass").await.code, 535);
    let mut c = ehlo(&server, OUTSIDER).await;
    assert_eq!(c.auth_plain("app", "new-pass").await.code, 235);
    std::thread::sleep(std::time::Duration::from_millis(20));
    crate::support::write_users(&users, &[("other", "x")]);
    let mut c = ehlo(&server, OUTSIDER).await;
    assert_eq!(c.auth_plain("app", "new-pass").await.code, 535, "deleted");
}

/// A client that connects for every message resumes its TLS session (a
/// session ticket) instead of a full handshake each time — even after many
/// other clients came in between (more than a default session cache holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_tls_client_resumes_its_session() {
    let server =
        TestServer::start("[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n").await;
    let visit = |config: std::sync::Arc<rustls::ClientConfig>| {
        let addr = server.addr();
        async move {
            let mut c = SmtpClient::greeted(addr, "127.0.0.2", "app.office.test").await;
            c.starttls(config).await;
            // The reply carries the ticket the client keeps for next time.
            c.expect("EHLO app.office.test", 250).await;
            c.expect("QUIT", 221).await;
            c.resumed.unwrap()
        }
    };
    let app = server.ca.client_config();
    assert!(
        !visit(std::sync::Arc::clone(&app)).await,
        "the first handshake is full"
    );
    assert!(visit(std::sync::Arc::clone(&app)).await, "then resumed");
    // 300 other clients, each with its own session.
    for _ in 0..300 {
        assert!(!visit(server.ca.client_config()).await);
    }
    assert!(visit(app).await, "still resumed after 300 others");
}
