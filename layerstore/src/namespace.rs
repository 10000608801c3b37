//! The store's mount: containers/storage's additional layer store layout
//! (`docs/podman.md`), served over FUSE.
//!
//! ```text
//! MOUNTPOINT/<base64(reference)>/<layer digest>/
//!     diff  -> ROOT/fuse/<layer>   the layer's tree, in the layer plane
//!     info                         the layer's JSON for containers/storage
//!     blob                         the compressed blob, read by range
//!     use                          never there: creating it is a use
//! ```
//!
//! Only lookups build this tree; listings are empty. A lookup of `diff`,
//! `info` or `blob` offers the layer: its image's manifest and config
//! say what it is, and the layer plane resolves it (footer and TOC,
//! verified against the manifest's TOC digest) and shows it. A layer
//! that is not eStargz (or cannot be had) is not there (ENOENT), and
//! containers/storage pulls it normally. Creating `use` counts a use;
//! removing the layer's directory counts a release; both answer ENOENT,
//! as containers/storage expects of a store that counts.
//!
//! `diff` is a symlink into the layer plane's one mount, where the
//! snapshotter serves its layers too: the same data plane, inode
//! numbers, page cache and passthrough. Lookups here wait for the
//! registry (the first lookup of a layer resolves it); this mount has
//! threads of its own, so the layers' reads never wait behind them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use ringstar_core::Digest;
use ringstar_daemon::remote::Remote;
use ringstar_fetcher::{BlobLocation, Fetcher};
use ringstar_fusedev::{
    AttrReply, Ctx, DirOut, Entry, Errno, FileAttr, FileHandle, FileType, Filesystem, Ino, Opened,
    ReadOut, ReadResult,
};
use ringstar_layerfs::RemoteLayer;

use crate::catalog::{Catalog, LayerEntry};
use crate::usage::Usage;

/// How long the kernel keeps a name or attributes: short, so a layer
/// released meanwhile is looked up (and served) again.
const TTL: Duration = Duration::from_secs(1);

/// Names the kernel may hold at once before new ones are refused (each
/// a few hundred bytes; forgotten names are freed).
const MAX_NODES: usize = 1 << 20;

/// `O_ACCMODE` and `O_RDONLY`: an open for writing is refused.
const ACCESS_MODE: u32 = 0o3;
const O_RDONLY: u32 = 0;

#[derive(Debug, Clone)]
enum Node {
    /// `<base64(reference)>`
    Image {
        reference: String,
    },
    /// `<base64(reference)>/<digest>`
    Layer {
        reference: String,
        digest: Digest,
    },
    Info {
        bytes: Arc<[u8]>,
    },
    Blob {
        location: BlobLocation,
        size: u64,
    },
    Diff {
        entry: Arc<LayerEntry>,
        target: Arc<[u8]>,
    },
}

/// A node and the kernel's references to it (lookups not forgotten).
#[derive(Debug)]
struct Slot {
    node: Node,
    parent: u64,
    name: String,
    lookups: u64,
}

/// The names the kernel holds: a node lives from its first lookup to its
/// last FORGET (numbers are never reused).
#[derive(Debug)]
struct Nodes {
    by_ino: HashMap<u64, Slot>,
    by_name: HashMap<(u64, String), u64>,
    next: u64,
}

impl Default for Nodes {
    fn default() -> Nodes {
        Nodes {
            by_ino: HashMap::new(),
            by_name: HashMap::new(),
            next: 2,
        }
    }
}

/// The additional layer store's filesystem.
#[derive(Debug)]
pub struct Namespace {
    remote: Arc<Remote>,
    catalog: Arc<Catalog>,
    usage: Arc<Usage>,
    fetcher: Fetcher,
    nodes: RwLock<Nodes>,
}

impl Namespace {
    pub fn new(
        remote: Arc<Remote>,
        catalog: Arc<Catalog>,
        usage: Arc<Usage>,
        fetcher: Fetcher,
    ) -> Namespace {
        Namespace {
            remote,
            catalog,
            usage,
            fetcher,
            nodes: RwLock::default(),
        }
    }

    fn node(&self, ino: Ino) -> Result<Node, Errno> {
        let nodes = self.nodes.read().expect("nodes");
        nodes
            .by_ino
            .get(&ino.0)
            .map(|s| s.node.clone())
            .ok_or(Errno::ENOENT)
    }

    /// The inode of `name` under `parent`, now holding `node` (a name the
    /// kernel holds keeps its number; what it holds is refreshed), with
    /// one more lookup: the caller answers with its entry.
    fn intern(&self, parent: Ino, name: &str, node: Node) -> Result<Ino, Errno> {
        let mut nodes = self.nodes.write().expect("nodes");
        let key = (parent.0, name.to_string());
        if let Some(&ino) = nodes.by_name.get(&key)
            && let Some(slot) = nodes.by_ino.get_mut(&ino)
        {
            slot.node = node;
            slot.lookups += 1;
            return Ok(Ino(ino));
        }
        if nodes.by_ino.len() >= MAX_NODES {
            tracing::warn!(
                limit = MAX_NODES,
                "the kernel holds too many store names; refusing new ones"
            );
            return Err(Errno::EIO);
        }
        let ino = nodes.next;
        nodes.next += 1;
        let slot = Slot {
            node,
            parent: parent.0,
            name: name.to_string(),
            lookups: 1,
        };
        nodes.by_ino.insert(ino, slot);
        nodes.by_name.insert(key, ino);
        Ok(Ino(ino))
    }

