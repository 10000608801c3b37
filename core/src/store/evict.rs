//! The capacity bound: least recently used entries nobody has open or is
//! writing go, chosen under the index lock and unlinked (and unmapped)
//! after it.

use super::Store;
use super::files::Released;
use super::index::{Index, State};
use crate::digest::Digest;

impl Store {
    /// Removes least recently used entries nobody has open or is writing
    /// until the store fits its capacity. `keep` is never evicted (just
    /// written).
    pub(super) fn evict(&self, keep: Option<&Digest>) {
        let released = {
            let mut index = self.lock();
            if index.used <= self.capacity {
                return;
            }
            self.choose_victims(&mut index, keep)
        };
        for path in &released.paths {
            tracing::debug!(path = %path.display(), "evicted from the store");
        }
        self.evictions.fetch_add(
            released.paths.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        released.finish();
    }

    /// Under the lock: takes entries out of the index, oldest use first,
    /// until it fits.
    fn choose_victims(&self, index: &mut Index, keep: Option<&Digest>) -> Released {
        let mut candidates: Vec<(u64, Digest)> = index
            .entries
            .iter()
            .filter(|(k, e)| {
                !index.pins.contains_key(e.content(k)) && !e.busy() && Some(*k) != keep
            })
            .map(|(k, e)| (e.last_use, *k))
            .collect();
        candidates.sort_unstable();
        let mut released = Released::default();
        for (_, k) in candidates {
            if index.used <= self.capacity {
                break;
            }
            let Some(e) = index.entries.remove(&k) else {
                continue;
            };
            index.used -= e.charged;
            match e.state {
                State::Complete { .. } => released.paths.push(self.complete_path(&k, e.id)),
                State::Partial(_) => {
                    let (d, j) = self.partial_paths(&k, e.id);
                    released.paths.extend([j, d]);
                }
            }
            released.files.extend(self.forget_file(&k, e.id));
            released.entries.push(e);
        }
        released
    }
}
