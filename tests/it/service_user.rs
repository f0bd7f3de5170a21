//! The packaged service runs as its own user while the admin runs commands
//! as root: files the admin's commands write must stay readable by the
//! service, and a file the service cannot read or write must stop
//! `check-config` and `serve` (run as that user) with the file and the user
//! named. The service user here is `nobody`.

use crate::support::server::binary;
use crate::support::tls::TestCa;
use crate::support::{WAIT, run_with_timeout};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NOBODY: u32 = 65534;

/// A config in a directory every user may walk, with its spool in `data`
/// owned by `nobody` (as the package makes /var/lib/portcullis).
struct Install {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Install {
    fn new(extra: &str) -> Install {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::chown(&data, Some(NOBODY), Some(NOBODY)).unwrap();
        let ca = TestCa::generate(dir.path());
        for f in [&ca.cert_path, &ca.key_path] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let config = dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndata_dir = \"{}\"\nhostname = \"relay.test\"\n[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n\
                 [tls]\ncert = \"{}\"\nkey = \"{}\"\n[auth]\nusers_file = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:1\"]\n{extra}",
                data.display(),
                ca.cert_path.display(),
                ca.key_path.display(),
                data.join("users").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        Install { dir, config }
    }

    fn users(&self) -> PathBuf {
        self.dir.path().join("data/users")
    }

    /// `portcullis user add NAME --password-stdin` as root.
    fn user_add(&self, name: &str) {
        let mut child = Command::new(binary())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"correct horse\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `portcullis ARGS --config FILE` as `nobody`.
    fn as_service_user(&self, args: &[&str]) -> (bool, String, String) {
        run_with_timeout(
            Command::new(binary())
                .args(args)
                .arg("--config")
                .arg(&self.config)
                .uid(NOBODY)
                .gid(NOBODY)
                .env("RUST_LOG", "warn"),
            WAIT,
        )
    }
}

fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap();
    (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
}

#[test]
fn user_add_as_root_leaves_the_users_file_readable_by_the_service() {
    let install = Install::new("");
    // A new users file goes to the data directory's owner, private.
    install.user_add("alice");
    assert_eq!(owner_and_mode(&install.users()), (NOBODY, NOBODY, 0o600));
    let (ok, out, err) = install.as_service_user(&["check-config"]);
    assert!(ok, "the service user reads it: {out}{err}");

    // An existing file keeps its owner, group and mode through a change.
    std::os::unix::fs::chown(install.users(), Some(NOBODY), Some(0)).unwrap();
    std::fs::set_permissions(install.users(), std::fs::Permissions::from_mode(0o640)).unwrap();
    install.user_add("bob");
    assert_eq!(owner_and_mode(&install.users()), (NOBODY, 0, 0o640));
    let text = std::fs::read_to_string(install.users()).unwrap();
    assert!(
        text.contains("\nalice:$argon2") && text.contains("\nbob:$argon2"),
        "{text}"
    );
}

#[test]
fn a_users_file_the_service_cannot_read_stops_check_config_and_serve() {
    let install = Install::new("");
    std::fs::write(install.users(), "# root's\n").unwrap();
    std::fs::set_permissions(install.users(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = install.users().display().to_string();
    for command in [&["check-config"][..], &["serve"][..]] {
        let (ok, out, err) = install.as_service_user(command);
        assert!(!ok, "{command:?} must fail: {out}{err}");
        let said = format!("{out}{err}");
        for part in [
            "auth.users_file",
            path.as_str(),
            "nobody",
            "Permission denied",
        ] {
            assert!(said.contains(part), "{command:?} names {part}: {said}");
        }
    }
}

#[test]
fn a_transcript_directory_the_service_cannot_write_stops_check_config() {
    let install = Install::new("");
    let transcripts = install.dir.path().join("transcripts");
    std::fs::create_dir(&transcripts).unwrap();
    std::fs::set_permissions(&transcripts, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = std::fs::read_to_string(&install.config).unwrap();
    text.push_str(&format!(
        "[log]\ntranscript = \"{}\"\n",
        transcripts.display()
    ));
    std::fs::write(&install.config, text).unwrap();
    let (ok, out, err) = install.as_service_user(&["check-config"]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("log.transcript") && err.contains("nobody"),
        "{out}{err}"
    );
    // Once the service's user owns it, the same config is valid.
    std::os::unix::fs::chown(&transcripts, Some(NOBODY), Some(NOBODY)).unwrap();
    let (ok, out, err) = install.as_service_user(&["check-config"]);
    assert!(ok, "{out}{err}");
}

/// Whatever umask the server starts with, another local user reads nothing
/// of the queue: the data directory is 0700 and every file in it 0600; an
/// existing directory open to others is closed to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_mail_is_not_readable_by_other_local_users() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        crate::support::server::complete_config(
            "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
            dir.path(),
            &ca,
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    // Started under a permissive umask, as a shell may leave it.
    let mut command = Command::new("sh");
    command.args(["-c", "umask 000; exec \"$0\" serve --config \"$1\""]);
    let server = crate::support::server::ProcessServer::spawn_shell(command, binary(), &config);
    let mut c =
        crate::support::client::SmtpClient::greeted(server.addr, "127.0.0.2", "pc.lan").await;
    let r = c
        .send_mail(
            "a@office.test",
            &["b@far.example"],
            b"Subject: private\r\n\r\nsalary list\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    assert_eq!(
        owner_and_mode(&data).2 & 0o077,
        0,
        "data_dir is the owner's alone"
    );
    let mut open_to_others = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let mode = owner_and_mode(&p).2;
            if p.is_dir() {
                stack.push(p.clone());
            }
            if mode & 0o077 != 0 && e.file_type().map(|t| !t.is_socket()).unwrap_or(true) {
                open_to_others.push(format!("{} {:o}", p.display(), mode));
            }
        }
    }
    assert!(open_to_others.is_empty(), "{open_to_others:#?}");
    drop(server);

    // A data directory someone made world-readable is closed at the next start.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _again = crate::support::server::ProcessServer::spawn(&config);
    assert_eq!(owner_and_mode(&data).2 & 0o007, 0);
}

/// Under systemd (Type=notify) the server says READY=1 once it listens, and
/// STOPPING=1 when told to stop.
#[test]
fn the_server_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate(dir.path());
    let config = dir.path().join("portcullis.toml");
    std::fs::write(
        &config,
        crate::support::server::complete_config("", dir.path(), &ca),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a notification");
    let said = String::from_utf8_lossy(&buf[..n]).to_string();
    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let n = socket.recv(&mut buf).expect("a second notification");
    let then = String::from_utf8_lossy(&buf[..n]).to_string();
    let _ = child.wait();
    assert!(said.contains("READY=1"), "{said}");
    assert!(then.contains("STOPPING=1"), "{then}");
}