    fn attr(&self, ino: Ino, node: Option<&Node>) -> FileAttr {
        let (kind, size, perm) = match node {
            None | Some(Node::Image { .. } | Node::Layer { .. }) => (FileType::Directory, 0, 0o755),
            Some(Node::Info { bytes }) => (FileType::RegularFile, bytes.len() as u64, 0o444),
            Some(Node::Blob { size, .. }) => (FileType::RegularFile, *size, 0o444),
            Some(Node::Diff { target, .. }) => (FileType::Symlink, target.len() as u64, 0o777),
        };
        let mut attr = FileAttr::new(ino, kind, size, perm);
        if kind == FileType::Directory {
            attr.nlink = 2;
        }
        attr
    }

    fn entry(&self, ino: Ino, node: &Node) -> Entry {
        Entry {
            attr: self.attr(ino, Some(node)),
            generation: 0,
            entry_ttl: TTL,
            attr_ttl: TTL,
        }
    }

    /// Offers layer `digest` of image `reference`: known, resolved,
    /// verified and shown in the layer plane. ENOENT when it is not
    /// offered (Podman pulls it), with a log line saying why.
    fn offer(
        &self,
        reference: &str,
        digest: &Digest,
    ) -> Result<(Arc<LayerEntry>, Arc<RemoteLayer>), Errno> {
        let entry = self.catalog.entry(reference, digest).map_err(|e| {
            tracing::info!(reference, layer = %digest, reason = %e, "layer not offered");
            Errno::ENOENT
        })?;
        let source = entry.source().map_err(|_| Errno::ENOENT)?;
        // Podman asks about the image's layers one after another:
        // resolve the others meanwhile (checked when each is asked for).
        for sibling in self.catalog.siblings(reference, digest) {
            if let Ok(s) = sibling.source() {
                self.remote
                    .preresolve(ringstar_layerfs::resolve::LayerSource {
                        toc_digest: None,
                        ..s
                    });
            }
        }
        let layer = self.remote.check_one(&source).map_err(|e| {
            if e.is_not_estargz() {
                tracing::info!(reference, layer = %digest, "not eStargz: not offered, Podman pulls it");
            } else {
                tracing::warn!(reference, layer = %digest, reason = %e, "layer not offered");
            }
            Errno::ENOENT
        })?;
        self.catalog.keep(&entry);
        Ok((entry, layer))
    }

    fn lookup_root(&self, name: &str) -> Result<Entry, Errno> {
        // A reference with a `/` in its base64 would be two components:
        // such a name never gets here, and its lookup fails (Podman pulls).
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(name)
            .map_err(|_| Errno::ENOENT)?;
        let reference = String::from_utf8(bytes).map_err(|_| Errno::ENOENT)?;
        if reference.parse::<ringstar_fetcher::Reference>().is_err() {
            return Err(Errno::ENOENT);
        }
        let node = Node::Image { reference };
        let ino = self.intern(Ino::ROOT, name, node.clone())?;
        Ok(self.entry(ino, &node))
    }

    fn lookup_layer_file(
        &self,
        parent: Ino,
        reference: &str,
        digest: &Digest,
        name: &str,
    ) -> Result<Entry, Errno> {
        if !matches!(name, "diff" | "info" | "blob") {
            return Err(Errno::ENOENT);
        }
        let (entry, layer) = self.offer(reference, digest)?;
        let node = match name {
            "diff" => Node::Diff {
                target: self.diff_target(&layer),
                entry,
            },
            "info" => Node::Info {
                bytes: entry.info.to_json().into(),
            },
            _ => Node::Blob {
                location: layer.location.clone(),
                size: layer.blob_size,
            },
        };
        let ino = self.intern(parent, name, node.clone())?;
        Ok(self.entry(ino, &node))
    }

    fn diff_target(&self, layer: &RemoteLayer) -> Arc<[u8]> {
        use std::os::unix::ffi::OsStrExt;
        self.remote
            .layer_dir(&layer.name)
            .as_os_str()
            .as_bytes()
            .into()
    }

