//! Inode numbering. An inode number carries its layer: `slot << 32 |
//! (node + 1)`, with the high bit of the low word marking a whiteout shown
//! as a character device, and two reserved low words for the state
//! directory and its file. Slots are never reused, so an inode of a
//! removed layer never names another layer's file.

use ringstar_core::NodeId;
use ringstar_fusedev::{Errno, Ino};

pub(crate) const ROOT_INO: u64 = 1;
const WHITEOUT_BIT: u32 = 1 << 31;
const STATE_DIR_LOW: u32 = 0xFFFF_FFF0;
const STATE_FILE_LOW: u32 = 0xFFFF_FFF1;
/// Largest node index an inode can carry.
pub(crate) const MAX_NODES: usize = 0x7FFF_0000;

/// What an inode number names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inode {
    /// The mount root (the directory of layers).
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

impl Inode {
    /// A layer's node, shown as itself (not as a whiteout).
    pub fn node(slot: u32, node: NodeId) -> Inode {
        Inode::Node {
            slot,
            node,
            whiteout: false,
        }
    }
}

/// The numbering of one mount: with `single`, that layer's root is the
/// mount root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InodeNumbers {
    pub single: Option<u32>,
}

impl InodeNumbers {
    pub fn encode(&self, i: Inode) -> Ino {
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

    pub fn decode(&self, ino: Ino) -> Result<Inode, Errno> {
        if ino.0 == ROOT_INO {
            return Ok(match self.single {
                Some(slot) => Inode::node(slot, NodeId::ROOT),
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
}
