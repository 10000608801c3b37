//! Directory listings: the root (one entry per layer), a layer's
//! directories (the whiteout view of its tree), the state directory.
//! Offsets: 1 and 2 are `.` and `..`; entry `k` of a listing is `k + 3`
//! (a layer's slot + 2 at the root).

use std::ffi::OsStr;

use ringstar_core::whiteout;
use ringstar_core::{FileKind, NodeId};
use ringstar_fusedev::{DirOut, Entry, Errno};

use crate::attr::{LAYER_TTL, entry_of, node_attr};
use crate::fs::LayerFs;
use crate::inode::Inode;
use crate::state_dir::state_file_name;

impl LayerFs {
    /// The entries of `.` and `..` of directory `me`.
    pub(crate) fn dots(&self, me: Inode) -> Result<(Entry, Entry), Errno> {
        let parent = match me {
            Inode::Root => Inode::Root,
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
                if node == NodeId::ROOT {
                    Inode::Root
                } else {
                    Inode::node(slot, n.parent())
                }
            }
            Inode::StateDir { slot } => Inode::node(slot, NodeId::ROOT),
            _ => return Err(Errno::ENOTDIR),
        };
        Ok((self.entry(me)?, self.entry(parent)?))
    }

    /// Lists directory `me` from entry `from` (0: the first after `..`).
    pub(crate) fn list(&self, me: Inode, from: u64, out: &mut DirOut<'_>) -> Result<(), Errno> {
        match me {
            Inode::Root => self.list_root(from, out),
            Inode::Node { slot, node, .. } => self.list_node(slot, node, from, out)?,
            Inode::StateDir { slot } => {
                if from == 0 {
                    let layer = self.slot_layer(slot)?;
                    let e = self.entry(Inode::StateFile { slot })?;
                    let _ = out.push(OsStr::new(&state_file_name(&layer.digest)), 3, &e);
                }
            }
            Inode::StateFile { .. } => {}
        }
        Ok(())
    }

    fn list_root(&self, from: u64, out: &mut DirOut<'_>) {
        for (slot, name) in self.slots() {
            if u64::from(slot) <= from {
                continue;
            }
            let Ok(e) = self.entry(Inode::node(slot, NodeId::ROOT)) else {
                continue;
            };
            if !out.push(OsStr::new(&name), u64::from(slot) + 2, &e) {
                break;
            }
        }
    }

    fn list_node(
        &self,
        slot: u32,
        node: NodeId,
        from: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        let layer = self.slot_layer(slot)?;
        let tree = layer.tree();
        for (next, e) in whiteout::entries_from(tree, node, from as usize) {
            let attr = node_attr(self.inodes, slot, &layer, e.node, e.whiteout)?;
            if !out.push(
                OsStr::new(e.name),
                next as u64 + 2,
                &entry_of(attr, LAYER_TTL),
            ) {
                break;
            }
        }
        Ok(())
    }
}
