//! What an admin reads: the log and the transcripts of a real server process.

use crate::support::WAIT;
use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, complete_config};
use crate::support::sink::{Behaviour, Sink};
use crate::support::tls::TestCa;
use std::time::{Duration, Instant};

/// Every transcript file in `dir` together, once they hold `needle` (or
/// after WAIT, for the assertion to say what was there).
fn transcripts_once_they_hold(dir: &std::path::Path, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let text: String = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        if text.contains(needle) || start.elapsed() > WAIT {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The log and the transcript name a session by the same number; a
/// deferral's next try is an RFC 3339 time, not Unix seconds; a smart host
/// refusing our credentials is a warning that says what to check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_the_transcript_agree_and_speak_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let isp = Sink::start(
        "127.0.0.74",
        0,
        Behaviour {
            require_auth: Some(("office".into(), "the real one".into())),
            ..Behaviour::accept_all()
        },
    )
    .await;
    let pass = dir.path().join("smarthost.pass");
    std::fs::write(&pass, "an expired one\n").unwrap();
    let transcripts = dir.path().join("transcripts");
    let toml = format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[log]\ntranscript = \"{}\"\n[delivery]\nmode = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"office\"\nsmarthost_password_file = \"{}\"\nretry_schedule = [\"1h\"]\n",
        transcripts.display(),
        isp.addr,
        pass.display()
    );
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, complete_config(&toml, dir.path(), &ca)).unwrap();
    let server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.0.2", "pc.office.lan").await;
    let r = c
        .send_mail(
            "a@office.test",
            &["b@partner.example"],
            b"Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    c.expect("QUIT", 221).await;
    assert!(
        server.wait_for_log("refused our credentials"),
        "{}",
        server.log.lock().unwrap()
    );

    let log = server.log.lock().unwrap().clone();
    let session = log
        .lines()
        .find(|l| l.contains("client=127.0.0.2") && l.contains("session{id="))
        .and_then(|l| l.split("session{id=").nth(1))
        .and_then(|rest| rest.split([' ', '}']).next())
        .unwrap_or_else(|| panic!("no session line: {log}"))
        .to_string();
    let transcript = transcripts_once_they_hold(&transcripts, "QUIT");
    assert!(
        transcript.contains(&format!(" session {session} C: EHLO pc.office.lan")),
        "the transcript names session {session}:\n{transcript}"
    );
    let deferred = log
        .lines()
        .find(|l| l.contains("refused our credentials"))
        .unwrap();
    assert!(deferred.contains(" WARN "), "{deferred}");
    let next = deferred
        .split("next=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(next).is_ok(),
        "next try as RFC 3339, got {next:?}: {deferred}"
    );
    assert!(!log.contains("https://docs.rs"), "{log}");
}

/// A refused command is logged as its verb from a fixed list, never its
/// words (a password sent after a refused AUTH, a terminal escape), and no
/// control byte reaches the log raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commands_leave_neither_secrets_nor_escapes_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        complete_config(
            "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let server = ProcessServer::spawn(&config);
    let mut c = SmtpClient::greeted(server.addr, "127.0.3.70", "x.test").await;
    c.send_raw(b"YWxpY2VwYXNzd29yZA==\r\n").await;
    assert!(c.read_reply().await.code >= 500);
    c.send_raw(b"\x1b[2J\x1b[Hwipe\r\n").await;
    assert!(c.read_reply().await.code >= 500);
    c.send_raw(b"HELO\rhidden\r\n").await;
    let _ = c.read_reply().await;
    c.expect("QUIT", 221).await;
    assert!(server.wait_for_log("command refused"));
    std::thread::sleep(Duration::from_millis(200));
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("YWxpY2Vw"), "{log}");
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(log.contains("command=\"(unknown)\""), "{log}");
}

/// A client that pipelines long junk lines cannot fill the disk through the
/// transcripts: past its daily budget its lines are dropped, the file says
/// so once, and other clients are still transcribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_fill_the_disk_with_transcripts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let transcripts = dir.path().join("transcripts");
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        complete_config(
            &format!(
                "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[log]\ntranscript = \"{}\"\ntranscript_max_bytes_per_client = 16384\ntranscript_min_free_disk = 0\n",
                transcripts.display()
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let server = ProcessServer::spawn(&config);
    let junk = format!("NOOP {}\r\n", "x".repeat(500));
    for _ in 0..5 {
        let mut c = SmtpClient::greeted(server.addr, "127.0.3.90", "flood.test").await;
        c.send_raw(junk.repeat(90).as_bytes()).await;
        for _ in 0..90 {
            let _ = c.try_read_reply().await;
        }
    }
    let mut other = SmtpClient::greeted(server.addr, "127.0.0.2", "pc.office.lan").await;
    other.expect("QUIT", 221).await;
    let text = transcripts_once_they_hold(&transcripts, "C: EHLO pc.office.lan");
    assert!(
        text.contains("C: EHLO pc.office.lan"),
        "others are still transcribed"
    );
    let flood_bytes: usize = text
        .lines()
        .filter(|l| l.contains(" in smtp 127.0.3.90:"))
        .map(|l| l.len() + 1)
        .sum();
    assert!(
        flood_bytes <= 16384,
        "{flood_bytes} bytes for the flooding client"
    );
    assert_eq!(
        text.matches("127.0.3.90 spent its transcript budget")
            .count(),
        1,
        "said once"
    );
}
