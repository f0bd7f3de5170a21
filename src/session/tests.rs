//! Sessions driven over in-memory pipes, for rules that real loopback sockets
//! cannot show (a client address that is not loopback).

use super::{Context, Session};
use crate::config::{Config, ListenerKind};
use crate::spool::Spool;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio_util::sync::CancellationToken;

struct Pipe {
    reader: BufReader<tokio::io::ReadHalf<DuplexStream>>,
    writer: tokio::io::WriteHalf<DuplexStream>,
    _dir: tempfile::TempDir,
}

impl Pipe {
    async fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed");
            text.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return (line[..3].parse().unwrap(), text);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
}

async fn session(config_text: &str, peer: &str) -> Pipe {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse(
        &format!("[dns]\nnameservers = [\"127.0.0.1:1\"]\n{config_text}"),
        "t",
    )
    .unwrap();
    let ctx = Arc::new(test_context(config, dir.path()));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let stream = crate::smtp::stream::SmtpStream::new(Box::new(server));
    let s = Session::new(
        ctx,
        ListenerKind::Smtp,
        peer.parse().unwrap(),
        stream,
        CancellationToken::new(),
    );
    tokio::spawn(s.run());
    let (r, w) = tokio::io::split(client);
    let mut pipe = Pipe {
        reader: BufReader::new(r),
        writer: w,
        _dir: dir,
    };
    assert_eq!(pipe.reply().await.0, 220);
    pipe
}

/// A context of its own for one session test: memory-only guard, no subscribers.
fn test_context(config: Config, data: &std::path::Path) -> Context {
    let guard = Arc::new(crate::guard::Guard::new(config.guard.clone(), None));
    Context::new(
        config,
        None,
        Spool::open(data).unwrap(),
        None,
        crate::events::Events::new(),
        guard,
    )
}

#[tokio::test]
async fn auth_needs_tls_from_a_remote_address() {
    let mut p = session("", "192.0.2.10:40000").await;
    let (code, ehlo) = p.cmd("EHLO remote.test").await;
    assert_eq!(code, 250);
    assert!(
        !ehlo.contains("AUTH"),
        "AUTH is not offered in clear: {ehlo}"
    );
    let (code, text) = p.cmd("AUTH PLAIN AGEAYg==").await;
    assert_eq!(code, 538, "{text}");
    assert!(text.contains("5.7.11"));
}

#[tokio::test]
async fn allow_plaintext_offers_auth_in_clear() {
    let mut p = session("[auth]\nallow_plaintext = true\n", "192.0.2.10:40000").await;
    let (_, ehlo) = p.cmd("EHLO remote.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    // No users file: credentials are simply wrong.
    assert_eq!(p.cmd("AUTH PLAIN AGEAYg==").await.0, 535);
}

#[tokio::test]
async fn ipv4_mapped_peer_is_judged_as_ipv4() {
    let mut p = session(
        "[[network]]\nrange = \"192.0.2.0/24\"\nauth = \"none\"\n",
        "[::ffff:192.0.2.10]:40000",
    )
    .await;
    p.cmd("EHLO mapped.test").await;
    assert_eq!(p.cmd("MAIL FROM:<a@x.test>").await.0, 250);
    assert_eq!(p.cmd("RCPT TO:<b@elsewhere.example>").await.0, 250);
}

#[tokio::test]
async fn starttls_without_certificate_is_a_temporary_failure() {
    let mut p = session("", "192.0.2.10:40000").await;
    p.cmd("EHLO remote.test").await;
    assert_eq!(p.cmd("STARTTLS").await.0, 454);
}

#[tokio::test]
async fn an_idle_session_task_is_small() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[dns]\nnameservers = [\"127.0.0.1:1\"]\n", "t").unwrap();
    let ctx = Arc::new(test_context(config, dir.path()));
    let (_client, server) = tokio::io::duplex(1024);
    let s = Session::new(
        ctx,
        ListenerKind::Smtp,
        "127.0.0.1:1".parse().unwrap(),
        crate::smtp::stream::SmtpStream::new(Box::new(server)),
        CancellationToken::new(),
    );
    let size = std::mem::size_of_val(&s.run());
    println!("session task future: {size} bytes");
    // Every idle connection holds one: the big verbs (MAIL, RCPT, DATA, BDAT,
    // AUTH, STARTTLS) are boxed so that their state exists only while they run.
    assert!(size < 6 * 1024, "{size} bytes");
}

