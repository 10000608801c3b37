//! Names and paths of the store's files, and hashing one through
//! `pread`.
//!
//! `complete/<content>.<id>` and `partial/<layout>.<id>.{data,idx}`:
//! `<id>` is one life of one entry, so a name is never reused.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::index::Entry;
use super::{Store, StoreError, io_at};
use crate::digest::{Digest, Hasher};

/// What the store's directories are made (and kept): only root reads the
/// cached contents of every tenant's images.
const DIR_MODE: u32 = 0o700;

/// Bytes hashed per `pread`: a fixed buffer, whatever size a layer
/// declares for its file or chunk.
const HASH_PIECE: usize = 1 << 20;

/// The digest of `len` bytes of `file` from `offset`, read in pieces
/// (no mapping: the store's bytes are never charged to the daemon's
/// memory). A file that ends first is an `UnexpectedEof` error.
pub(super) fn hash_range(file: &File, offset: u64, len: u64) -> io::Result<Digest> {
    let mut buf = vec![0u8; HASH_PIECE.min(usize::try_from(len).unwrap_or(HASH_PIECE))];
    let mut h = Hasher::new();
    let mut done = 0u64;
    while done < len {
        let n = buf
            .len()
            .min(usize::try_from(len - done).unwrap_or(buf.len()));
        file.read_exact_at(&mut buf[..n], offset + done)?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(h.finish())
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

/// Files taken out of the index (and the open-file cache) under its
/// lock, to be closed and unlinked once it is released.
#[derive(Default)]
pub(super) struct Released {
    pub(super) entries: Vec<Entry>,
    pub(super) files: Vec<Arc<File>>,
    pub(super) paths: Vec<PathBuf>,
}

impl Released {
    /// Closes and unlinks. Call with no lock held.
    pub(super) fn finish(self) {
        drop(self.entries);
        drop(self.files);
        remove_all(self.paths);
    }
}
