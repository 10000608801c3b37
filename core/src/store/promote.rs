//! Promotion: a covered partial file no put is writing to (`promoting`
//! keeps new puts out) is hashed whole and, if it is what its content
//! digest says, renamed into `complete/`. Hashing and rename happen with
//! no lock held; the index changes after.
//!
//! No fsync: the store is a cache, and what a crash can cost is integrity,
//! not the bytes (they can be fetched again). A complete file from an
//! earlier run is hashed again before its first use (`verify`), so a torn
//! one is dropped, never served. Two fsyncs per file (data, directory)
//! were most of a cold start's store cost: python3's start completes ~400
//! files, ~800 flushes of the disk on the threads that inflate misses.

use std::fs::{self, File};
use std::io;

use super::Store;
use super::files::{Released, hash_range};
use super::index::{Entry, Index, State};
use super::keys::FileKey;
use crate::digest::Digest;

impl Store {
    /// Hashes a covered partial file no put is writing to and, if it is
    /// what its content digest says, makes it complete (a rename).
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
        if !already && let Err(e) = self.rename_complete(file, id, new_id) {
            if let Some((p, _)) = self.lock().partial(file) {
                p.promoting = false;
            }
            return Err(e);
        }
        let released = self.publish_complete(file, id, new_id, already);
        released.finish();
        Ok(())
    }

    /// Renames life `id`'s data file to life `new_id` of the complete
    /// file.
    fn rename_complete(&self, file: &FileKey, id: u64, new_id: u64) -> io::Result<()> {
        let (dp, _) = self.partial_paths(&file.layout, id);
        fs::rename(&dp, self.complete_path(&file.content, new_id))
    }

    /// Under the lock: the partial entry goes, and (unless a complete
    /// file was `already` there) the complete entry `new_id` takes its
    /// place. Returns what is to be closed and unlinked.
    fn publish_complete(&self, file: &FileKey, id: u64, new_id: u64, already: bool) -> Released {
        let (dp, jp) = self.partial_paths(&file.layout, id);
        let mut released = Released::default();
        released.files.extend(self.forget_file(&file.layout, id));
        released.paths.push(jp);
        let replaced = {
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
            self.install_complete(index, file, new_id, &mut released)
        };
        if let Some(old) = replaced {
            released.files.extend(self.forget_file(&file.content, old));
        }
        released
    }

    /// Under the lock: life `id` of `file`'s complete file, verified, goes
    /// in the index. A complete entry of another size (a file damaged on
    /// disk) gives way, its file to `released`; the life it had is
    /// returned, for the caller to forget its open file once the lock is
    /// released. Both ways a file becomes complete end here.
    pub(super) fn install_complete(
        &self,
        index: &mut Index,
        file: &FileKey,
        id: u64,
        released: &mut Released,
    ) -> Option<u64> {
        let replaced = index.entries.remove(&file.content).map(|old| {
            index.used -= old.charged;
            released
                .paths
                .push(self.complete_path(&file.content, old.id));
            let id = old.id;
            released.entries.push(old);
            id
        });
        index.used += file.size;
        index.entries.insert(
            file.content,
            Entry {
                id,
                size: file.size,
                charged: file.size,
                last_use: 0,
                state: State::Complete { verified: true },
            },
        );
        index.touch(&file.content);
        replaced
    }
}

/// Whether the whole of `data` is `file`'s size and hashes to its content
/// digest.
fn hashes_to_its_name(file: &FileKey, data: &File) -> io::Result<bool> {
    hashes_to(&file.content, file.size, data)
}

/// Whether the whole of `data` is `size` bytes and hashes to `content`.
fn hashes_to(content: &Digest, size: u64, data: &File) -> io::Result<bool> {
    if data.metadata()?.len() != size {
        return Ok(false);
    }
    match hash_range(data, 0, size) {
        Ok(d) => Ok(d == *content),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

impl Store {
    /// The id of `content`'s complete file of `size` bytes, hashed to its
    /// name first if an earlier run left it (no lock held while hashing);
    /// `None` if there is none, or it failed (then it is dropped).
    pub(super) fn verified_complete(&self, content: &Digest, size: u64) -> Option<u64> {
        let id = {
            let index = self.lock();
            let e = index.entries.get(content).filter(|e| e.size == size)?;
            match e.state {
                State::Complete { verified: true } => return Some(e.id),
                State::Complete { verified: false } => e.id,
                State::Partial(_) => return None,
            }
        };
        let good = File::open(self.complete_path(content, id))
            .and_then(|f| hashes_to(content, size, &f))
            .unwrap_or(false);
        let mut released = Released::default();
        {
            let mut index = self.lock();
            let e = index.entries.get_mut(content).filter(|e| e.id == id)?;
            if good {
                e.state = State::Complete { verified: true };
                return Some(id);
            }
            tracing::warn!(file = %content, "a complete file left by an earlier run does not hash to its name (torn by a crash?); dropping it");
            if let Some(old) = index.entries.remove(content) {
                index.used -= old.charged;
                released.entries.push(old);
            }
        }
        released.files.extend(self.forget_file(content, id));
        released.paths.push(self.complete_path(content, id));
        released.finish();
        None
    }
}
