//! A PostgreSQL server of the test's own: a data directory made with
//! Debian's `initdb` in a temporary directory, the server on a free
//! loopback port, stopped (fast shutdown) when dropped. As root it runs as
//! the `postgres` system user (PostgreSQL refuses to run as root).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestPostgres {
    _dir: tempfile::TempDir,
    child: Child,
    pub port: u16,
}

/// Debian's PostgreSQL binaries (the newest installed major version).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (./test.sh installs postgresql-15)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

/// The user PostgreSQL runs as: `postgres` when we are root, else ourselves.
fn run_as() -> Option<(u32, u32)> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    Some((uid, gid))
}

fn as_db_user(cmd: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

impl TestPostgres {
    pub fn start() -> TestPostgres {
        Self::serve(Self::initdb())
    }

    /// A server that speaks TLS with `cert`/`key` and refuses any
    /// connection without it (`hostnossl ... reject`).
    pub fn start_tls_only(cert: &std::path::Path, key: &std::path::Path) -> TestPostgres {
        let dir = Self::initdb();
        let data = dir.path().join("data");
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = data.join(name);
            std::fs::copy(from, &to).unwrap();
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some((uid, gid)) = run_as() {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n{rules}"),
        )
        .unwrap();
        Self::serve(dir)
    }

    /// A fresh data directory (initdb), not yet served.
    fn initdb() -> tempfile::TempDir {
        let dir = Self::owned_dir();
        let data = dir.path().join("data");
        let out = as_db_user(
            Command::new(bin_dir().join("initdb"))
                .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
                .arg(&data),
            run_as(),
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    }

    /// A streaming standby of `primary`, copied with `pg_basebackup -R`
    /// and known to it as `name` (its `application_name`).
    pub fn standby_of(primary: &TestPostgres, name: &str) -> TestPostgres {
        let dir = Self::owned_dir();
        let data = dir.path().join("data");
        let out = as_db_user(
            Command::new(bin_dir().join("pg_basebackup"))
                .arg("-d")
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres application_name={name}",
                    primary.port
                ))
                .args(["-R", "-X", "stream", "--no-sync", "-D"])
                .arg(&data),
            run_as(),
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::serve(dir)
    }

    /// From now on, every commit on this primary waits for standby `name`;
    /// returns once that standby streams as `sync`.
    pub fn require_synchronous(&self, name: &str) {
        self.query(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{name}'"
        ));
        self.query("SELECT pg_reload_conf()");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let state = self.query(&format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
            ));
            if state == "sync" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("standby {name} did not become synchronous");
    }

    /// Promotes this standby to primary (waits until it is).
    pub fn promote(&self) {
        assert_eq!(self.query("SELECT pg_promote(true, 30)"), "t");
    }

    /// The server dies at once, as in a crash (SIGKILL to the postmaster).
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A temporary directory the database user owns.
    fn owned_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        dir
    }

    /// Starts again, on the same data and port, a server that crashed
    /// (see `crash`).
    pub fn restart(&mut self) {
        // The crashed server's backends may hold its shared memory a moment
        // longer; a postmaster started meanwhile exits, and is started again.
        for _ in 0..20 {
            self.child = Self::postmaster(self._dir.path(), self.port);
            std::thread::sleep(Duration::from_millis(500));
            if self.child.try_wait().unwrap().is_none() {
                self.wait_ready(Duration::from_secs(30));
                return;
            }
        }
        panic!("PostgreSQL did not start again on port {}", self.port);
    }

    /// The server process for `dir/data` on `port`.
    fn postmaster(dir: &std::path::Path, port: u16) -> Child {
        as_db_user(
            Command::new(bin_dir().join("postgres"))
                .arg("-D")
                .arg(dir.join("data"))
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            run_as(),
        )
        .spawn()
        .unwrap()
    }

    /// Runs the server of `dir/data` on a free loopback port.
    fn serve(dir: tempfile::TempDir) -> TestPostgres {
        let port = super::free_port("127.0.0.1");
        let child = Self::postmaster(dir.path(), port);
        let pg = TestPostgres {
            _dir: dir,
            child,
            port,
        };
        pg.wait_ready(Duration::from_secs(30));
        pg
    }

    /// The connection string nodes are given.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// One SQL statement through psql; its output, unaligned.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-tAc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "PostgreSQL did not start on port {} within {limit:?}",
            self.port
        );
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // SIGINT: "fast" shutdown, bounded.
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
