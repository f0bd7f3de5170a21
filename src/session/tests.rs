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
