//! The Debian package as `cargo deb` builds it (test.sh builds it before the
//! tests run): its files, its unit, its conffile, and the packaged binary
//! accepting the packaged config.

use crate::support::{WAIT, run_with_timeout};
use std::path::PathBuf;
use std::process::Command;

fn the_package() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (./test.sh builds the package with cargo deb)",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop().expect("a portcullis_*.deb in target/debian")
}

#[test]
fn the_debian_package_holds_a_safe_service() {
    let deb = the_package();
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run_with_timeout(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path()),
        WAIT,
    );
    assert!(ok, "{err}");
    let root = dir.path();
    assert!(root.join("usr/bin/portcullis").exists());
    assert!(root.join("usr/share/doc/portcullis/README.md").exists());
    let unit_path = [
        "lib/systemd/system/portcullis.service",
        "usr/lib/systemd/system/portcullis.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .expect("the systemd unit is in the package");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for key in [
        "ExecReload=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/portcullis",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "User=portcullis",
        "LimitNOFILE=",
        // The conffile's transcript suggestion needs it under ProtectSystem=strict.
        "LogsDirectory=portcullis",
        "Type=notify",
    ] {
        assert!(unit.contains(key), "unit lacks {key}:\n{unit}");
    }
    verify_unit(&unit, root);
    // Stripped: the debug symbols ship in the separate -dbgsym package.
    let (ok, sections, err) = run_with_timeout(
        Command::new("readelf")
            .arg("-S")
            .arg(root.join("usr/bin/portcullis")),
        WAIT,
    );
    assert!(ok, "{err}");
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".debug_line"),
        "the packaged binary carries debug sections:\n{sections}"
    );
    // The config is a conffile, and the packaged binary accepts it.
    let (ok, control, err) = run_with_timeout(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(dir.path().join("DEBIAN")),
        WAIT,
    );
    assert!(ok, "{control}{err}");
    let conffiles = std::fs::read_to_string(dir.path().join("DEBIAN/conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/portcullis/portcullis.toml"),
        "{conffiles}"
    );
    let config = root.join("etc/portcullis/portcullis.toml");
    let (ok, out, err) = run_with_timeout(
        Command::new(root.join("usr/bin/portcullis"))
            .arg("check-config")
            .arg("--config")
            .arg(&config),
        WAIT,
    );
    assert!(ok, "the packaged config passes check-config: {out}{err}");
    // And it is no open relay: only loopback is trusted, listeners on loopback.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("address = \"127.0.0.1:25\""));
    let (_, audit, _) = run_with_timeout(
        Command::new(root.join("usr/bin/portcullis"))
            .args(["audit", "--json", "--config"])
            .arg(&config),
        WAIT,
    );
    let v: serde_json::Value = serde_json::from_str(&audit).unwrap();
    assert!(
        !v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["severity"] == "risk"),
        "{audit}"
    );
    let postinst = std::fs::read_to_string(dir.path().join("DEBIAN/postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
}

/// `systemd-analyze verify` on the packaged unit, its binary pointed at the
/// extracted package (it is not installed here): no unknown key, no wrong
/// value, no command that cannot run.
fn verify_unit(unit: &str, root: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let binary = root.join("usr/bin/portcullis");
    let copy = dir.path().join("portcullis.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/portcullis", &binary.display().to_string()),
    )
    .unwrap();
    let (ok, out, err) = run_with_timeout(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy),
        WAIT,
    );
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "systemd-analyze verify: {out}{err}"
    );
}
