//! The layer filesystem: one FUSE filesystem for the whole daemon, each
//! remote layer a top-level directory named by its layer id, served from
//! the layer's tree (metadata) and the store (content), misses fetched
//! through the [`loader::Loader`].
//!
//! Inode numbers carry the layer: `slot << 32 | (node + 1)`, with the
//! high bit of the low word marking a whiteout shown as a character
//! device, and two reserved low words for the state directory and its
//! file. Slots are never reused, so an inode of a removed layer never
//! names another layer's file.

pub mod layer;
pub mod loader;
pub mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ringstar_core::store::StoreChunk;
use ringstar_core::whiteout::{self, ViewEntry};
use ringstar_core::{Digest, FileKind, NodeId};
use ringstar_fusedev::{
    AttrReply, BackingFile, ConnInfo, Ctx, DeferredRead, DirOut, Entry, Errno, FileAttr,
    FileHandle, FileType, Filesystem, Ino, Opened, Passthrough, ReadOut, ReadResult, Timestamp,
};

pub use layer::RemoteLayer;
pub use loader::{BackgroundConfig, Loader, LoaderConfig};

/// The state directory at each layer's root (snapshotter-protocol.md §6).
pub const STATE_DIR: &str = ".stargz-snapshotter";

const ROOT_INO: u64 = 1;
const WHITEOUT_BIT: u32 = 1 << 31;
const STATE_DIR_LOW: u32 = 0xFFFF_FFF0;
const STATE_FILE_LOW: u32 = 0xFFFF_FFF1;
/// Largest node index an inode can carry.
const MAX_NODES: usize = 0x7FFF_0000;

/// Layer content never changes: the kernel may cache it as long as it
/// likes (removal invalidates the layer's root entry explicitly).
const LAYER_TTL: Duration = Duration::from_secs(24 * 3600);
/// The mount root and the state files change.
const ROOT_TTL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inode {
    Root,
    Node {
        slot: u32,
        node: NodeId,
        whiteout: bool,
    },
    StateDir {
        slot: u32,
    },
    StateFile {
        slot: u32,
    },
}

/// An open regular file: its store key (pinned while open) and, when
/// served by passthrough, the backing file the kernel reads.
#[derive(Debug)]
struct OpenFile {
    key: Option<Digest>,
    ino: u64,
    /// Served by passthrough (the inode's shared backing file).
    passthrough: bool,
}

/// Open files, and each inode's io mode. The kernel fixes an inode's mode
/// while it is open: a passthrough open of an inode open in cached mode
/// fails with EIO, and so does a passthrough open with a backing file
/// other than the one the inode already uses. So while one cached open
/// lasts (a binary that started running before its file was complete,
/// say) later opens of that inode are cached too, and all passthrough
/// opens of an inode share one backing file.
#[derive(Debug, Default)]
struct OpenFiles {
    by_fh: HashMap<u64, OpenFile>,
    cached: HashMap<u64, u32>,
    passthrough: HashMap<u64, (Arc<BackingFile>, u32)>,
}

/// The filesystem.
pub struct LayerFs {
    loader: Arc<Loader>,
    layers: RwLock<Layers>,
    /// One layer shown at the mount root instead of a directory per
    /// layer (`ringstar mount`).
    single: Option<u32>,
    next_slot: AtomicU32,
    open: Mutex<OpenFiles>,
    next_fh: AtomicU64,
    passthrough: Mutex<Option<Passthrough>>,
    use_passthrough: bool,
    /// READ requests of layer files answered (by the daemon; passthrough
    /// reads never get here).
    reads: AtomicU64,
}

#[derive(Debug, Default)]
struct Layers {
    by_slot: BTreeMap<u32, Arc<RemoteLayer>>,
    by_name: BTreeMap<String, u32>,
}

impl std::fmt::Debug for LayerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFs")
            .field("single", &self.single)
            .field("loader", &self.loader)
            .finish_non_exhaustive()
    }
}

fn kind_of(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::Reg | FileKind::Hardlink => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Char => FileType::CharDevice,
        FileKind::Block => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
    }
}

