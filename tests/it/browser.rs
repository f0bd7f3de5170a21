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
