//! Who uses which layer: containers/storage creates `use` in a layer's
//! directory when it takes the layer (a pull, a stored layer) and
//! removes the directory when it lets go (the pull's end, `rmi`). A
//! layer nobody has used for the idle time is released from the layer
//! plane; its contents stay in the store, and a later lookup serves it
//! again.
//!
//! The counts are kept on disk (`ROOT/als/uses.json`): a layer of a
//! stored image is used for as long as the image is there, across
//! restarts of this store. One thread writes the file, always from the
//! latest counts, so writes never land out of order; a change is
//! answered once it is on disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
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

type Counts = Arc<Mutex<HashMap<String, Uses>>>;

/// The use counts.
#[derive(Debug)]
pub struct Usage {
    uses: Counts,
    /// To the writer: "write the latest counts, then answer here".
    writer: Mutex<SyncSender<SyncSender<()>>>,
}

impl Usage {
    /// The counts kept at `path` (none if it is missing or unreadable),
    /// and the thread that keeps them there.
    pub fn open(path: &Path) -> std::io::Result<Usage> {
        let uses: HashMap<String, Uses> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable use counts; starting from none");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        let now = Instant::now();
        let uses: Counts = Arc::new(Mutex::new(
            uses.into_iter()
                .map(|(k, mut u)| {
                    u.idle_since = (u.count == 0).then_some(now);
                    (k, u)
                })
                .collect(),
        ));
        let (tx, rx) = sync_channel(64);
        let (counts, path) = (uses.clone(), path.to_path_buf());
        std::thread::Builder::new()
            .name("store-uses".into())
            .spawn(move || write_counts(&counts, &path, rx))?;
        Ok(Usage {
            uses,
            writer: Mutex::new(tx),
        })
    }

    /// `use` was created for path `key` of layer `layer`. Returns once
    /// the count is on disk.
    pub fn used(&self, key: &str, layer: &str) {
        {
            let mut uses = self.uses.lock().expect("uses");
            let u = uses.entry(key.to_string()).or_insert_with(|| Uses {
                layer: layer.to_string(),
                count: 0,
                idle_since: None,
            });
            u.count += 1;
            u.idle_since = None;
        }
        self.flush();
    }

    /// Path `key`'s directory was removed: one use less. Returns once the
    /// count is on disk.
    pub fn released(&self, key: &str) {
        {
            let mut uses = self.uses.lock().expect("uses");
            let Some(u) = uses.get_mut(key) else {
                return;
            };
            u.count = u.count.saturating_sub(1);
            if u.count == 0 {
                u.idle_since = Some(Instant::now());
            }
        }
        self.flush();
    }

    /// How many uses path `key` has.
    pub fn count(&self, key: &str) -> u64 {
        self.uses
            .lock()
            .expect("uses")
            .get(key)
            .map_or(0, |u| u.count)
    }

    /// Layers some path uses, or used within `idle`.
    pub fn busy_layers(&self, idle: Duration) -> Vec<String> {
        let uses = self.uses.lock().expect("uses");
        busy(&uses, idle).into_iter().collect()
    }

    /// Whether layer `layer` has no use and none within `idle`.
    pub fn is_idle(&self, layer: &str, idle: Duration) -> bool {
        !busy(&self.uses.lock().expect("uses"), idle).contains(layer)
    }

    /// Paths of layers whose every path has been unused for `idle` or
    /// longer, with their layers; forgotten here (a later use counts
    /// anew).
    pub fn take_idle(&self, idle: Duration) -> Vec<(String, String)> {
        let taken: Vec<(String, String)> = {
            let mut uses = self.uses.lock().expect("uses");
            let busy = busy(&uses, idle);
            let taken = uses
                .iter()
                .filter(|(_, u)| !busy.contains(&u.layer))
                .map(|(k, u)| (k.clone(), u.layer.clone()))
                .collect();
            uses.retain(|_, u| busy.contains(&u.layer));
            taken
        };
        if !taken.is_empty() {
            self.flush();
        }
        taken
    }

    /// Waits until the writer has written the counts as they are now.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        let sent = self.writer.lock().expect("writer").send(done);
        if sent.is_ok() {
            let _ = wait.recv();
        }
    }
}

/// Layers some path uses, or used within `idle`.
fn busy(uses: &HashMap<String, Uses>, idle: Duration) -> HashSet<String> {
    uses.values()
        .filter(|u| u.idle_since.is_none_or(|t| t.elapsed() < idle))
        .map(|u| u.layer.clone())
        .collect()
}

/// The writer: for each request (and every request queued behind it),
/// the latest counts to `path` (temporary file, fsync, rename), then the
/// answers.
fn write_counts(counts: &Counts, path: &Path, requests: Receiver<SyncSender<()>>) {
    while let Ok(first) = requests.recv() {
        let mut waiting = vec![first];
        waiting.extend(requests.try_iter());
        let snapshot = counts.lock().expect("uses").clone();
        if let Err(e) = write_atomically(path, &snapshot) {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the use counts");
        }
        for w in waiting {
            let _ = w.send(());
        }
    }
}

fn write_atomically(path: &Path, uses: &HashMap<String, Uses>) -> std::io::Result<()> {
    let dir: PathBuf = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    serde_json::to_writer(&mut tmp, uses)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_release_idle_layers_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uses.json");
        let usage = Usage::open(&path).unwrap();
        // Two paths (two tags) to one layer, one to another.
        usage.used("a1", "L");
        usage.used("a2", "L");
        usage.used("b", "M");
        usage.released("a1");
        usage.released("b");
        assert_eq!(usage.count("a2"), 1);
        assert!(usage.is_idle("M", Duration::ZERO) && !usage.is_idle("L", Duration::ZERO));
        assert_eq!(usage.busy_layers(Duration::ZERO), vec!["L".to_string()]);
        assert_eq!(
            usage.take_idle(Duration::ZERO),
            vec![("b".to_string(), "M".to_string())],
            "L is still used through a2"
        );
        assert_eq!(usage.count("b"), 0);
        // A restart keeps the counts (on disk once answered): L is
        // still in use.
        let again = Usage::open(&path).unwrap();
        assert_eq!(again.count("a2"), 1);
        assert!(again.take_idle(Duration::ZERO).is_empty());
        again.released("a2");
        assert!(
            again.take_idle(Duration::from_secs(3600)).is_empty(),
            "not idle long enough"
        );
        let mut idle = again.take_idle(Duration::ZERO);
        idle.sort();
        assert_eq!(
            idle,
            vec![
                ("a1".to_string(), "L".to_string()),
                ("a2".to_string(), "L".to_string())
            ]
        );
        // More releases than uses: never below zero.
        again.released("a2");
        assert_eq!(again.count("a2"), 0);
    }

    #[test]
    fn concurrent_changes_all_reach_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uses.json");
        let usage = Arc::new(Usage::open(&path).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let usage = usage.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        usage.used(&format!("k{t}"), "L");
                    }
                    for _ in 0..5 {
                        usage.released(&format!("k{t}"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let again = Usage::open(&path).unwrap();
        for t in 0..8 {
            assert_eq!(again.count(&format!("k{t}")), 15);
        }
    }
}
