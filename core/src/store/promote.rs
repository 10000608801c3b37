//! Promotion: a covered partial file no put is writing to (`promoting`
//! keeps new puts out) is hashed whole and, if it is what its content
//! digest says, synced and renamed into `complete/`. Hashing, fsync and
//! rename happen with no lock held; the index changes after.

use std::fs::{self, File};
use std::io;

use super::Store;
use super::files::{Released, map};
use super::index::{Entry, State};
use super::keys::FileKey;
use crate::digest::Hasher;

impl Store {
    /// Hashes a covered partial file no put is writing to and, if it is
    /// what its content digest says, makes it complete (sync, rename, sync
    /// the directory).
    pub(super) fn promote(&self, file: &FileKey, id: u64, data: &File) -> io::Result<()> {
        if !hashes_to_its_name(file, data)? {
            tracing::warn!(file = %file.content, "a file's verified chunks do not hash to its digest; keeping it partial");
            if let Some((p, _)) = self.lock().partial(file) {
                p.promoting = false;
                p.mismatched = true;
            }
            return Ok(());
        }
        // A complete file of the same content and size may be there
        // already (another layout got there first): keep it.
        let (already, new_id) = {
            let mut index = self.lock();
            (index.complete(file).is_some(), index.new_id())
        };
        if !already && let Err(e) = self.rename_complete(file, id, new_id, data) {
            if let Some((p, _)) = self.lock().partial(file) {
                p.promoting = false;
            }
            return Err(e);
        }
        let released = self.publish_complete(file, id, new_id, already);
        released.finish();
        Ok(())
    }

    /// Syncs life `id`'s data file and renames it to life `new_id` of the
    /// complete file, then syncs the directory.
    fn rename_complete(&self, file: &FileKey, id: u64, new_id: u64, data: &File) -> io::Result<()> {
        let (dp, _) = self.partial_paths(&file.layout, id);
        let target = self.complete_path(&file.content, new_id);
        data.sync_all()?;
        fs::rename(&dp, &target)?;
        File::open(self.root.join("complete"))?.sync_all()
    }

    /// Under the lock: the partial entry goes, and (unless a complete
    /// file was `already` there) the complete entry `new_id` takes its
    /// place. Returns what is to be closed and unlinked.
    fn publish_complete(&self, file: &FileKey, id: u64, new_id: u64, already: bool) -> Released {
        let (dp, jp) = self.partial_paths(&file.layout, id);
        let mut released = Released::default();
        released.maps.extend(self.forget_mapping(&file.layout, id));
        released.paths.push(jp);
        let mut guard = self.lock();
        let index = &mut *guard;
        if let Some(old) = index.entries.remove(&file.layout) {
            index.used -= old.charged;
            released.entries.push(old);
        }
        if already {
            released.paths.push(dp);
            return released;
        }
        // A complete entry of another size (a file damaged on disk) gives
        // way to the one just proven.
        if let Some(old) = index.entries.remove(&file.content) {
            index.used -= old.charged;
            released
                .paths
                .push(self.complete_path(&file.content, old.id));
            released.entries.push(old);
        }
        index.used += file.size;
        index.entries.insert(
            file.content,
            Entry {
                id: new_id,
                size: file.size,
                charged: file.size,
                last_use: 0,
                state: State::Complete,
            },
        );
        index.touch(&file.content);
        released
    }
}

/// Whether the whole of `data` is `file`'s size and hashes to its content
/// digest.
fn hashes_to_its_name(file: &FileKey, data: &File) -> io::Result<bool> {
    let m = map(data)?;
    Ok(m.len() as u64 == file.size && {
        let mut h = Hasher::new();
        h.update(&m);
        h.finish() == file.content
    })
}
