//! `[archive]`: a copy of every accepted message in scope — a synced .eml
//! in a directory before the 250 (even when the server is killed right
//! after), or an envelope-only copy to an address — and none outside it.

use crate::support::client::SmtpClient;
use crate::support::server::{ProcessServer, TestServer, complete_config};
use crate::support::tls::TestCa;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

async fn send(addr: std::net::SocketAddr, source: &str, to: &[&str], subject: &str) -> String {
    let mut c = SmtpClient::greeted(addr, source, "pc.office.test").await;
    let r = c
        .send_mail(
            "someone@office.test",
            to,
            format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n").as_bytes(),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    r.text().rsplit(' ').next().unwrap().to_string()
}

fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(day.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "eml") {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_directory_gets_every_message_in_scope_and_none_outside() {
    let archive = tempfile::tempdir().unwrap();
    let server = TestServer::start(&format!(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[archive]\ndir = \"{}\"\nretention_days = 30\nnetworks = [\"127.0.0.2/32\"]\n",
        archive.path().display()
    ))
    .await;
    let id = send(
        server.addr(),
        "127.0.0.2",
        &["far@anywhere.example"],
        "kept",
    )
    .await;
    send(
        server.addr(),
        "127.0.0.3",
        &["far@anywhere.example"],
        "not in scope",
    )
    .await;
    let files = eml_files(archive.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(format!("{id}.eml")));
    let copy = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        copy,
        server.spool().read_body(&crate::support::qid(&id)).unwrap(),
        "the copy is the message as queued, Received: header and all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_address_is_an_envelope_recipient_only_and_never_twice() {
    let server = TestServer::start(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[archive]\nto = \"vault@archive.test\"\n",
    )
    .await;
    let id = send(server.addr(), "127.0.0.2", &["a@far.example"], "one").await;
    let m = server.spool().load(&crate::support::qid(&id)).unwrap();
    let rcpts: Vec<&str> = m
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(rcpts, vec!["a@far.example", "vault@archive.test"]);
    let body =
        String::from_utf8(server.spool().read_body(&crate::support::qid(&id)).unwrap()).unwrap();
    assert!(
        !body.contains("vault@archive.test"),
        "no header names the archive: {body}"
    );
    let id = send(server.addr(), "127.0.0.2", &["Vault@archive.test"], "two").await;
    let m = server.spool().load(&crate::support::qid(&id)).unwrap();
    assert_eq!(
        m.envelope.recipients.len(),
        1,
        "already addressed to it: no second copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_just_before_kill_9_are_archived() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let archive = dir.path().join("archive");
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        complete_config(
            &format!(
                "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n[delivery]\nretry_schedule = [\"1h\"]\n[archive]\ndir = \"{}\"\n",
                archive.display()
            ),
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let mut server = ProcessServer::spawn(&path);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            send(
                server.addr,
                "127.0.0.2",
                &["far@anywhere.example"],
                &format!("m{n}"),
            )
            .await,
        );
    }
    server.kill9();
    let files = eml_files(&archive);
    assert_eq!(files.len(), 5, "{files:?}");
    for (n, id) in ids.iter().enumerate() {
        let f = files
            .iter()
            .find(|f| f.ends_with(format!("{id}.eml")))
            .unwrap();
        let text = String::from_utf8(std::fs::read(f).unwrap()).unwrap();
        assert!(
            text.ends_with(&format!("body of m{n}\r\n")),
            "whole: {text}"
        );
    }
}

#[test]
fn check_config_names_archive_mistakes() {
    let e = portcullis::config::Config::parse("[archive]\nto = \"not an address\"\n", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("archive.to"), "{e}");
    let data = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    let other_fs = shm.exists()
        && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(data.path()).unwrap().dev();
    if !other_fs {
        eprintln!("SKIPPED: no second file system to compare with");
        return;
    }
    let c = portcullis::config::Config::parse(
        &format!(
            "[server]\ndata_dir = \"{}\"\n[archive]\ndir = \"/dev/shm/portcullis-archive\"\n",
            data.path().display()
        ),
        "t",
    )
    .unwrap();
    assert!(
        c.findings()
            .iter()
            .any(|f| f.key == "archive.dir" && f.reason.contains("another file system")),
        "{:?}",
        c.findings()
    );
}