/// `explain` and a real session reach the same verdict, with the same
/// reply code, for every recipient form an attacker or a typo may write:
/// quoting, source routes, IP literals, percent and bang forms, odd case,
/// trailing dots; from a trusted and from an untrusted client.
mod explain_agrees {
    use super::*;
    use proptest::prelude::*;

    const CONFIG: &str = "[server]\nhostname = \"relay.test\"\n[[network]]\nrange = \"192.0.2.0/24\"\nauth = \"none\"\n[relay]\ninbound_domains = [\"example.lan\"]\n";

    fn local_part() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "user",
            "User.Name",
            "\"a b\"",
            "\"x@y\"",
            "\"v%far.example\"",
            "u%far.example",
            "far.example!u",
            "u+tag",
            "postmaster",
            "Postmaster",
            "\"\"",
            "a.",
            ".a",
        ])
        .prop_map(str::to_string)
    }

    fn domain() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "example.lan",
            "EXAMPLE.LAN",
            "example.lan.",
            "elsewhere.example",
            "elsewhere.example.",
            "relay.test",
            "[192.0.2.1]",
            "[127.0.0.1]",
            "[IPv6:::1]",
            "[203.0.113.9]",
            "sub.example.lan",
            "bücher.example",
        ])
        .prop_map(str::to_string)
    }

    fn recipient() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["", "@relay.test:", "@relay.test,@[192.0.2.1]:"]),
            local_part(),
            domain(),
            prop::bool::ANY,
        )
            .prop_map(|(route, local, domain, bare)| {
                if bare {
                    format!("<{route}{local}>")
                } else {
                    format!("<{route}{local}@{domain}>")
                }
            })
    }

    async fn session_says(config: &str, peer: &str, to: &str, utf8: bool) -> u16 {
        let mut p = session(config, peer).await;
        p.cmd("EHLO client.test").await;
        let mail = if utf8 {
            "MAIL FROM:<a@x.test> SMTPUTF8"
        } else {
            "MAIL FROM:<a@x.test>"
        };
        assert_eq!(p.cmd(mail).await.0, 250);
        p.cmd(&format!("RCPT TO:{to}")).await.0
    }

    fn explain_says(to: &str, ip: &str, utf8: bool) -> u16 {
        let config = Config::parse(
            &format!("[dns]\nnameservers = [\"127.0.0.1:1\"]\n{CONFIG}"),
            "t",
        )
        .unwrap();
        let q = crate::diagnostics::explain::Question {
            ip: ip.parse().unwrap(),
            listener: None,
            helo: "client.test".into(),
            auth: None,
            tls: false,
            from: "a@x.test".into(),
            to: vec![to.to_string()],
            checks: Default::default(),
            recipient_checks: Vec::new(),
            smtputf8: utf8,
        };
        let answer = crate::diagnostics::explain::explain(&config, &q);
        answer
            .reply
            .get(..3)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn explain_and_the_session_agree(
            to in recipient(),
            trusted in prop::bool::ANY,
            utf8 in prop::bool::ANY,
        ) {
            let (peer, ip) = if trusted {
                ("192.0.2.10:40000", "192.0.2.10")
            } else {
                ("198.51.100.7:40000", "198.51.100.7")
            };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let session = runtime.block_on(session_says(CONFIG, peer, &to, utf8));
            let explained = explain_says(&to, ip, utf8);
            prop_assert_eq!(session, explained, "RCPT TO:{} from {}", to, ip);
        }
    }
}
