//! The admin page in a real browser: Debian's headless Chromium driven by
//! Selenium (tests/browser/admin_page.py) logs in, holds and releases a
//! message sent through the relay, runs the relay test from the Diagnostics
//! page and parses /metrics. Its screenshots land in target/screenshots/.

use crate::admin::{admin_server, send_one};
use crate::support::run_with_timeout;
use std::process::Command;
use std::time::Duration;

/// Debian's Python, which has the python3-selenium package (a pyenv or
/// venv python3 earlier in PATH would not).
fn system_python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_works_in_headless_chromium() {
    let server = admin_server("").await;
    let id = send_one(&server, "seen in the browser").await;
    let url = format!("http://{}", server.admin.unwrap());
    let root = env!("CARGO_MANIFEST_DIR");
    let out = format!("{root}/target/screenshots");
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run_with_timeout(
            Command::new(system_python()).args([
                &format!("{root}/tests/browser/admin_page.py"),
                "--url",
                &url,
                "--user",
                "alice",
                "--password",
                "wonderland",
                "--queue-id",
                &id,
                "--out",
                &out,
            ]),
            Duration::from_secs(300),
        )
    });
    assert!(ok, "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("relay tests refused"), "{stdout}");
    for shot in ["dashboard.png", "queue.png", "diagnostics.png"] {
        let meta = std::fs::metadata(format!("{out}/{shot}")).expect(shot);
        assert!(meta.len() > 5_000, "{shot} is too small to show anything");
    }
    assert!(server.queued().contains(&id), "the message is still queued");
    server.stop().await;
}

/// The Settings page in Chromium: a LAN range added with "no authentication"
/// (and, where this machine has a default route, the router named by the
/// audit and excluded), previewed, saved; then mail from the new range
/// relays through the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settings_page_adds_a_lan_range_in_headless_chromium() {
    let rig = tokio::task::block_in_place(|| crate::settings::start(""));
    let router = portcullis::diagnostics::audit::Machine::read()
        .gateways
        .into_iter()
        .find(|g| g.is_ipv4())
        .map(|g| g.to_string())
        .unwrap_or_default();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = format!("{root}/target/screenshots");
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        run_with_timeout(
            Command::new(system_python()).args([
                &format!("{root}/tests/browser/settings_page.py"),
                "--url",
                &format!("http://{}", rig.admin),
                "--user",
                "alice",
                "--password",
                "wonderland",
                "--lan",
                "127.0.0.64/27",
                "--lan-client",
                "127.0.0.70",
                "--router",
                &router,
                "--out",
                &out,
            ]),
            Duration::from_secs(300),
        )
    });
    assert!(ok, "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("settings saved from the page"), "{stdout}");
    assert!(stdout.contains("user added from the page"), "{stdout}");
    let file = std::fs::read_to_string(&rig.path).unwrap();
    assert!(file.contains("range = \"127.0.0.64/27\""), "{file}");
    assert!(file.contains("# Printers and PCs relay without a password."));
    assert!(
        file.contains("inbound_domains = [\"office.test\"]"),
        "{file}"
    );
    let mut c = crate::support::client::SmtpClient::greeted(
        rig.server.addr,
        "127.0.0.70",
        "pc70.office.test",
    )
    .await;
    c.expect("MAIL FROM:<scanner@office.test>", 250).await;
    c.expect("RCPT TO:<someone@far.example>", 250).await;
    c.expect("QUIT", 221).await;
    // The login set from the page works for SMTP AUTH.
    let mut c = crate::support::client::SmtpClient::greeted(
        rig.server.addr,
        "127.0.0.9",
        "printer2.office.test",
    )
    .await;
    let r = c.auth_plain("printer2", "printer2 password").await;
    assert_eq!(r.code, 235, "{r:?}");
}
