//! A network namespace of the test's own, joined to this one by a veth pair:
//! a second host for tests that need a client (or a router) at a real,
//! non-loopback address. Nothing leaves the machine; the namespace and both
//! ends of the pair go when it is dropped.

use super::server::binary;
use super::{WAIT, run_with_timeout};
use std::process::Command;

/// A network namespace whose default route goes via `gateway`; removed on drop.
pub struct Namespace {
    name: String,
    host_end: String,
}

impl Namespace {
    pub fn with_default_route(address: &str, gateway: &str) -> Namespace {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pcl{}-{n}", std::process::id());
        let host_end = format!("vh{}-{n}", std::process::id());
        let ns = Namespace {
            name: name.clone(),
            host_end: host_end.clone(),
        };
        let ip = |args: &[&str]| {
            let (ok, out, err) = run_with_timeout(Command::new("ip").args(args), WAIT);
            assert!(
                ok,
                "ip {args:?} failed (root and iproute2 needed): {out}{err}"
            );
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["-n", &name, "addr", "add", address, "dev", "eth0"]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "route", "add", "default", "via", gateway]);
        ns
    }

    /// Gives the host's end of the veth pair an address, so the namespace can
    /// reach servers the test runs there (and the other way round).
    pub fn link_host_end(&self, address: &str) {
        let ip = |args: &[&str]| {
            let (ok, out, err) = run_with_timeout(Command::new("ip").args(args), WAIT);
            assert!(ok, "ip {args:?} failed: {out}{err}");
        };
        let mut args = vec!["addr", "add", address, "dev", &self.host_end];
        if address.contains(':') {
            args.push("nodad"); // usable at once, without duplicate detection
        }
        ip(&args);
        ip(&["link", "set", &self.host_end, "up"]);
    }

    /// Adds another address inside the namespace.
    pub fn add_address(&self, address: &str) {
        let mut args = vec!["-n", &self.name, "addr", "add", address, "dev", "eth0"];
        if address.contains(':') {
            args.push("nodad");
        }
        let (ok, out, err) = run_with_timeout(Command::new("ip").args(&args), WAIT);
        assert!(ok, "ip addr add {address}: {out}{err}");
    }

    /// From `source` inside the namespace: connect to `server`, EHLO, MAIL
    /// FROM; returns the MAIL reply's code and text (Python's smtplib).
    pub fn mail_from(
        &self,
        source: &str,
        server: std::net::SocketAddr,
        sender: &str,
    ) -> (u16, String) {
        let script = format!(
            "import smtplib\ns = smtplib.SMTP(timeout=20, source_address=('{source}', 0))\ns.connect('{}', {})\ns.ehlo('client.test')\ncode, text = s.mail('{sender}')\nprint(code, text.decode())\ns.quit()\n",
            server.ip(),
            server.port()
        );
        let (ok, out) = self.run("python3", &["-c", &script]);
        assert!(ok, "{out}");
        let (code, text) = out.trim().split_once(' ').unwrap_or((out.trim(), ""));
        (
            code.parse().unwrap_or_else(|_| panic!("{out}")),
            text.to_string(),
        )
    }

    /// Runs a command inside the namespace; returns (success, stdout).
    pub fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let (ok, out, err) = run_with_timeout(
            Command::new("ip")
                .args(["netns", "exec", &self.name, program])
                .args(args),
            std::time::Duration::from_secs(120),
        );
        (ok, format!("{out}{err}"))
    }

    /// Runs `portcullis audit --json` inside; returns the exit code and the findings.
    pub fn audit(&self, config: &std::path::Path) -> (i32, Vec<serde_json::Value>) {
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                binary(),
                "audit",
                "--json",
                "--config",
            ])
            .arg(config)
            .output()
            .expect("run audit");
        let v: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
        (
            output.status.code().unwrap_or(-1),
            v["findings"].as_array().unwrap().clone(),
        )
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace removes its end of the veth pair, and so both.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
