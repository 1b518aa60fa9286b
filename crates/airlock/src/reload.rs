//! Hot reload of the policies from the config file `airlock serve --config FILE` runs with.
//!
//! The file is re-read when its modification time or size changes (polled every second; a
//! poll needs no platform watcher and sees edits made through any editor, rename or copy) and
//! on SIGHUP. A file that is not valid is refused as a whole with the errors of `airlock config
//! check` in the log, and the policies already live keep serving. Only the `policies` section is
//! applied at run time; a change to any other section is logged as needing a restart.

use airlock_core::config::{Config, LoadedConfig};
use airlock_core::gate::{Gate, PolicyAuthor};
use anyhow::Context;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A changed file is read only once it has stayed the same this long, so that a file being
/// written (truncated, then filled) is not taken for the new config half-way.
const SETTLE: Duration = Duration::from_millis(200);

/// What tells one version of the file from the next without reading it.
type Stamp = Option<(SystemTime, u64)>;

/// Watches the config file the gateway started with.
pub struct Watcher {
    path: PathBuf,
    /// The file as the gateway started with it: other sections are compared against it.
    started_with: Value,
    stamp: Stamp,
}

/// Loads the config `serve` starts with and the watcher for later versions of it. The stamp is
/// taken before the read, so an edit made while starting is seen by the first poll.
pub fn load(path: &Path) -> anyhow::Result<(LoadedConfig, Watcher)> {
    let stamp = stamp(path);
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let loaded = Config::parse(&text, &path.display().to_string(), path.parent())?;
    let watcher = Watcher {
        path: path.to_path_buf(),
        started_with: document(&text),
        stamp,
    };
    Ok((loaded, watcher))
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The YAML document, or null when it does not parse (it then also fails validation).
fn document(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap_or(Value::Null)
}

/// The top-level sections other than `policies` (and `dangerous_functions`) whose values differ between two documents.
fn changed_sections(before: &Value, after: &Value) -> Vec<String> {
    let keys = |doc: &Value| -> BTreeSet<String> {
        doc.as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    keys(before)
        .union(&keys(after))
        // The dangerous-function list belongs to the policies and is reloaded with them.
        .filter(|key| {
            !matches!(key.as_str(), "policies" | "dangerous_functions")
                && before.get(key.as_str()) != after.get(key.as_str())
        })
        .cloned()
        .collect()
}

impl Watcher {
    /// Runs for the life of the gateway.
    pub async fn watch(mut self, gate: Arc<Gate>) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config file is still polled");
                None
            }
        };
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = poll.tick() => {
                    let mut now = stamp(&self.path);
                    if now == self.stamp {
                        continue;
                    }
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = stamp(&self.path);
                        if again == now {
                            break;
                        }
                        now = again;
                    }
                    self.stamp = now;
                }
                _ = hup => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: re-reading the config file");
                    self.stamp = stamp(&self.path);
                }
            }
            self.reload(&gate).await;
        }
    }

    async fn reload(&self, gate: &Gate) {
        let file = self.path.display().to_string();
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(%file, error = %e, "cannot read the config file; the current policies keep serving");
                return;
            }
        };
        // An empty file is valid (every default, no policies) but is far likelier a file being
        // rewritten than a wish to deny everything; `policies: []` says that explicitly.
        if text.trim().is_empty() {
            tracing::error!(%file, "the config file is empty; the current policies keep serving");
            return;
        }
        let loaded = match Config::parse(&text, &file, self.path.parent()) {
            Ok(loaded) => loaded,
            Err(errors) => {
                tracing::error!(%file, %errors, "the config file is not valid; the current policies keep serving");
                return;
            }
        };
        for section in changed_sections(&self.started_with, &document(&text)) {
            tracing::warn!(%file, %section, "this section of the config file changed; it needs a restart to take effect and is ignored until then");
        }
        match gate
            .change_policies(loaded.policies, PolicyAuthor::config_file())
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => tracing::info!(%file, "config file re-read; the policies are unchanged"),
            Err(e) => {
                tracing::error!(%file, error = %e, "the policy change could not be recorded, so it was not applied; the current policies keep serving")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sections_other_than_policies_count_as_needing_a_restart() {
        let before = document("listen:\n  api: 127.0.0.1:1\npolicies: []\nstore: a\n");
        let after =
            document("listen:\n  api: 127.0.0.1:2\npolicies: [x]\nadmin_groups: [g]\nstore: a\n");
        assert_eq!(
            changed_sections(&before, &after),
            ["admin_groups", "listen"]
        );
        assert!(changed_sections(&before, &before).is_empty());
    }
}
