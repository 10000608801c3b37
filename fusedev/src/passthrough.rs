//! FUSE passthrough: a backing file the kernel reads directly.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

/// A registered backing file's id, as an open reply names it. Valid while
/// its [`BackingFile`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingId(i32);

impl BackingId {
    pub(crate) fn raw(self) -> i32 {
        self.0
    }

    /// The number the kernel gave this id (for a filesystem that records
    /// it for a process taking over the connection).
    pub fn get(self) -> i32 {
        self.0
    }

    /// An id an earlier process serving this connection registered and
    /// never closed (a takeover): backing ids belong to the connection,
    /// not to a process. Valid for as long as nobody closes it; there is
    /// no [`BackingFile`] to close it.
    pub fn inherited(raw: i32) -> BackingId {
        BackingId(raw)
    }
}

/// Opens backing files on a connection that accepted passthrough.
#[derive(Debug, Clone)]
pub struct Passthrough {
    pub(crate) fuse: Arc<File>,
    /// Set once the connection is handed to another process: the ids
    /// are the connection's, and opens that process inherits use them.
    pub(crate) kept: Arc<AtomicBool>,
}

impl Passthrough {
    /// Registers `file` (opened read-only) as a backing file.
    pub fn open_backing(&self, file: &File) -> io::Result<BackingFile> {
        let id = sys::backing_open(self.fuse.as_fd(), file.as_fd())?;
        Ok(BackingFile {
            id: BackingId(id),
            fuse: self.fuse.clone(),
            kept: self.kept.clone(),
        })
    }
}

/// A registered backing file; dropping it releases the id, unless the
/// connection was handed over (then the id stays for the next process).
/// Keep it for as long as opens may name it (the kernel resolves the id
/// after the open reply is consumed).
#[derive(Debug)]
pub struct BackingFile {
    id: BackingId,
    fuse: Arc<File>,
    kept: Arc<AtomicBool>,
}

impl BackingFile {
    pub fn id(&self) -> BackingId {
        self.id
    }
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        if self.kept.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = sys::backing_close(self.fuse.as_fd(), self.id.0) {
            tracing::debug!(id = self.id.0, error = %e, "closing a backing id");
        }
    }
}
