//! The command line: queue management, users, and the embedded default.

use crate::support::client::SmtpClient;
use crate::support::server::{TestServer, binary};
use crate::support::{WAIT, run_with_timeout};
use std::process::{Command, Stdio};

fn config_file(server: &TestServer) -> std::path::PathBuf {
    let path = server.dir.path().join("cli.toml");
    std::fs::write(&path, toml::to_string(&server.config).unwrap()).unwrap();
    path
}

fn cli(args: &[&str], config: &std::path::Path) -> (bool, String, String) {
    run_with_timeout(
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(config),
        WAIT,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_while_the_server_runs() {
    let server =
        TestServer::start("[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n").await;
    let config = config_file(&server);
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "cli.test").await;
    for i in 0..2 {
        let r = c
            .send_mail(
                "from@x.test",
                &["to@elsewhere.example"],
                format!("Subject: q{i}\r\n\r\nx\r\n").as_bytes(),
            )
            .await;
        assert_eq!(r.code, 250);
    }
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["queue", "list", "--json"], &config));
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(list[0]["sender"], "from@x.test");
    assert_eq!(list[0]["recipients"][0], "to@elsewhere.example");

    let (ok, out, _) =
        tokio::task::block_in_place(|| cli(&["queue", "show", &ids[0], "--json"], &config));
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"]["recipients"][0]["status"], "queued");
    assert!(shown["headers"].as_str().unwrap().contains("Subject: q0"));

    // The server answers; a hold given during a delivery attempt is kept in
    // memory and written when the attempt ends, so ask the server, not the files.
    let held = |id: &str| {
        let (ok, out, err) =
            tokio::task::block_in_place(|| cli(&["queue", "show", id, "--json"], &config));
        assert!(ok, "{err}");
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        shown["state"]["held"].as_bool().unwrap()
    };
    let (ok, _, _) = tokio::task::block_in_place(|| cli(&["queue", "hold", &ids[0]], &config));
    assert!(ok);
    assert!(held(&ids[0]));
    let (ok, _, _) = tokio::task::block_in_place(|| cli(&["queue", "release", &ids[0]], &config));
    assert!(ok);
    assert!(!held(&ids[0]));
    let (ok, _, _) = tokio::task::block_in_place(|| cli(&["queue", "delete", &ids[1]], &config));
    assert!(ok);
    assert_eq!(server.queued(), vec![ids[0].clone()]);
    let (ok, _, err) =
        tokio::task::block_in_place(|| cli(&["queue", "show", "FFFFFFFFFFFFFFFFFF"], &config));
    assert!(!ok && err.contains("no message"), "{err}");
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&["queue", "list"], &config));
    assert!(
        ok && out.contains(&ids[0]) && out.contains("1 message(s)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_added_by_the_cli_can_authenticate_at_once() {
    let server = TestServer::start("").await;
    let config = config_file(&server);
    let add = |name: &str, pass: &str| {
        let mut child = Command::new(binary())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{pass}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    tokio::task::block_in_place(|| add("erin", "correct horse"));
    let users = std::fs::read_to_string(server.config.users_file()).unwrap();
    assert!(users.contains("erin:$argon2id$"), "{users}");

    let mut c = SmtpClient::greeted(server.addr(), "127.0.9.9", "roaming.test").await;
    c.expect("MAIL FROM:<erin@x.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 554).await;
    c.expect("RSET", 250).await;
    assert_eq!(c.auth_plain("erin", "correct horse").await.code, 235);
    c.expect("MAIL FROM:<erin@x.test>", 250).await;
    c.expect("RCPT TO:<far@elsewhere.example>", 250).await;

    let (ok, out, _) = tokio::task::block_in_place(|| cli(&["user", "list"], &config));
    assert!(ok && out.trim() == "erin", "{out}");
    let (ok, _, _) = tokio::task::block_in_place(|| cli(&["user", "del", "erin"], &config));
    assert!(ok);
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["user", "del", "erin"], &config));
    assert!(!ok && err.contains("no user"), "{err}");
    let mut c = SmtpClient::greeted(server.addr(), "127.0.9.9", "roaming.test").await;
    assert_eq!(c.auth_plain("erin", "correct horse").await.code, 535);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_config_is_the_safe_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:2525".parse().unwrap();
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(Ok(tcp)) = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr)).await
        {
            connected = Some(tcp);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    drop(connected.expect("the default listens on 127.0.0.1:2525"));
    let mut c = SmtpClient::connect(addr, "127.0.0.1").await;
    let ehlo = c.expect("EHLO default.test", 250).await;
    assert!(
        ehlo.lines.iter().any(|l| l == "STARTTLS"),
        "a certificate is generated so STARTTLS works"
    );
    c.expect("MAIL FROM:<a@x.test>", 250).await;
    c.expect("RCPT TO:<b@elsewhere.example>", 250).await; // loopback relays without AUTH
    c.expect("QUIT", 221).await;
    assert!(dir.path().join("data/tls/cert.pem").exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// `portcullis … | head` must not panic when the reader is gone: each
/// command that prints ends quietly (exit 0, nothing on stderr) when its
/// standard output is a pipe nobody reads any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_quietly_on_a_closed_pipe() {
    let server =
        TestServer::start("[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n").await;
    let config = config_file(&server);
    crate::support::write_users(&server.config.users_file(), &[("alice", "pw")]);
    let commands: [&[&str]; 5] = [
        &["queue", "list"],
        &["check-config"],
        &["user", "list"],
        &["audit"],
        &[
            "explain",
            "--ip",
            "127.0.0.2",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
            "--offline",
        ],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = tokio::task::block_in_place(|| {
            Command::new(binary())
                .args(args)
                .arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(writer)
                .stderr(Stdio::piped())
                .output()
                .unwrap()
        });
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}: {err}");
        assert!(out.status.code().is_some(), "{args:?} ended by a signal");
    }
}

