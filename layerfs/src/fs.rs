//! The filesystem's state: its layers (each a top-level directory named
//! by its layer id, or one layer at the root), open files, passthrough;
//! and the lookups every FUSE operation starts with.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ringstar_core::whiteout::{self, ViewEntry};
use ringstar_core::{Digest, NodeId};
use ringstar_fusedev::{BackingFile, Entry, Errno, FileAttr, Passthrough};

use crate::attr::{
    LAYER_TTL, ROOT_ATTR_TTL, ROOT_TTL, entry_of, node_attr, root_attr, state_dir_attr,
    state_file_attr,
};
use crate::error::AddLayerError;
use crate::inode::{Inode, InodeNumbers, MAX_NODES};
use crate::journal::{Inherited, Journal};
use crate::layer::RemoteLayer;
use crate::loader::Loader;
use crate::open_files::OpenFiles;

/// The filesystem.
pub struct LayerFs {
    pub(crate) loader: Arc<Loader>,
    layers: RwLock<Layers>,
    /// With one layer shown at the mount root instead of a directory per
    /// layer (`ringstar mount`), its slot.
    pub(crate) inodes: InodeNumbers,
    next_slot: AtomicU32,
    pub(crate) open: OpenFiles,
    pub(crate) next_fh: AtomicU64,
    pub(crate) passthrough: Mutex<Option<Passthrough>>,
    pub(crate) use_passthrough: bool,
    /// READ requests of layer files answered (by the daemon; passthrough
    /// reads never get here).
    pub(crate) reads: AtomicU64,
    /// Requests for layers taken over but not restored (logged at 1, 2,
    /// 4, 8, …: a log line per failure, without a flood).
    unrestored: AtomicU64,
    /// Records slots and io modes for a process taking over the mount.
    journal: Option<Arc<Journal>>,
}

#[derive(Debug, Default)]
struct Layers {
    by_slot: BTreeMap<u32, Arc<RemoteLayer>>,
    by_name: BTreeMap<String, u32>,
    /// Slots an earlier process on this connection gave layers not shown
    /// again yet: the kernel may hold their inode numbers.
    reserved: HashMap<String, u32>,
}

/// File handles carry the generation of the process that issued them in
/// their high bits, so a RELEASE of an earlier process's handle never
/// names one of ours.
const FH_GENERATION_SHIFT: u32 = 40;

impl std::fmt::Debug for LayerFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFs")
            .field("single", &self.inodes.single)
            .field("loader", &self.loader)
            .finish_non_exhaustive()
    }
}

impl LayerFs {
    /// A filesystem showing each added layer as a directory of the root.
    pub fn new(loader: Arc<Loader>, passthrough: bool) -> LayerFs {
        LayerFs {
            loader,
            layers: RwLock::default(),
            inodes: InodeNumbers { single: None },
            next_slot: AtomicU32::new(1),
            open: OpenFiles::default(),
            next_fh: AtomicU64::new(1),
            passthrough: Mutex::new(None),
            use_passthrough: passthrough,
            reads: AtomicU64::new(0),
            unrestored: AtomicU64::new(0),
            journal: None,
        }
    }

    /// A filesystem whose slots and io modes go to `journal`, starting
    /// from what earlier processes serving the same FUSE connection left
    /// (`inherited`; empty for a new mount): layers shown again get their
    /// old slots, so inode numbers the kernel holds keep their meaning.
    pub fn journaled(
        loader: Arc<Loader>,
        passthrough: bool,
        journal: Arc<Journal>,
        inherited: &Inherited,
    ) -> LayerFs {
        let mut fs = LayerFs::new(loader, passthrough);
        fs.next_slot = AtomicU32::new(inherited.next_slot());
        fs.next_fh = AtomicU64::new((u64::from(journal.generation()) << FH_GENERATION_SHIFT) | 1);
        fs.open = OpenFiles::resumed(journal.clone(), &inherited.modes);
        fs.layers.get_mut().expect("layers").reserved = inherited.slots.clone();
        fs.journal = Some(journal);
        fs
    }

