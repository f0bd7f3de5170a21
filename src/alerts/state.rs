//! The alert rules' states across restarts: `data_dir/alerts.json`,
//! replaced atomically and synced whenever a state changes (a rule starts
//! holding, fires, reminds or resolves), at most once a tick.

use super::RuleState;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FILE: &str = "alerts.json";

pub struct Kept {
    path: PathBuf,
    /// What the file holds now.
    saved: HashMap<String, RuleState>,
    /// The last write's failure, told once until it changes.
    failing: Option<String>,
}

impl Kept {
    pub fn new(data_dir: &Path) -> Kept {
        Kept {
            path: data_dir.join(FILE),
            saved: HashMap::new(),
            failing: None,
        }
    }

    /// The states as last kept (none when the file is missing or
    /// unreadable: the rules then start afresh, as before).
    pub fn load(&mut self) -> HashMap<String, RuleState> {
        self.saved = std::fs::read(&self.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        self.saved.clone()
    }

    /// Writes `states` when they differ from what the file holds.
    pub fn save_if_changed(&mut self, states: &HashMap<String, RuleState>) {
        if *states == self.saved {
            return;
        }
        let written = serde_json::to_vec(states)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                crate::fsio::replace(&self.path, &bytes, crate::fsio::NewFile::PRIVATE)
            });
        match written {
            Ok(()) => {
                self.saved = states.clone();
                self.failing = None;
            }
            Err(e) => {
                let said = e.to_string();
                if self.failing.as_ref() != Some(&said) {
                    tracing::warn!(file = %self.path.display(), error = %said, "cannot keep the alert states");
                    self.failing = Some(said);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_written_are_read_back_and_unchanged_ones_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut kept = Kept::new(dir.path());
        assert!(kept.load().is_empty(), "no file: nothing kept");
        let mut states = HashMap::new();
        states.insert(
            "0:rule".to_string(),
            RuleState {
                first_seen: Some(100),
                firing: true,
                last_notice: 160,
                told: Some(("the queue is stalled".into(), 100)),
            },
        );
        kept.save_if_changed(&states);
        let path = dir.path().join(FILE);
        let written = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(Kept::new(dir.path()).load(), states);
        // The same states again: the file is left alone.
        std::thread::sleep(std::time::Duration::from_millis(20));
        kept.save_if_changed(&states);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            written
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(
            Kept::new(dir.path()).load().is_empty(),
            "unreadable: afresh"
        );
    }
}
