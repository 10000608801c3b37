//! FUSE passthrough: a backing file the kernel reads directly.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::sys;

/// A registered backing file's id, as an open reply names it. Valid while
/// its [`BackingFile`] lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackingId(i32);

impl BackingId {
    pub(crate) fn raw(self) -> i32 {
        self.0
    }
}

/// Opens backing files on a connection that accepted passthrough.
#[derive(Debug, Clone)]
pub struct Passthrough {
    pub(crate) fuse: Arc<File>,
}

impl Passthrough {
    /// Registers `file` (opened read-only) as a backing file.
    pub fn open_backing(&self, file: &File) -> io::Result<BackingFile> {
        let id = sys::backing_open(self.fuse.as_fd(), file.as_fd())?;
        Ok(BackingFile {
            id: BackingId(id),
            fuse: self.fuse.clone(),
        })
    }
}

/// A registered backing file; dropping it releases the id. Keep it for as
/// long as opens may name it (the kernel resolves the id after the open
/// reply is consumed).
#[derive(Debug)]
pub struct BackingFile {
    id: BackingId,
    fuse: Arc<File>,
}

impl BackingFile {
    pub fn id(&self) -> BackingId {
        self.id
    }
}

impl Drop for BackingFile {
    fn drop(&mut self) {
        if let Err(e) = sys::backing_close(self.fuse.as_fd(), self.id.0) {
            tracing::debug!(id = self.id.0, error = %e, "closing a backing id");
        }
    }
}