    /// A filesystem whose root is `layer`'s root.
    pub fn single(loader: Arc<Loader>, layer: Arc<RemoteLayer>, passthrough: bool) -> LayerFs {
        let mut fs = LayerFs::new(loader, passthrough);
        fs.inodes.single = Some(1);
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

    /// Passthrough backing files made so far.
    pub fn backing_files_made(&self) -> u64 {
        self.open.backing_files_made()
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
        let slot = match l.reserved.remove(&layer.name) {
            Some(slot) => slot,
            None => self.next_slot.fetch_add(1, Ordering::AcqRel),
        };
        l.by_name.insert(layer.name.clone(), slot);
        let name = layer.name.clone();
        l.by_slot.insert(slot, layer);
        let seq = self.journal.as_ref().map(|j| j.next_seq());
        drop(l);
        // Recorded before the caller shows the layer to anyone.
        if let (Some(j), Some(seq)) = (&self.journal, seq) {
            j.slot(seq, &name, Some(slot));
        }
        Ok(())
    }

    /// Removes layer `name`; its inodes answer ENOENT from now on.
    pub fn remove_layer(&self, name: &str) -> Option<Arc<RemoteLayer>> {
        let mut l = self.layers.write().expect("layers");
        let slot = l.by_name.remove(name)?;
        let layer = l.by_slot.remove(&slot)?;
        let seq = self.journal.as_ref().map(|j| j.next_seq());
        drop(l);
        if let (Some(j), Some(seq)) = (&self.journal, seq) {
            j.slot(seq, name, None);
        }
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

    /// The slot of layer `name`.
    pub(crate) fn slot_named(&self, name: &str) -> Option<u32> {
        self.layers
            .read()
            .expect("layers")
            .by_name
            .get(name)
            .copied()
    }

    /// Every layer's slot and name, by slot.
    pub(crate) fn slots(&self) -> Vec<(u32, String)> {
        let l = self.layers.read().expect("layers");
        let mut out: Vec<(u32, String)> = l.by_name.iter().map(|(n, s)| (*s, n.clone())).collect();
        out.sort_unstable();
        out
    }

    /// The layer in `slot`. A slot an earlier process gave a layer that
    /// this one could not bring back (its source is gone) is EIO: the
    /// kernel's inodes there name files that exist but cannot be served.
    /// Any other empty slot is a removed layer: ENOENT.
    pub(crate) fn slot_layer(&self, slot: u32) -> Result<Arc<RemoteLayer>, Errno> {
        let l = self.layers.read().expect("layers");
        if let Some(layer) = l.by_slot.get(&slot) {
            return Ok(layer.clone());
        }
        if let Some(name) = l
            .reserved
            .iter()
            .find_map(|(n, s)| (*s == slot).then_some(n))
        {
            let n = self.unrestored.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(layer = %name, slot, requests = n, "a layer taken over could not be restored (its source is gone?): EIO");
            }
            return Err(Errno::EIO);
        }
        Err(Errno::ENOENT)
    }

    pub(crate) fn attr_of(&self, i: Inode) -> Result<(FileAttr, Duration), Errno> {
        Ok(match i {
            Inode::Root => (root_attr(), ROOT_ATTR_TTL),
            Inode::Node {
                slot,
                node,
                whiteout,
            } => {
                let layer = self.slot_layer(slot)?;
                let attr = node_attr(self.inodes, slot, &layer, node, whiteout)?;
                (attr, LAYER_TTL)
            }
            Inode::StateDir { slot } => {
                self.slot_layer(slot)?;
                (state_dir_attr(self.inodes, slot), ROOT_TTL)
            }
            Inode::StateFile { slot } => {
                let layer = self.slot_layer(slot)?;
                (state_file_attr(self.inodes, slot, &layer), Duration::ZERO)
            }
        })
    }

    pub(crate) fn entry(&self, i: Inode) -> Result<Entry, Errno> {
        let (attr, ttl) = self.attr_of(i)?;
        Ok(entry_of(attr, ttl))
    }

    pub(crate) fn xattrs(&self, i: Inode) -> Result<Vec<(String, Vec<u8>)>, Errno> {
        match i {
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
    pub(crate) fn backing_for(
        &self,
        layer: &RemoteLayer,
        node: NodeId,
        key: &Digest,
    ) -> Option<BackingFile> {
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
