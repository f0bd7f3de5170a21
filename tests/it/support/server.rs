//! Portcullis under test: in-process (fast, most tests) or as a real child
//! process of the built binary (for kill -9 and command-line tests).

use super::tls::TestCa;
use super::{DNS_GUARD, WAIT};
use portcullis::config::{Config, ListenerKind};
use portcullis::daemon::Daemon;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Completes a test's TOML: data_dir in a temp dir, test hostname, real TLS
/// certificate, DNS pinned to loopback, and one smtp listener on a free port
/// unless the test names its own listeners.
pub fn complete_config(toml_text: &str, dir: &Path, ca: &TestCa) -> String {
    complete_config_at(toml_text, &dir.join("data"), ca)
}

/// As `complete_config`, with the spool in `data_dir`.
pub fn complete_config_at(toml_text: &str, data_dir: &Path, ca: &TestCa) -> String {
    let mut table: toml::Table = toml::from_str(toml_text).expect("test config is valid TOML");
    let server = table
        .entry("server")
        .or_insert(toml::Value::Table(Default::default()));
    let server = server.as_table_mut().unwrap();
    server.insert("data_dir".into(), data_dir.display().to_string().into());
    server.entry("hostname").or_insert("relay.test".into());
    let tls = table
        .entry("tls")
        .or_insert(toml::Value::Table(Default::default()))
        .as_table_mut()
        .unwrap();
    tls.insert("cert".into(), ca.cert_path.display().to_string().into());
    tls.insert("key".into(), ca.key_path.display().to_string().into());
    if !table.contains_key("dns") {
        let dns: toml::Table = toml::from_str(DNS_GUARD).unwrap();
        table.insert("dns".into(), dns["dns"].clone());
    }
    if !table.contains_key("listener") {
        let l: toml::Table =
            toml::from_str("[[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"smtp\"\n").unwrap();
        table.insert("listener".into(), l["listener"].clone());
    }
    toml::to_string(&table).unwrap()
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub addrs: Vec<(SocketAddr, ListenerKind)>,
    /// The admin page, when the config turns it on.
    pub admin: Option<SocketAddr>,
    pub config: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(toml_text: &str) -> TestServer {
        Self::start_at(toml_text, None).await
    }

    /// Starts with the spool in `data_dir` (a temp dir when None).
    pub async fn start_at(toml_text: &str, data_dir: Option<&Path>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::generate(dir.path());
        let data_dir = data_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("data"));
        let text = complete_config_at(toml_text, &data_dir, &ca);
        let config = Config::parse(&text, "test config").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let server = Daemon::bind(config.clone()).await.expect("server binds");
        let addrs = server.local_addrs();
        let admin = server.admin_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            server.run(token).await.expect("server runs");
        });
        TestServer {
            dir,
            ca,
            addrs,
            admin,
            config,
            shutdown,
            task: Some(task),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr_of(ListenerKind::Smtp)
    }

    pub fn addr_of(&self, kind: ListenerKind) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(a, _)| *a)
            .expect("listener of that kind")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.server.data_dir.clone()
    }

    pub fn spool(&self) -> portcullis::spool::Spool {
        portcullis::spool::Spool::open_existing(&self.data_dir()).unwrap()
    }

    /// Queue IDs currently spooled.
    pub fn queued(&self) -> Vec<String> {
        self.spool()
            .ids()
            .unwrap()
            .into_iter()
            .map(String::from)
            .collect()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real binary as a child process.
pub struct ProcessServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl ProcessServer {
    /// Starts `portcullis serve --config FILE` and waits for its "listening on" line.
    pub fn spawn(config_path: &Path) -> ProcessServer {
        Self::spawn_command(Command::new(binary()), config_path)
    }

    /// The same, with at most `open_files` descriptors (util-linux's prlimit
    /// sets the limit and runs the server in its place).
    pub fn spawn_with_open_files(config_path: &Path, open_files: u32) -> ProcessServer {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg(binary());
        Self::spawn_command(command, config_path)
    }

    /// Through a shell script `command` that runs `$0 serve --config "$1"`
    /// (to set a umask or a limit first).
    pub fn spawn_shell(mut command: Command, binary: &str, config_path: &Path) -> ProcessServer {
        command.arg(binary).arg(config_path);
        Self::start_child(command)
    }

    fn spawn_command(mut command: Command, config_path: &Path) -> ProcessServer {
        command.args(["serve", "--config"]).arg(config_path);
        Self::start_child(command)
    }

    fn start_child(mut command: Command) -> ProcessServer {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start portcullis");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(WAIT) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        ProcessServer { child, addr, log }
    }

    /// Waits (bounded) until the server's log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (a reload) with `kill`, as an admin would.
    pub fn reload_by_signal(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -HUP");
    }

    /// A `VmHWM`/`VmRSS`-style line of /proc/PID/status, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// SIGTERM, as systemd stops it, and waits (bounded) for the exit:
    /// whether it exited within `WAIT`.
    pub fn terminate(&mut self) -> bool {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < WAIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ProcessServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