/// The kernel's `new_encode_dev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

impl LayerFs {
    /// A filesystem showing each added layer as a directory of the root.
    pub fn new(loader: Arc<Loader>, passthrough: bool) -> LayerFs {
        LayerFs {
            loader,
            layers: RwLock::default(),
            single: None,
            next_slot: AtomicU32::new(1),
            open: Mutex::default(),
            next_fh: AtomicU64::new(1),
            passthrough: Mutex::new(None),
            use_passthrough: passthrough,
            reads: AtomicU64::new(0),
        }
    }

    /// A filesystem whose root is `layer`'s root.
    pub fn single(loader: Arc<Loader>, layer: Arc<RemoteLayer>, passthrough: bool) -> LayerFs {
        let mut fs = LayerFs::new(loader, passthrough);
        fs.single = Some(1);
        fs.next_slot.store(2, Ordering::Release);
        let mut l = fs.layers.write().expect("layers");
        l.by_name.insert(layer.name.clone(), 1);
        l.by_slot.insert(1, layer);
        drop(l);
        fs
    }

    pub fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    /// READ requests for layer files the daemon answered so far.
    pub fn reads_served(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Adds a layer as directory `layer.name`. Refused when the name is
    /// taken, not a single path component, or the tree too big.
    pub fn add_layer(&self, layer: Arc<RemoteLayer>) -> Result<(), AddLayerError> {
        if layer.name.is_empty()
            || layer.name.contains('/')
            || layer.name == "."
            || layer.name == ".."
        {
            return Err(AddLayerError::BadName(layer.name.clone()));
        }
        if layer.tree().len() >= MAX_NODES {
            return Err(AddLayerError::TooBig(layer.tree().len()));
        }
        let mut l = self.layers.write().expect("layers");
        if l.by_name.contains_key(&layer.name) {
            return Err(AddLayerError::Taken(layer.name.clone()));
        }
        let slot = self.next_slot.fetch_add(1, Ordering::AcqRel);
        l.by_name.insert(layer.name.clone(), slot);
        l.by_slot.insert(slot, layer);
        Ok(())
    }

    /// Removes layer `name`; its inodes answer ENOENT from now on.
    pub fn remove_layer(&self, name: &str) -> Option<Arc<RemoteLayer>> {
        let mut l = self.layers.write().expect("layers");
        let slot = l.by_name.remove(name)?;
        let layer = l.by_slot.remove(&slot)?;
        layer.mark_removed();
        Some(layer)
    }

    pub fn layer(&self, name: &str) -> Option<Arc<RemoteLayer>> {
        let l = self.layers.read().expect("layers");
        l.by_name.get(name).and_then(|s| l.by_slot.get(s)).cloned()
    }

    pub fn layer_names(&self) -> Vec<String> {
        self.layers
            .read()
            .expect("layers")
            .by_name
            .keys()
            .cloned()
            .collect()
    }

    fn slot_layer(&self, slot: u32) -> Result<Arc<RemoteLayer>, Errno> {
        self.layers
            .read()
            .expect("layers")
            .by_slot
            .get(&slot)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn encode(&self, i: Inode) -> Ino {
        Ino(match i {
            Inode::Root => ROOT_INO,
            Inode::Node { slot, node, .. } if Some(slot) == self.single && node == NodeId::ROOT => {
                ROOT_INO
            }
            Inode::Node {
                slot,
                node,
                whiteout,
            } => {
                let low = (node.0 + 1) | if whiteout { WHITEOUT_BIT } else { 0 };
                (u64::from(slot) << 32) | u64::from(low)
            }
            Inode::StateDir { slot } => (u64::from(slot) << 32) | u64::from(STATE_DIR_LOW),
            Inode::StateFile { slot } => (u64::from(slot) << 32) | u64::from(STATE_FILE_LOW),
        })
    }

    fn decode(&self, ino: Ino) -> Result<Inode, Errno> {
        if ino.0 == ROOT_INO {
            return Ok(match self.single {
                Some(slot) => Inode::Node {
                    slot,
                    node: NodeId::ROOT,
                    whiteout: false,
                },
                None => Inode::Root,
            });
        }
        let slot = (ino.0 >> 32) as u32;
        let low = ino.0 as u32;
        if slot == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(match low {
            STATE_DIR_LOW => Inode::StateDir { slot },
            STATE_FILE_LOW => Inode::StateFile { slot },
            0 => return Err(Errno::ENOENT),
            _ => Inode::Node {
                slot,
                node: NodeId((low & !WHITEOUT_BIT) - 1),
                whiteout: low & WHITEOUT_BIT != 0,
            },
        })
    }

    fn root_attr(&self) -> FileAttr {
        let mut a = FileAttr::new(Ino(ROOT_INO), FileType::Directory, 0, 0o555);
        a.nlink = 2;
        a
    }

    fn node_attr(
        &self,
        slot: u32,
        layer: &RemoteLayer,
        node: NodeId,
        whiteout: bool,
    ) -> Result<FileAttr, Errno> {
        let tree = layer.tree();
        let n = tree.get(node).ok_or(Errno::ENOENT)?;
        let ino = self.encode(Inode::Node {
            slot,
            node,
            whiteout,
        });
        let mtime = Timestamp {
            secs: n.mtime(),
            nsecs: 0,
        };
        if whiteout {
            // An overlayfs whiteout: char device 0:0, root's, one link.
            let mut a = FileAttr::new(ino, FileType::CharDevice, 0, 0);
            a.mtime = mtime;
            a.ctime = mtime;
            a.atime = mtime;
            return Ok(a);
        }
        let kind = n.kind();
        let size = match kind {
            FileKind::Symlink => tree.link_target(node).map_or(0, |t| t.len() as u64),
            _ => n.size(),
        };
        let mut a = FileAttr::new(ino, kind_of(kind), size, n.mode() & 0o7777);
        a.blocks = size.div_ceil(4096) * 8;
        a.nlink = n.nlink().max(1);
        a.uid = n.uid();
        a.gid = n.gid();
        a.mtime = mtime;
        a.ctime = mtime;
        a.atime = mtime;
        if matches!(kind, FileKind::Char | FileKind::Block) {
            let (major, minor) = n.rdev();
            a.rdev = encode_dev(major, minor);
        }
        Ok(a)
    }

    fn state_dir_attr(&self, slot: u32) -> FileAttr {
        let mut a = FileAttr::new(
            self.encode(Inode::StateDir { slot }),
            FileType::Directory,
            0,
            0o500,
        );
        a.nlink = 2;
        a
    }

    fn state_file_attr(&self, slot: u32, layer: &RemoteLayer) -> FileAttr {
        FileAttr::new(
            self.encode(Inode::StateFile { slot }),
            FileType::RegularFile,
            layer.state_json().len() as u64,
            0o400,
        )
    }

    fn attr_of(&self, i: Inode) -> Result<(FileAttr, Duration), Errno> {
        Ok(match i {
            Inode::Root => (self.root_attr(), ROOT_TTL),
            Inode::Node {
                slot,
                node,
                whiteout,
            } => {
                let layer = self.slot_layer(slot)?;
                (self.node_attr(slot, &layer, node, whiteout)?, LAYER_TTL)
            }
            Inode::StateDir { slot } => {
                self.slot_layer(slot)?;
                (self.state_dir_attr(slot), ROOT_TTL)
            }
            Inode::StateFile { slot } => {
                let layer = self.slot_layer(slot)?;
                (self.state_file_attr(slot, &layer), Duration::ZERO)
            }
        })
    }

    fn entry(&self, i: Inode) -> Result<Entry, Errno> {
        let (attr, ttl) = self.attr_of(i)?;
        Ok(Entry {
            attr,
            generation: 0,
            entry_ttl: ttl,
            attr_ttl: ttl,
        })
    }

    fn view_inode(slot: u32, e: &ViewEntry<'_>) -> Inode {
        Inode::Node {
            slot,
            node: e.node,
            whiteout: e.whiteout,
        }
    }

    fn reply_from_store(
        layer: &RemoteLayer,
        loader: &Loader,
        node: NodeId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Vec<usize>> {
        let file = layer.store_key(node).ok_or_else(|| vec![usize::MAX])?;
        let (first, chunks) = read_chunks(layer, node, offset, buf.len() as u64)?;
        loader
            .store
            .read(&file, &chunks, offset, buf)
            .map_err(|missing| missing.into_iter().map(|m| first + m).collect())
    }
}

/// Why a layer cannot be shown in the mount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddLayerError {
    #[error("bad layer name {0:?}")]
    BadName(String),
    #[error("layer has too many entries ({0})")]
    TooBig(usize),
    #[error("layer {0:?} is already mounted")]
    Taken(String),
}

/// The store's view of the chunks of `node` that `[offset, offset+len)`
/// touches, and the index of the first. A chunk that cannot be verified
/// is reported missing with index `usize::MAX` (the read fails).
fn read_chunks(
    layer: &RemoteLayer,
    node: NodeId,
    offset: u64,
    len: u64,
) -> Result<(usize, Vec<StoreChunk>), Vec<usize>> {
    let tree = layer.tree();
    let chunks = tree.chunks(node);
    let first = chunks.partition_point(|c| c.chunk_offset + c.size <= offset);
    let end = offset + len;
    let mut out = Vec::new();
    for c in &chunks[first..] {
        if c.chunk_offset >= end {
            break;
        }
        out.push(layer.store_chunk(node, c).ok_or_else(|| vec![usize::MAX])?);
    }
    Ok((first, out))
}

/// A read waiting for chunks: replies once every chunk it touches is in
/// (from the fetch's own bytes, or the store), or fails on the first
/// chunk that cannot be had.
struct PendingRead {
    layer: Arc<RemoteLayer>,
    loader: Arc<Loader>,
    node: NodeId,
    offset: u64,
    len: usize,
    state: Mutex<PendingState>,
}

struct PendingState {
    reply: Option<DeferredRead>,
    waiting: usize,
    /// Chunk index (in the file) → its bytes, as fetched.
    got: HashMap<usize, Arc<Vec<u8>>>,
    rounds: u32,
}

impl PendingRead {
    fn start(self: &Arc<Self>, missing: Vec<usize>) {
        if missing.contains(&usize::MAX) {
            tracing::warn!(layer = %self.layer.digest, node = self.node.0, "a chunk has no digest to verify it by (or is too big); answering EIO");
            if let Some(r) = self.state.lock().expect("pending").reply.take() {
                r.error(Errno::EIO);
            }
            return;
        }
        self.state.lock().expect("pending").waiting += missing.len();
        for index in missing {
            let me = self.clone();
            self.loader.load(
                &self.layer,
                self.node,
                index,
                Box::new(move |r| me.arrive(index, r)),
            );
        }
    }

    fn arrive(self: &Arc<Self>, index: usize, r: Result<Arc<Vec<u8>>, loader::ChunkFailure>) {
        let mut st = self.state.lock().expect("pending");
        match r {
            Err(_) => {
                if let Some(reply) = st.reply.take() {
                    reply.error(Errno::EIO);
                }
            }
            Ok(bytes) => {
                st.got.insert(index, bytes);
                st.waiting -= 1;
                if st.waiting == 0 && st.reply.is_some() {
                    drop(st);
                    self.assemble();
                }
            }
        }
    }

    /// Builds the reply from fetched chunks and the store; chunks that
    /// left the store meanwhile are loaded again (a few rounds at most).
    fn assemble(self: &Arc<Self>) {
        let mut buf = vec![0u8; self.len];
        let tree = self.layer.tree();
        let chunks = tree.chunks(self.node);
        let end = self.offset + self.len as u64;
        let mut missing = Vec::new();
        let mut st = self.state.lock().expect("pending");
        let first = chunks.partition_point(|c| c.chunk_offset + c.size <= self.offset);
        for (i, c) in chunks.iter().enumerate().skip(first) {
            if c.chunk_offset >= end {
                break;
            }
            let lo = c.chunk_offset.max(self.offset);
            let hi = (c.chunk_offset + c.size).min(end);
            let dst = &mut buf[(lo - self.offset) as usize..(hi - self.offset) as usize];
            if let Some(bytes) = st.got.get(&i) {
                dst.copy_from_slice(
                    &bytes[(lo - c.chunk_offset) as usize..(hi - c.chunk_offset) as usize],
                );
            } else if LayerFs::reply_from_store(&self.layer, &self.loader, self.node, lo, dst)
                .is_err()
            {
                missing.push(i);
            }
        }
        if missing.is_empty() {
            if let Some(reply) = st.reply.take() {
                reply.reply(&buf);
            }
            return;
        }
        st.rounds += 1;
        if st.rounds > 3 {
            tracing::warn!(layer = %self.layer.digest, "chunks keep leaving the store; answering EIO");
            if let Some(reply) = st.reply.take() {
                reply.error(Errno::EIO);
            }
            return;
        }
        drop(st);
        self.start(missing);
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
                let slot = *self
                    .layers
                    .read()
                    .expect("layers")
                    .by_name
                    .get(name)
                    .ok_or(Errno::ENOENT)?;
                self.entry(Inode::Node {
                    slot,
                    node: NodeId::ROOT,
                    whiteout: false,
                })
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
                let e = whiteout::lookup(tree, node, name).ok_or(Errno::ENOENT)?;
                self.entry(Self::view_inode(slot, &e))
            }
            Inode::StateDir { slot } => {
                let layer = self.slot_layer(slot)?;
                if name == format!("{}.json", layer.digest) {
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
        match self.decode(ino)? {
            Inode::Node {
                slot,
                node,
                whiteout: false,
            } => {
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
            } => {
                let layer = self.slot_layer(slot)?;
                let n = layer.tree().get(node).ok_or(Errno::ENOENT)?;
                if n.kind() != FileKind::Reg {
                    return Err(Errno::EINVAL);
                }
                let key = layer.content_key(node);
                self.loader.store.pin(&key);
                let mut open = self.open.lock().expect("open files");
                let id = if open.cached.contains_key(&ino.0) {
                    None
                } else if let Some((b, n)) = open.passthrough.get_mut(&ino.0) {
                    *n += 1;
                    Some(b.id())
                } else if let Some(b) = self.backing_for(&layer, node, &key) {
                    let id = b.id();
                    open.passthrough.insert(ino.0, (Arc::new(b), 1));
                    Some(id)
                } else {
                    None
                };
                if id.is_none() {
                    *open.cached.entry(ino.0).or_default() += 1;
                }
                open.by_fh.insert(
                    fh,
                    OpenFile {
                        key: Some(key),
                        ino: ino.0,
                        passthrough: id.is_some(),
                    },
                );
                drop(open);
                Ok(Opened {
                    fh,
                    keep_cache: id.is_none(),
                    backing: id,
                    ..Opened::default()
                })
            }
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
                let Ok(layer) = self.slot_layer(slot) else {
                    return ReadResult::Error(Errno::ENOENT);
                };
                let json = layer.state_json();
                let from = (offset as usize).min(json.len());
                let n = (json.len() - from).min(out.buf().len());
                out.buf()[..n].copy_from_slice(&json[from..from + n]);
                return ReadResult::Data(n);
            }
            Ok(_) => return ReadResult::Error(Errno::EINVAL),
            Err(e) => return ReadResult::Error(e),
        };
        let Ok(layer) = self.slot_layer(slot) else {
            return ReadResult::Error(Errno::ENOENT);
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
        let mut open = self.open.lock().expect("open files");
        let Some(f) = open.by_fh.remove(&fh.0) else {
            return;
        };
        let counts = if f.passthrough {
            open.passthrough.get_mut(&f.ino).map(|(_, n)| n)
        } else {
            open.cached.get_mut(&f.ino)
        };
        if let Some(n) = counts {
            *n -= 1;
            if *n == 0 {
                open.cached.remove(&f.ino);
                // The kernel holds its own reference to the backing file
                // for as long as it needs it.
                open.passthrough.remove(&f.ino);
            }
        }
        drop(open);
        if let Some(key) = f.key {
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
        let (self_entry, parent_entry) = match me {
            Inode::Root => (self.entry(Inode::Root)?, self.entry(Inode::Root)?),
            Inode::Node {
                slot,
                node,
                whiteout: false,
            } => {
                let layer = self.slot_layer(slot)?;
                let n = layer.tree().get(node).ok_or(Errno::ENOENT)?;
                if n.kind() != FileKind::Dir {
                    return Err(Errno::ENOTDIR);
                }
                let parent = if node == NodeId::ROOT {
                    Inode::Root
                } else {
                    Inode::Node {
                        slot,
                        node: n.parent(),
                        whiteout: false,
                    }
                };
                (self.entry(me)?, self.entry(parent)?)
            }
            Inode::StateDir { slot } => (
                self.entry(me)?,
                self.entry(Inode::Node {
                    slot,
                    node: NodeId::ROOT,
                    whiteout: false,
                })?,
            ),
            _ => return Err(Errno::ENOTDIR),
        };
        if offset == 0 && !out.push_dot(OsStr::new("."), 1, &self_entry) {
            return Ok(());
        }
        if offset <= 1 && !out.push_dot(OsStr::new(".."), 2, &parent_entry) {
            return Ok(());
        }
        let from = offset.max(2) - 2;
        match me {
            Inode::Root => {
                let layers: Vec<(u32, String)> = {
                    let l = self.layers.read().expect("layers");
                    l.by_name.iter().map(|(n, s)| (*s, n.clone())).collect()
                };
                let mut layers = layers;
                layers.sort_unstable();
                for (slot, name) in layers {
                    if u64::from(slot) <= from {
                        continue;
                    }
                    let Ok(e) = self.entry(Inode::Node {
                        slot,
                        node: NodeId::ROOT,
                        whiteout: false,
                    }) else {
                        continue;
                    };
                    if !out.push(OsStr::new(&name), u64::from(slot) + 2, &e) {
                        break;
                    }
                }
            }
            Inode::Node { slot, node, .. } => {
                let layer = self.slot_layer(slot)?;
                let tree = layer.tree();
                for (next, e) in whiteout::entries_from(tree, node, from as usize) {
                    let attr = self.node_attr(slot, &layer, e.node, e.whiteout)?;
                    let entry = Entry {
                        attr,
                        generation: 0,
                        entry_ttl: LAYER_TTL,
                        attr_ttl: LAYER_TTL,
                    };
                    if !out.push(OsStr::new(e.name), next as u64 + 2, &entry) {
                        break;
                    }
                }
            }
            Inode::StateDir { slot } => {
                if from == 0 {
                    let layer = self.slot_layer(slot)?;
                    let e = self.entry(Inode::StateFile { slot })?;
                    let _ = out.push(OsStr::new(&format!("{}.json", layer.digest)), 3, &e);
                }
            }
            Inode::StateFile { .. } => {}
        }
        Ok(())
    }

    fn getxattr(&self, _ctx: &Ctx, ino: Ino, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let name = name.to_str().ok_or(Errno::ENODATA)?;
        self.xattrs(ino)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for (k, _) in self.xattrs(ino)? {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}

impl LayerFs {
    fn xattrs(&self, ino: Ino) -> Result<Vec<(String, Vec<u8>)>, Errno> {
        match self.decode(ino)? {
            Inode::Node {
                slot,
                node,
                whiteout,
            } => {
                let layer = self.slot_layer(slot)?;
                let tree = layer.tree();
                tree.get(node).ok_or(Errno::ENOENT)?;
                let view = ViewEntry {
                    name: "",
                    node,
                    whiteout,
                };
                Ok(whiteout::xattrs(tree, view)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A passthrough backing file for `node` when the kernel offers
    /// passthrough and the store holds the whole file.
    fn backing_for(&self, layer: &RemoteLayer, node: NodeId, key: &Digest) -> Option<BackingFile> {
        let pt = self.passthrough.lock().expect("passthrough").clone()?;
        let size = layer.tree().node(node).size();
        let file = self.loader.store.open_complete(key, size)?;
        match pt.open_backing(&file) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(error = %e, "passthrough refused; serving reads");
                None
            }
        }
    }
}
