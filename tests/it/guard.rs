//! The open-relay guard, through the real binary: check-config and serve
//! refuse a configuration that opens the relay and name the entry.

use crate::support::server::{ProcessServer, binary};
use crate::support::{DNS_GUARD, WAIT, run_with_timeout};
use std::process::Command;

fn write_config(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    write_config_with(dir, "", body)
}

/// `server_extra` goes into [server]; `body` holds the other sections.
fn write_config_with(dir: &std::path::Path, server_extra: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join("portcullis.toml");
    let text = format!(
        "{DNS_GUARD}[server]\ndata_dir = \"{}\"\nhostname = \"relay.test\"\n{server_extra}\n[[listener]]\naddress = \"127.0.0.1:0\"\n{body}",
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn check(body: &str) -> (bool, String) {
    check_with("", body)
}

fn check_with(server_extra: &str, body: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config_with(dir.path(), server_extra, body);
    let (ok, out, err) = run_with_timeout(
        Command::new(binary())
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        WAIT,
    );
    (ok, out + &err)
}

#[test]
fn open_ranges_are_refused_and_named() {
    let cases = [
        ("0.0.0.0/0", "network[1].range"),
        ("::/0", "network[1].range"),
        ("::ffff:0:0/96", "network[1].range"),
        ("8.8.8.0/24", "network[1].range"),
        ("0.0.0.0/1", "network[1].range"),
    ];
    for (range, key) in cases {
        let body = format!(
            "[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\n[[network]]\nrange = \"{range}\"\nauth = \"none\"\n"
        );
        let (ok, out) = check(&body);
        assert!(!ok, "{range} must be refused");
        assert!(
            out.contains(key) && out.contains("open relay"),
            "{range}: {out}"
        );
    }
}

#[test]
fn safe_configs_pass_and_warnings_are_reported() {
    let (ok, out) = check(
        "[[network]]\nrange = \"10.0.0.0/8\"\nauth = \"none\"\n[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"required\"\n",
    );
    assert!(ok, "{out}");
    let (ok, out) = check("[access]\nfilter = \"deny\"\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("warning") && out.contains("access.deny"),
        "{out}"
    );
    let (ok, out) = check(
        "[access]\nfilter = \"allow\"\nallow = [\"10.0.0.0/8\"]\n[[network]]\nrange = \"192.168.0.0/16\"\nauth = \"none\"\n",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("access.allow") && out.contains("network[0]"),
        "{out}"
    );
}

#[test]
fn bad_values_name_key_and_reason() {
    let (ok, out) = check("[[network]]\nrange = \"10.0.0.0/33\"\nauth = \"none\"\n");
    assert!(!ok);
    assert!(
        out.contains("range") && out.contains("10.0.0.0/33"),
        "{out}"
    );
    let (ok, out) = check_with("max_recipients = 0", "");
    assert!(!ok);
    assert!(
        out.contains("server.max_recipients") && out.contains("at least 1"),
        "{out}"
    );
    let (ok, out) = check("[[network]]\nrange = \"10.0.0.0/8\"\nauth = \"maybe\"\n");
    assert!(!ok);
    assert!(out.contains("auth") && out.contains("maybe"), "{out}");
}

#[test]
fn serve_refuses_an_open_relay_and_starts_loudly_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n",
    );
    let (ok, _out, err) = run_with_timeout(
        Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(&path),
        WAIT,
    );
    assert!(!ok, "serve must refuse an open relay");
    assert!(
        err.contains("network[0].range") && err.contains("open relay"),
        "{err}"
    );

    let path = write_config(
        dir.path(),
        "[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"none\"\n[relay]\nallow_open_relay = true\n",
    );
    let server = ProcessServer::spawn(&path);
    assert!(
        server.wait_for_log("THIS SERVER IS AN OPEN RELAY"),
        "{}",
        server.log.lock().unwrap()
    );
}
