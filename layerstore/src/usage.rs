//! Who uses which layer: containers/storage creates `use` in a layer's
//! directory when it takes the layer (a pull, a stored layer) and
//! removes the directory when it lets go (the pull's end, `rmi`). A
//! layer nobody has used for the idle time is released from the layer
//! plane; its contents stay in the store, and a later lookup serves it
//! again.
//!
//! The counts are kept on disk (`ROOT/als/uses.json`): a layer of a
//! stored image is used for as long as the image is there, across
//! restarts of this store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Uses of one store path (reference and digest), by key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Uses {
    /// The layer's name in the layer plane (shared by every path to the
    /// same blob of the same repository).
    layer: String,
    count: u64,
    #[serde(skip)]
    idle_since: Option<Instant>,
}

/// The use counts.
#[derive(Debug)]
pub struct Usage {
    path: PathBuf,
    uses: Mutex<HashMap<String, Uses>>,
}

impl Usage {
    /// The counts kept at `path` (none if it is missing or unreadable).
    pub fn open(path: &Path) -> Usage {
        let uses: HashMap<String, Uses> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable use counts; starting from none");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        let now = Instant::now();
        let uses = uses
            .into_iter()
            .map(|(k, mut u)| {
                u.idle_since = (u.count == 0).then_some(now);
                (k, u)
            })
            .collect();
        Usage {
            path: path.to_path_buf(),
            uses: Mutex::new(uses),
        }
    }

    /// `use` was created for path `key` of layer `layer`.
    pub fn used(&self, key: &str, layer: &str) {
        let snapshot = {
            let mut uses = self.uses.lock().expect("uses");
            let u = uses.entry(key.to_string()).or_insert_with(|| Uses {
                layer: layer.to_string(),
                count: 0,
                idle_since: None,
            });
            u.count += 1;
            u.idle_since = None;
            uses.clone()
        };
        self.save(&snapshot);
    }

    /// Path `key`'s directory was removed: one use less.
    pub fn released(&self, key: &str) {
        let snapshot = {
            let mut uses = self.uses.lock().expect("uses");
            let Some(u) = uses.get_mut(key) else {
                return;
            };
            u.count = u.count.saturating_sub(1);
            if u.count == 0 {
                u.idle_since = Some(Instant::now());
            }
            uses.clone()
        };
        self.save(&snapshot);
    }

    /// How many uses path `key` has.
    pub fn count(&self, key: &str) -> u64 {
        self.uses
            .lock()
            .expect("uses")
            .get(key)
            .map_or(0, |u| u.count)
    }

    /// Layers whose every path has been unused for `idle` or longer;
    /// they are forgotten here (a later use counts anew).
    pub fn take_idle(&self, idle: Duration) -> Vec<String> {
        let snapshot = {
            let mut uses = self.uses.lock().expect("uses");
            let mut busy = std::collections::HashSet::new();
            for u in uses.values() {
                if u.idle_since.is_none_or(|t| t.elapsed() < idle) {
                    busy.insert(u.layer.clone());
                }
            }
            let mut idle_layers: Vec<String> = uses
                .values()
                .filter(|u| !busy.contains(&u.layer))
                .map(|u| u.layer.clone())
                .collect();
            if idle_layers.is_empty() {
                return idle_layers;
            }
            idle_layers.sort();
            idle_layers.dedup();
            uses.retain(|_, u| busy.contains(&u.layer));
            (uses.clone(), idle_layers)
        };
        self.save(&snapshot.0);
        snapshot.1
    }

    /// Writes the counts (after the lock is let go: a file write).
    fn save(&self, uses: &HashMap<String, Uses>) {
        let write = || -> std::io::Result<()> {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer(&mut tmp, uses)?;
            tmp.persist(&self.path)?;
            Ok(())
        };
        if let Err(e) = write() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot keep the use counts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_release_idle_layers_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uses.json");
        let usage = Usage::open(&path);
        // Two paths (two tags) to one layer, one to another.
        usage.used("a1", "L");
        usage.used("a2", "L");
        usage.used("b", "M");
        usage.released("a1");
        usage.released("b");
        assert_eq!(usage.count("a2"), 1);
        assert_eq!(
            usage.take_idle(Duration::ZERO),
            vec!["M".to_string()],
            "L is still used through a2"
        );
        assert_eq!(usage.count("b"), 0);
        // A restart keeps the counts: L is still in use.
        let again = Usage::open(&path);
        assert_eq!(again.count("a2"), 1);
        assert!(again.take_idle(Duration::ZERO).is_empty());
        again.released("a2");
        assert!(
            again.take_idle(Duration::from_secs(3600)).is_empty(),
            "not idle long enough"
        );
        assert_eq!(again.take_idle(Duration::ZERO), vec!["L".to_string()]);
        // More releases than uses (a restart lost none, but a client may
        // misbehave): never below zero.
        again.released("a2");
        assert_eq!(again.count("a2"), 0);
    }
}
