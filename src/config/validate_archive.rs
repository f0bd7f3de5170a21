//! Checks of `[archive]`: where copies go must work now, and a directory
//! must be on the data directory's file system (a sync there is not a sync
//! of the spool: the copy could be lost while the message is kept).

use super::Config;
use super::validate::{Finding, Severity, finding};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub fn check(c: &Config, out: &mut Vec<Finding>) {
    let a = &c.archive;
    if let Some(to) = &a.to
        && !super::validate_routes::is_address(to)
    {
        out.push(finding(
            Severity::Error,
            "archive.to",
            format!("{to:?}"),
            "must be a mailbox address such as \"archive@example.org\"",
        ));
    }
    if a.retention_days == Some(0) {
        out.push(finding(
            Severity::Error,
            "archive.retention_days",
            "0",
            "would remove every copy at once; leave it out to keep them all",
        ));
    }
    if a.retention_days.is_some() && a.dir.is_none() {
        out.push(finding(
            Severity::Warning,
            "archive.retention_days",
            a.retention_days.unwrap_or_default().to_string(),
            "applies to archive.dir only; copies sent to archive.to are kept by that mailbox",
        ));
    }
    if !a.is_on() && (!a.networks.is_empty() || !a.users.is_empty()) {
        out.push(finding(
            Severity::Warning,
            "archive.networks",
            "(set)",
            "has no effect without archive.to or archive.dir",
        ));
    }
    let Some(dir) = &a.dir else { return };
    let value = format!("{:?}", dir.display().to_string());
    if !dir.is_absolute() {
        out.push(finding(
            Severity::Error,
            "archive.dir",
            value,
            "must be an absolute path",
        ));
        return;
    }
    let existing = nearest_existing(dir);
    if let Err(e) = crate::fsio::may_access(existing, true) {
        out.push(finding(
            Severity::Error,
            "archive.dir",
            value.clone(),
            format!(
                "cannot be written by {}: {} {e}",
                crate::fsio::running_user(),
                existing.display()
            ),
        ));
    }
    let data = nearest_existing(&c.server.data_dir);
    if let (Ok(a_meta), Ok(d_meta)) = (std::fs::metadata(existing), std::fs::metadata(data))
        && a_meta.dev() != d_meta.dev()
    {
        out.push(finding(
            Severity::Warning,
            "archive.dir",
            value,
            format!(
                "is on another file system than server.data_dir ({}): syncing the copy there does not sync the spool, so a crash can keep a message and lose its copy or the reverse",
                c.server.data_dir.display()
            ),
        ));
    }
}

/// The path itself, or the nearest ancestor that exists.
fn nearest_existing(path: &Path) -> &Path {
    path.ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("/"))
}
