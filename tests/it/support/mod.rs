//! The integration-test kit: servers on loopback, SMTP clients bound to chosen
//! 127.0.0.x addresses, generated TLS certificates, and helpers to read the spool.

pub mod client;
pub mod cluster_node;
pub mod dns;
pub mod haproxy;
pub mod netns;
pub mod oauth_peer;
pub mod postfix_mta;
pub mod postgres;
pub mod server;
pub mod sink;
pub mod sts_peer;
pub mod tls;
pub mod web;
pub mod webhook_receiver;

use std::time::Duration;

/// Every wait in a test is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// The TOML every test config starts with: DNS goes only to a loopback port
/// nobody answers on, so no test can reach the machine's own resolver.
pub const DNS_GUARD: &str = "[dns]\nnameservers = [\"127.0.0.1:1\"]\n";

/// A port nobody listens on right now at `ip` (for a server a test starts later).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Strips the Received: header that Portcullis prepends (it is the first header, with its folded lines).
pub fn strip_received(spooled: &[u8]) -> &[u8] {
    assert!(
        spooled.starts_with(b"Received: "),
        "spooled message must start with our Received: header"
    );
    let mut pos = 0;
    loop {
        let nl = spooled[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("header line end")
            + pos
            + 2;
        pos = nl;
        if spooled.get(pos) != Some(&b'\t') {
            return &spooled[pos..];
        }
    }
}

/// Runs `portcullis ARGS --config CONFIG` (bounded by WAIT); returns (exit ok, stdout, stderr).
pub fn portcullis(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    run_with_timeout(
        std::process::Command::new(server::binary())
            .args(args)
            .arg("--config")
            .arg(config),
        WAIT,
    )
}

/// Runs an external program with a time limit; returns (exit ok, stdout, stderr).
pub fn run_with_timeout(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> (bool, String, String) {
    let (status, out, err) = run_bounded(cmd, limit);
    (status.success(), out, err)
}

/// Runs an external program with a time limit (killed and the test failed
/// beyond it); returns its exit status, stdout and stderr. The outputs are
/// read while it runs, so a long one cannot stall it on a full pipe.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> (std::process::ExitStatus, String, String) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd:?}: {e} (run ./test.sh, which installs the test tools)")
        });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Writes a users file with quick bcrypt hashes (argon2 is tested through `user add`).
pub fn write_users(path: &std::path::Path, users: &[(&str, &str)]) {
    let mut map = portcullis::users::Users::new();
    for (name, pass) in users {
        map.insert(name.to_string(), bcrypt::hash(pass, 4).unwrap());
    }
    portcullis::users::write_users(path, &map, None).unwrap();
}

/// The queue id a test read as text (from a listing, a file name).
pub fn qid(id: &str) -> portcullis::spool::QueueId {
    portcullis::spool::QueueId::parse(id).unwrap_or_else(|| panic!("{id:?} is not a queue id"))
}
