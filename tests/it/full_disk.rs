//! A full disk: the server answers 452 4.3.1, keeps every message it already
//! acknowledged intact, leaves no partial file, and recovers when space returns.
//! Needs root to mount a small tmpfs (CI runs as root).

use crate::support::client::SmtpClient;
use crate::support::server::TestServer;
use crate::support::strip_received;

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_with_452_and_loses_nothing() {
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
    let _guard = Tmpfs(mnt.clone());

    let data_dir = mnt.join("data");
    let server = TestServer::start_at(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
        Some(&data_dir),
    )
    .await;
    // Space taken by something else, given back later.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 160 * 1024]).unwrap();
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "full.test").await;
    let mut accepted = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let body = format!(
            "Subject: fill {i}\r\n\r\n{}",
            format!("{:076}\r\n", i).repeat(1000)
        );
        let r = c
            .send_mail("a@x.test", &["b@elsewhere.example"], body.as_bytes())
            .await;
        match r.code {
            250 => accepted.push((r.text().rsplit(' ').next().unwrap().to_string(), body)),
            _ => {
                refused = Some(r);
                break;
            }
        }
    }
    let refused = refused.expect("the disk fills up within 40 messages of 78 KB");
    assert_eq!(refused.code, 452, "{refused:?}");
    assert!(refused.text().starts_with("4.3.1"), "{refused:?}");
    assert!(
        !accepted.is_empty(),
        "some messages fit before the disk filled"
    );
    // Every acknowledged message is intact; nothing partial is left behind.
    let spool = server.spool();
    assert_eq!(spool.ids().unwrap().len(), accepted.len());
    for (id, body) in &accepted {
        assert_eq!(
            strip_received(&spool.read_body(&crate::support::qid(id)).unwrap()),
            body.as_bytes(),
            "{id}"
        );
    }
    assert_eq!(
        std::fs::read_dir(data_dir.join("tmp")).unwrap().count(),
        0,
        "no partial file left"
    );
    // Space comes back: the same session can send again.
    std::fs::remove_file(&filler).unwrap();
    let r = c
        .send_mail(
            "a@x.test",
            &["b@elsewhere.example"],
            b"Subject: after\r\n\r\nsmall\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221).await;
    server.stop().await;
    // After the stop every acknowledged message, the last one too, is a
    // whole file in the queue (the journal's failed appends left nothing torn).
    let spool = portcullis::spool::Spool::open_existing(&data_dir).unwrap();
    assert_eq!(spool.ids().unwrap().len(), accepted.len() + 1);
    for (id, body) in &accepted {
        assert_eq!(
            strip_received(&spool.read_body(&crate::support::qid(id)).unwrap()),
            body.as_bytes(),
            "{id}"
        );
    }
}
