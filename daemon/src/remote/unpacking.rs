//! Complete layers unpacked for overlayfs (#18, layerfs `unpack`): once
//! every file of a layer in the mount is in the store, one thread unpacks
//! it under `ROOT/unpacked`, and the overlays of snapshots made from then
//! on read it there, at overlayfs's own speed, instead of through FUSE.
//! Containers already running keep the mount. A container on an unpacked
//! layer reads nothing through this daemon, so it keeps its files even
//! while the daemon is down.
//!
//! One thread does every unpack, so two never race for a store file's
//! metadata. A layer is unpacked once (the directory survives restarts)
//! and removed when no snapshot uses it ([`Remote::release`], and at
//! Cleanup for those a crash left).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ringstar_layerfs::RemoteLayer;
use ringstar_layerfs::unpack::Unpacked;

use super::{Remote, State, Visibility};

/// How often the thread looks for layers that became complete.
const POLL: Duration = Duration::from_millis(500);
/// How long a layer that failed to unpack waits before another try (its
/// last files may still have been on their way to the store), and how
/// many tries it gets (a layer whose TOC gives some file no digest never
/// has it complete in the store).
const RETRY: Duration = Duration::from_secs(30);
const TRIES: u32 = 3;

/// The unpacked layers and the thread's memory of failures.
#[derive(Debug)]
pub(super) struct Unpacking {
    dir: Unpacked,
    /// By layer name: when it last failed, and how many times.
    failed: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Remote {
    /// Unpacks complete layers under `dir` from now on.
    pub fn enable_unpacking(self: &Arc<Self>, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let unpacking = Unpacking {
            dir: Unpacked::open(dir)?,
            failed: Mutex::default(),
        };
        // Hard links need one filesystem.
        let store = self.fs.loader().store.root();
        if std::fs::metadata(store)?.dev() != std::fs::metadata(dir)?.dev() {
            tracing::warn!(store = %store.display(), unpacked = %dir.display(), "the store and the unpacked layers are on different filesystems: layers are not unpacked");
            return Ok(());
        }
        if self.unpacking.set(unpacking).is_err() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("unpack".into())
            .spawn(move || unpack_loop(weak))?;
        Ok(())
    }

    /// Where a new overlay reads layer `name`: its unpacked directory
    /// once there is one, else its directory in the mount.
    pub fn lower_dir(&self, name: &str) -> PathBuf {
        self.unpacked_dir(name)
            .unwrap_or_else(|| self.layer_dir(name))
    }

    /// Layer `name`'s unpacked directory, if it has one.
    pub fn unpacked_dir(&self, name: &str) -> Option<PathBuf> {
        self.unpacking.get()?.dir.path(name)
    }

    /// How many layers are unpacked.
    pub fn unpacked_count(&self) -> usize {
        self.unpacking.get().map_or(0, |u| u.dir.names().len())
    }

    /// Removes the unpacked directory of layer `name`, which no snapshot
    /// uses any more.
    pub(super) fn forget_unpacked(&self, name: &str) {
        if let Some(u) = self.unpacking.get() {
            u.dir.remove(name);
            u.failed.lock().expect("unpack failures").remove(name);
        }
    }

    /// Removes unpacked directories of layers no snapshot uses (`used`:
    /// the layer names snapshots use), as a crash may leave them.
    pub fn prune_unpacked(&self, used: &[String]) {
        let Some(u) = self.unpacking.get() else {
            return;
        };
        for name in u.dir.names() {
            // A layer in the table is one a snapshot may be given now.
            let known = self.slots.lock().expect("slots").contains_key(&name);
            if !used.contains(&name) && !known {
                tracing::info!(layer = %name, "removing an unpacked layer no snapshot uses");
                u.dir.remove(&name);
            }
        }
    }

    /// Layers in the mount, complete, not unpacked, not failed lately.
    fn to_unpack(&self, u: &Unpacking) -> Vec<(String, Arc<RemoteLayer>)> {
        let candidates: Vec<(String, Arc<RemoteLayer>)> = self
            .slots
            .lock()
            .expect("slots")
            .iter()
            .filter_map(|(name, slot)| match &slot.state {
                State::Ready(layer)
                    if slot.visibility == Visibility::Shown && layer.fully_fetched() =>
                {
                    Some((name.clone(), layer.clone()))
                }
                _ => None,
            })
            .collect();
        let due: Vec<(String, Arc<RemoteLayer>)> = {
            let failed = u.failed.lock().expect("unpack failures");
            candidates
                .into_iter()
                .filter(|(name, _)| {
                    failed
                        .get(name)
                        .is_none_or(|(at, tries)| *tries < TRIES && at.elapsed() >= RETRY)
                })
                .collect()
        };
        due.into_iter()
            .filter(|(name, _)| u.dir.path(name).is_none())
            .collect()
    }

    fn unpack_one(&self, u: &Unpacking, name: &str, layer: &Arc<RemoteLayer>) {
        let started = Instant::now();
        let store = &self.fs.loader().store;
        match u.dir.unpack(name, layer, store) {
            Ok(path) => {
                // Released while it was being unpacked, and not pulled
                // again: no snapshot can have been given it. (Pulled again,
                // the name says it is the same layer: it stays.)
                if !self.slots.lock().expect("slots").contains_key(name) {
                    u.dir.remove(name);
                    return;
                }
                tracing::info!(layer = %name, path = %path.display(), ms = started.elapsed().as_millis() as u64, "layer unpacked: new containers read it without FUSE");
            }
            Err(e) => {
                let mut failed = u.failed.lock().expect("unpack failures");
                let tries = failed.get(name).map_or(0, |(_, n)| *n) + 1;
                failed.insert(name.to_string(), (Instant::now(), tries));
                drop(failed);
                let last = if tries < TRIES {
                    ""
                } else {
                    " (no more tries)"
                };
                tracing::warn!(layer = %name, error = %e, tries, "unpacking a complete layer failed{last}; it stays served through FUSE");
            }
        }
    }
}

fn unpack_loop(remote: Weak<Remote>) {
    loop {
        std::thread::sleep(POLL);
        let Some(remote) = remote.upgrade() else {
            return;
        };
        let Some(u) = remote.unpacking.get() else {
            return;
        };
        u.dir.empty_trash();
        for (name, layer) in remote.to_unpack(u) {
            remote.unpack_one(u, &name, &layer);
        }
    }
}
