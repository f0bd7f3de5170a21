//! A real HAProxy (Debian's, installed by test.sh) of the test's own,
//! stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs HAProxy on `config` (written to `dir/haproxy.cfg`); returns once
/// `front` (one of its listeners) accepts connections.
pub fn start(dir: &Path, config: &str, front: (&str, u16)) -> Haproxy {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy installed (test.sh)");
    let haproxy = Haproxy(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(front).is_err() {
        assert!(started.elapsed() < super::WAIT, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    haproxy
}