/// Every command reads the same default configuration (the packaged file);
/// without one, those that need a file say to name it with --config, and
/// those that looked in the embedded default's data directory say so.
#[test]
fn commands_without_a_config_say_to_name_one() {
    if std::path::Path::new("/etc/portcullis/portcullis.toml").exists() {
        return; // a packaged install: the default exists here
    }
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["audit"][..],
        &["check-config"][..],
        &[
            "explain",
            "--ip",
            "192.0.2.1",
            "--from",
            "a@b.test",
            "--to",
            "c@d.test",
        ][..],
        &["queue", "list"][..],
    ] {
        let (ok, out, err) = run_with_timeout(
            Command::new(binary()).args(args).current_dir(dir.path()),
            WAIT,
        );
        assert!(!ok, "{args:?}: {out}{err}");
        assert!(err.contains("--config"), "{args:?} names --config: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// `portcullis status` asks the running server over the control socket:
/// its listeners, connections and queue; once it stops, exit 3 and
/// `"running": false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_running_server_and_says_when_none_runs() {
    // Outlives the server, so that the CLI can be asked again after it stops.
    let kept = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(
        "[[network]]\nrange = \"127.0.0.0/24\"\nauth = \"none\"\n",
        Some(&kept.path().join("data")),
    )
    .await;
    let config = kept.path().join("cli.toml");
    std::fs::write(&config, toml::to_string(&server.config).unwrap()).unwrap();
    let mut c = SmtpClient::greeted(server.addr(), "127.0.0.2", "cli.test").await;
    let r = c
        .send_mail(
            "from@x.test",
            &["to@elsewhere.example"],
            b"Subject: s\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(r.code, 250);
    let (ok, out, err) = tokio::task::block_in_place(|| cli(&["status", "--json"], &config));
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], std::process::id());
    assert_eq!(status["queue"]["messages"], 1, "{out}");
    assert_eq!(status["queue"]["recipients_queued"], 1, "{out}");
    // The client above still holds its connection.
    assert_eq!(status["connections"], 1, "{out}");
    let listening = status["listeners"].as_array().unwrap();
    assert!(
        listening
            .iter()
            .any(|l| l.as_str().unwrap().starts_with(&server.addr().to_string())),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&["status"], &config));
    assert!(ok && out.contains("queue: 1 message(s)"), "{out}");
    drop(c);
    server.stop().await;
    // The test's certificates went with the server: the same data
    // directory, named by a config of its own.
    std::fs::write(
        &config,
        format!(
            "[server]\ndata_dir = {:?}\n[dns]\nnameservers = [\"127.0.0.1:1\"]\n",
            kept.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (code, out, err) = tokio::task::block_in_place(|| {
        crate::support::run_bounded(
            Command::new(binary())
                .args(["status", "--json", "--config"])
                .arg(&config),
            crate::support::WAIT,
        )
    });
    assert_eq!(code.code(), Some(3), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["running"], false);
}

/// The control socket answers only its own user (and root): even with the
/// socket's mode opened up, another user's connection is closed unanswered.
/// A client speaking the older protocol hears which version is spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_answers_only_the_servers_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let server = TestServer::start("").await;
    let socket = server.data_dir().join("control.sock");
    let ask = |line: &str, uid: Option<u32>| {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(10)\ns.connect({:?})\n\
             try:\n  s.sendall({:?}.encode()+b'\\n')\n  sys.stdout.write(s.recv(65536).decode())\nexcept (BrokenPipeError, ConnectionResetError):\n  pass\n",
            socket.display().to_string(),
            line
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script]);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let answer = tokio::task::block_in_place(|| ask(r#"{"v":2,"command":"status"}"#, None));
    assert!(answer.contains(r#""status""#), "{answer}");
    let answer = tokio::task::block_in_place(|| ask(r#"{"v":1,"cmd":"list"}"#, None));
    assert!(answer.contains("version 1 is not spoken here"), "{answer}");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped the other-user half: it needs root to become another user");
        return;
    }
    // Let `nobody` reach and open the socket: only the peer check is left.
    let mut dir = socket.parent().unwrap().to_path_buf();
    while dir.starts_with(server.dir.path()) {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir.pop();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = tokio::task::block_in_place(|| ask(r#"{"v":2,"command":"status"}"#, Some(65534)));
    assert_eq!(answer, "", "another user was answered");
    let answer = tokio::task::block_in_place(|| ask(r#"{"v":2,"command":"status"}"#, None));
    assert!(answer.contains(r#""status""#), "{answer}");
}
