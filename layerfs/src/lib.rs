//! The layer filesystem: one FUSE filesystem for the whole daemon, each
//! remote layer a top-level directory named by its layer id, served from
//! the layer's tree (metadata) and the store (content), misses fetched
//! through the [`loader::Loader`]. docs/layerfs.md traces a read.
//!
//! This file is the `Filesystem` impl: each operation decodes its inode
//! ([`inode`]) and hands off to the module that owns the concern
//! (attributes, directories, open files, the state directory, reads).

mod attr;
pub mod chunks;
mod dir;
pub mod error;
pub mod external_toc;
mod flight;
mod fs;
mod inode;
pub mod journal;
pub mod layer;
pub mod loader;
mod open_files;
pub mod planner;
mod read;
pub mod resolve;
pub mod starts;
mod state_dir;
pub mod unpack;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ringstar_core::whiteout;
use ringstar_core::{FileKind, NodeId};
use ringstar_fusedev::{
    AttrReply, ConnInfo, Ctx, DirOut, Entry, Errno, FileHandle, Filesystem, Ino, Opened, ReadOut,
    ReadResult,
};

pub use error::{AddLayerError, ChunkFailure};
pub use fs::LayerFs;
pub use layer::RemoteLayer;
pub use loader::{BackgroundConfig, Loader, LoaderConfig};
pub use state_dir::STATE_DIR;

use attr::LAYER_TTL;
use inode::Inode;
use read::{PendingRead, PendingState};
use state_dir::{read_state_file, state_file_name};

impl LayerFs {
    fn decode(&self, ino: Ino) -> Result<Inode, Errno> {
        self.inodes.decode(ino)
    }

    /// Opens regular file `node`: pins its content in the store, and
    /// serves it by passthrough when the kernel and the store allow.
    fn open_file(&self, ino: Ino, slot: u32, node: NodeId, fh: u64) -> Result<Opened, Errno> {
        let layer = self.slot_layer(slot)?;
        let n = layer.tree().get(node).ok_or(Errno::ENOENT)?;
        if n.kind() != FileKind::Reg {
            return Err(Errno::EINVAL);
        }
        let key = layer.content_key(node);
        self.loader.store.pin(&key);
        let id = self
            .open
            .open(fh, ino.0, key, || self.backing_for(&layer, node, &key));
        // A file complete by its open (predicted, say) is read through
        // passthrough, past this daemon: its start is what a record can
        // say of it (a replay predicts the rest from it).
        if id.is_some()
            && let Some(starts) = &self.loader.starts
        {
            starts.note_read(&layer, node, 0, 1);
        }
        Ok(Opened {
            fh,
            keep_cache: id.is_none(),
            backing: id,
            ..Opened::default()
        })
    }
}

impl Filesystem for LayerFs {
    fn init(&self, info: &ConnInfo) {
        if self.use_passthrough {
            *self.passthrough.lock().expect("passthrough") = info.passthrough.clone();
        }
    }

