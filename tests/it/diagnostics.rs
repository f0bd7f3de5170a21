//! Diagnostics from outside: `portcullis audit` run as an admin would, the
//! router case inside a network namespace of the test's own (a veth pair and
//! a default route; nothing leaves the machine).

use crate::support::server::binary;
use crate::support::{WAIT, run_with_timeout};
use std::process::Command;

/// A network namespace whose default route goes via `gateway`; removed on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn with_default_route(address: &str, gateway: &str) -> Namespace {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pcl{}-{n}", std::process::id());
        let host_end = format!("vh{}-{n}", std::process::id());
        let ns = Namespace { name: name.clone() };
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

    /// Runs `portcullis audit --json` inside; returns the exit code and the findings.
    fn audit(&self, config: &std::path::Path) -> (i32, Vec<serde_json::Value>) {
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

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn audit_names_the_router_inside_a_trusted_range() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::with_default_route("10.77.0.2/24", "10.77.0.1");
    let lan = "[[listener]]\naddress = \"127.0.0.1:2525\"\n[[network]]\nrange = \"10.77.0.0/24\"\nauth = \"none\"\n";
    let (code, findings) = ns.audit(&write(dir.path(), "lan.toml", lan));
    assert_eq!(code, 2, "{findings:?}");
    let router = findings
        .iter()
        .find(|f| f["key"] == "network[0].exclude")
        .unwrap_or_else(|| panic!("no router finding: {findings:?}"));
    assert_eq!(router["severity"], "risk");
    assert!(router["message"].as_str().unwrap().contains("10.77.0.1"));
    assert_eq!(
        router["fix"],
        "in network[0], set exclude = [\"10.77.0.1\"]"
    );
    // With the router excluded, the same machine gives a clean bill.
    let fixed = format!("{lan}exclude = [\"10.77.0.1\"]\n");
    let (code, findings) = ns.audit(&write(dir.path(), "fixed.toml", &fixed));
    assert_eq!((code, findings.len()), (0, 0), "{findings:?}");
}

fn audit_here(config: &std::path::Path) -> (i32, Vec<serde_json::Value>) {
    let (_, out, err) = run_with_timeout(
        Command::new(binary())
            .args(["audit", "--json", "--config"])
            .arg(config),
        WAIT,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    let findings = v["findings"].as_array().unwrap().clone();
    let worst = findings.iter().map(|f| match f["severity"].as_str() {
        Some("risk") => 2,
        Some("warning") => 1,
        _ => 0,
    });
    (worst.max().unwrap_or(0), findings)
}

#[test]
fn audit_finds_each_classic_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "open.toml",
            "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n",
            "network[0].range",
            "risk",
        ),
        (
            "unfiltered.toml",
            "[[listener]]\naddress = \"0.0.0.0:2525\"\n[tls]\ncert = \"/dev/null\"\nkey = \"/dev/null\"\n[[network]]\nrange = \"192.168.7.0/24\"\nauth = \"none\"\n",
            "access.filter",
            "warning",
        ),
        (
            "plaintext.toml",
            "[[listener]]\naddress = \"0.0.0.0:2525\"\n[auth]\nallow_plaintext = true\n",
            "auth.allow_plaintext",
            "risk",
        ),
        (
            "smarthost.toml",
            "[delivery]\nmode = \"smarthost\"\nsmarthost = \"smtp.isp.example:25\"\nsmarthost_tls = \"none\"\nsmarthost_user = \"u\"\nsmarthost_password_file = \"/nonexistent/pass\"\n",
            "delivery.smarthost_tls",
            "risk",
        ),
    ];
    for (file, text, key, severity) in cases {
        let (worst, findings) = audit_here(&write(dir.path(), file, text));
        let f = findings
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("{file}: no finding for {key}: {findings:?}"));
        assert_eq!(f["severity"], severity, "{file}: {f}");
        assert!(!f["fix"].as_str().unwrap().is_empty());
        assert!(worst >= if severity == "risk" { 2 } else { 1 });
    }
}

/// The README's worked example, with its files present, passes the audit
/// without a finding on a machine whose router it excludes.
#[test]
fn the_readme_example_is_clean() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("## Worked example").unwrap();
    let block = &readme[start..];
    let toml_start = block.find("```toml\n").unwrap() + 8;
    let toml_end = toml_start + block[toml_start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut text = block[toml_start..toml_end].to_string();
    for file in ["cert.pem", "key.pem", "users", "smarthost.pass"] {
        let path = write(dir.path(), file, "x");
        text = text.replace(
            &format!("/etc/portcullis/{file}"),
            &path.display().to_string(),
        );
    }
    let config = write(dir.path(), "example.toml", &text);
    let ns = Namespace::with_default_route("192.168.1.50/24", "192.168.1.1");
    let (code, findings) = ns.audit(&config);
    assert_eq!((code, findings.len()), (0, 0), "{findings:#?}");
}
