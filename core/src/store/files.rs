//! Names and paths of the store's files, and mapping one for reading.
//!
//! `complete/<content>.<id>` and `partial/<layout>.<id>.{data,idx}`:
//! `<id>` is one life of one entry, so a name is never reused.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use memmap2::Mmap;

use super::index::Entry;
use super::{Store, StoreError, io_at};
use crate::digest::Digest;

/// What the store's directories are made (and kept): only root reads the
/// cached contents of every tenant's images.
const DIR_MODE: u32 = 0o700;

/// Maps a cache file for reading.
pub(super) fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: the store's files are written only through this store, and
    // only at spans whose bytes every writer agrees on (a layout tiles its
    // file; puts are verified), so no byte a reader was told is verified
    // changes under it; no file is ever truncated while the store runs
    // (eviction unlinks, which keeps a mapped inode alive); reads are
    // bounds-checked against the map's own length, so a file shorter than
    // expected cannot fault.
    unsafe { Mmap::map(file) }
}

/// `<64 hex>.<id>` and the rest of the name after it.
pub(super) fn parse_name(name: &str) -> Option<(Digest, u64, &str)> {
    let (hex_part, rest) = name.split_at_checked(64)?;
    let rest = rest.strip_prefix('.')?;
    let (id, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut bytes).ok()?;
    Some((Digest(bytes), id.parse().ok()?, tail))
}

/// Creates `dir` if needed and gives it mode 0700, whatever it had.
pub(super) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(io_at(dir))
}

/// Removes files nobody else can be using (their names are unique to a
/// life that is over), ignoring errors: a leftover is cleaned at the next
/// start.
pub(super) fn remove_all(paths: impl IntoIterator<Item = PathBuf>) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

impl Store {
    /// The data file and journal of life `id` of a partial entry.
    pub(super) fn partial_paths(&self, layout: &Digest, id: u64) -> (PathBuf, PathBuf) {
        let dir = self.root.join("partial");
        let base = format!("{}.{id}", layout.hex());
        (
            dir.join(format!("{base}.data")),
            dir.join(format!("{base}.idx")),
        )
    }

    pub(super) fn complete_path(&self, content: &Digest, id: u64) -> PathBuf {
        self.root
            .join("complete")
            .join(format!("{}.{id}", content.hex()))
    }
}

/// Files and mappings taken out of the index under its lock, to be
/// closed, unmapped and unlinked once it is released.
#[derive(Default)]
pub(super) struct Released {
    pub(super) entries: Vec<Entry>,
    pub(super) maps: Vec<Arc<Mmap>>,
    pub(super) paths: Vec<PathBuf>,
}

impl Released {
    /// Closes, unmaps and unlinks. Call with no lock held.
    pub(super) fn finish(self) {
        drop(self.entries);
        drop(self.maps);
        remove_all(self.paths);
    }
}