    /// READ of `blob`: the range from the registry, answered when it
    /// arrives (the data-plane thread goes on meanwhile).
    fn read_blob(
        &self,
        location: &BlobLocation,
        size: u64,
        offset: u64,
        out: ReadOut<'_>,
    ) -> ReadResult {
        if offset >= size {
            return ReadResult::Data(0);
        }
        let (reply, token) = out.defer();
        let len = (size - offset).min(reply.max_len() as u64);
        self.fetcher
            .read_range_then(location, offset, len, move |r| match r {
                Ok(bytes) if bytes.len() as u64 == len => reply.reply(&bytes),
                Ok(bytes) => {
                    tracing::warn!(offset, want = len, got = bytes.len(), "short blob read");
                    reply.error(Errno::EIO);
                }
                Err(e) => {
                    tracing::warn!(offset, error = %e, "blob read failed");
                    reply.error(Errno::EIO);
                }
            });
        ReadResult::Deferred(token)
    }
}

impl Filesystem for Namespace {
    fn forget(&self, ino: Ino, nlookup: u64) {
        let mut nodes = self.nodes.write().expect("nodes");
        let Some(slot) = nodes.by_ino.get_mut(&ino.0) else {
            return;
        };
        slot.lookups = slot.lookups.saturating_sub(nlookup);
        if slot.lookups == 0
            && let Some(slot) = nodes.by_ino.remove(&ino.0)
        {
            nodes.by_name.remove(&(slot.parent, slot.name));
        }
    }

    fn lookup(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        if parent == Ino::ROOT {
            return self.lookup_root(name);
        }
        match self.node(parent)? {
            Node::Image { reference } => {
                let digest: Digest = name.parse().map_err(|_| Errno::ENOENT)?;
                let node = Node::Layer { reference, digest };
                let ino = self.intern(parent, name, node.clone())?;
                Ok(self.entry(ino, &node))
            }
            Node::Layer { reference, digest } => {
                self.lookup_layer_file(parent, &reference, &digest, name)
            }
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        let node = if ino == Ino::ROOT {
            None
        } else {
            Some(self.node(ino)?)
        };
        Ok(AttrReply {
            attr: self.attr(ino, node.as_ref()),
            ttl: TTL,
        })
    }

    /// The layer's directory in the layer plane, shown again first if it
    /// was released meanwhile.
    fn readlink(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        let Node::Diff { entry, target } = self.node(ino)? else {
            return Err(Errno::EINVAL);
        };
        let source = entry.source().map_err(|_| Errno::EIO)?;
        match self.remote.check_one(&source) {
            Ok(_) => Ok(target.to_vec()),
            Err(e) => {
                tracing::warn!(layer = %entry.digest, reason = %e, "cannot serve a layer containers/storage uses");
                Err(Errno::EIO)
            }
        }
    }

    fn open(&self, _ctx: &Ctx, ino: Ino, flags: u32) -> Result<Opened, Errno> {
        if flags & ACCESS_MODE != O_RDONLY {
            return Err(Errno::EROFS);
        }
        match self.node(ino)? {
            Node::Info { .. } | Node::Blob { .. } => Ok(Opened {
                keep_cache: true,
                ..Opened::default()
            }),
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
        match self.node(ino) {
            Ok(Node::Info { bytes }) => {
                let from = (offset as usize).min(bytes.len());
                let n = (bytes.len() - from).min(out.buf().len());
                out.buf()[..n].copy_from_slice(&bytes[from..from + n]);
                ReadResult::Data(n)
            }
            Ok(Node::Blob { location, size }) => self.read_blob(&location, size, offset, out),
            Ok(_) => ReadResult::Error(Errno::EISDIR),
            Err(e) => ReadResult::Error(e),
        }
    }

    /// Listings are empty: the tree is reached by name only.
    fn readdir(
        &self,
        _ctx: &Ctx,
        _ino: Ino,
        _fh: FileHandle,
        _offset: u64,
        _out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        Ok(())
    }

    /// `use` in an offered layer's directory: one use more. Never made
    /// (ENOENT is how containers/storage knows the store counts).
    fn create(
        &self,
        _ctx: &Ctx,
        parent: Ino,
        name: &OsStr,
        _mode: u32,
        _flags: u32,
    ) -> Result<(Entry, Opened), Errno> {
        let Node::Layer { reference, digest } = self.node(parent)? else {
            return Err(Errno::EROFS);
        };
        if name != "use" {
            return Err(Errno::EROFS);
        }
        if let Some(entry) = self.catalog.kept(&reference, &digest)
            && let Ok(source) = entry.source()
        {
            self.usage.used(&entry.key(), &source.layer_name());
            tracing::debug!(reference, layer = %digest, uses = self.usage.count(&entry.key()), "layer used");
        }
        Err(Errno::ENOENT)
    }

    /// Removing a layer's directory: one use less. Nothing is removed.
    fn rmdir(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let Node::Image { reference } = self.node(parent)? else {
            return Err(Errno::EROFS);
        };
        let digest: Digest = name
            .to_str()
            .and_then(|n| n.parse().ok())
            .ok_or(Errno::ENOENT)?;
        if let Some(entry) = self.catalog.kept(&reference, &digest) {
            self.usage.released(&entry.key());
            tracing::debug!(reference, layer = %digest, uses = self.usage.count(&entry.key()), "layer released by its user");
        }
        Err(Errno::ENOENT)
    }
}