    fn lookup(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        match self.decode(parent)? {
            Inode::Root => {
                let slot = self.slot_named(name).ok_or(Errno::ENOENT)?;
                self.entry(Inode::node(slot, NodeId::ROOT))
            }
            Inode::Node {
                slot,
                node,
                whiteout: false,
            } => {
                let layer = self.slot_layer(slot)?;
                let tree = layer.tree();
                if tree.get(node).ok_or(Errno::ENOENT)?.kind() != FileKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                if node == NodeId::ROOT && name == STATE_DIR {
                    return self.entry(Inode::StateDir { slot });
                }
                // A layer never changes and its slot is never reused, so
                // its absent names can be cached as long as its entries:
                // overlayfs looks every name up in every lower layer, and
                // each container's overlay asks again.
                let Some(e) = whiteout::lookup(tree, node, name) else {
                    return Ok(Entry::negative(LAYER_TTL));
                };
                self.entry(Inode::Node {
                    slot,
                    node: e.node,
                    whiteout: e.whiteout,
                })
            }
            Inode::StateDir { slot } => {
                let layer = self.slot_layer(slot)?;
                if name == state_file_name(&layer.digest) {
                    self.entry(Inode::StateFile { slot })
                } else {
                    Err(Errno::ENOENT)
                }
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        let (attr, ttl) = self.attr_of(self.decode(ino)?)?;
        Ok(AttrReply { attr, ttl })
    }

    fn readlink(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        let Inode::Node {
            slot,
            node,
            whiteout: false,
        } = self.decode(ino)?
        else {
            return Err(Errno::EINVAL);
        };
        let layer = self.slot_layer(slot)?;
        let tree = layer.tree();
        match tree.get(node).map(|n| n.kind()) {
            Some(FileKind::Symlink) => Ok(tree
                .link_target(node)
                .unwrap_or_default()
                .as_bytes()
                .to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn open(&self, _ctx: &Ctx, ino: Ino, flags: u32) -> Result<Opened, Errno> {
        if flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32 {
            return Err(Errno::EROFS);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        match self.decode(ino)? {
            Inode::StateFile { slot } => {
                self.slot_layer(slot)?;
                Ok(Opened {
                    fh,
                    direct_io: true,
                    ..Opened::default()
                })
            }
            Inode::Node {
                slot,
                node,
                whiteout: false,
            } => self.open_file(ino, slot, node, fh),
            Inode::Node { whiteout: true, .. } => Err(Errno::EINVAL),
            _ => Err(Errno::EISDIR),
        }
    }

    fn read(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        mut out: ReadOut<'_>,
    ) -> ReadResult {
        let (slot, node) = match self.decode(ino) {
            Ok(Inode::Node {
                slot,
                node,
                whiteout: false,
            }) => (slot, node),
            Ok(Inode::StateFile { slot }) => {
                let layer = match self.slot_layer(slot) {
                    Ok(layer) => layer,
                    Err(e) => return ReadResult::Error(e),
                };
                return ReadResult::Data(read_state_file(&layer, offset, out.buf()));
            }
            Ok(_) => return ReadResult::Error(Errno::EINVAL),
            Err(e) => return ReadResult::Error(e),
        };
        let layer = match self.slot_layer(slot) {
            Ok(layer) => layer,
            Err(e) => return ReadResult::Error(e),
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        let Some(n) = layer.tree().get(node) else {
            return ReadResult::Error(Errno::ENOENT);
        };
        let size = n.size();
        if offset >= size {
            return ReadResult::Data(0);
        }
        let len = (out.buf().len() as u64).min(size - offset) as usize;
        if let Some(starts) = &self.loader.starts {
            starts.note_read(&layer, node, offset, len as u64);
        }
        match Self::reply_from_store(&layer, &self.loader, node, offset, &mut out.buf()[..len]) {
            Ok(()) => ReadResult::Data(len),
            Err(missing) => {
                let (reply, deferred) = out.defer();
                let pending = Arc::new(PendingRead {
                    layer,
                    loader: self.loader.clone(),
                    node,
                    offset,
                    len,
                    state: Mutex::new(PendingState {
                        reply: Some(reply),
                        waiting: 0,
                        got: HashMap::new(),
                        rounds: 0,
                    }),
                });
                pending.start(missing);
                ReadResult::Deferred(deferred)
            }
        }
    }

    fn release(&self, _ctx: &Ctx, _ino: Ino, fh: FileHandle) {
        if let Some(key) = self.open.release(fh.0) {
            self.loader.store.unpin(&key);
        }
    }

    fn opendir(&self, _ctx: &Ctx, ino: Ino) -> Result<Opened, Errno> {
        // The root's listing changes as layers come and go; a layer's
        // never does.
        let fixed = self.decode(ino)? != Inode::Root;
        Ok(Opened {
            keep_cache: fixed,
            cache_dir: fixed,
            ..Opened::default()
        })
    }

    fn readdir(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        let me = self.decode(ino)?;
        let (self_entry, parent_entry) = self.dots(me)?;
        if offset == 0 && !out.push_dot(OsStr::new("."), 1, &self_entry) {
            return Ok(());
        }
        if offset <= 1 && !out.push_dot(OsStr::new(".."), 2, &parent_entry) {
            return Ok(());
        }
        self.list(me, offset.max(2) - 2, out)
    }

    fn getxattr(&self, _ctx: &Ctx, ino: Ino, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        self.xattrs(self.decode(ino)?)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for (k, _) in self.xattrs(self.decode(ino)?)? {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}
