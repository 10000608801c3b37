//! Attributes of what the mount shows: layer nodes from their tree, the
//! root, the state directory and file.

use std::time::Duration;

use ringstar_core::{FileKind, NodeId};
use ringstar_fusedev::{Entry, Errno, FileAttr, FileType, Ino, Timestamp};

use crate::inode::{Inode, InodeNumbers, ROOT_INO};
use crate::layer::RemoteLayer;
use crate::state_dir::state_json;

/// Layer content never changes: the kernel may cache it as long as it
/// likes (removal invalidates the layer's root entry explicitly).
pub(crate) const LAYER_TTL: Duration = Duration::from_secs(24 * 3600);
/// The state directory and files change.
pub(crate) const ROOT_TTL: Duration = Duration::from_secs(1);
/// The mount root's own attributes never change (`root_attr`; its
/// listing is never cached and its entries are invalidated one by one):
/// cached for as long as the kernel likes, so stat(2) of the mountpoint
/// needs no daemon. That matters between two processes serving a
/// taken-over mount: a plain `umount` stats the mountpoint first (#16).
pub(crate) const ROOT_ATTR_TTL: Duration = LAYER_TTL;

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

/// An entry reply of `attr`, cached for `ttl`.
pub(crate) fn entry_of(attr: FileAttr, ttl: Duration) -> Entry {
    Entry {
        attr,
        generation: 0,
        entry_ttl: ttl,
        attr_ttl: ttl,
    }
}

pub(crate) fn root_attr() -> FileAttr {
    let mut a = FileAttr::new(Ino(ROOT_INO), FileType::Directory, 0, 0o555);
    a.nlink = 2;
    a
}

/// A layer node's attributes; a whiteout is an overlayfs whiteout (char
/// device 0:0, root's, one link).
pub(crate) fn node_attr(
    inodes: InodeNumbers,
    slot: u32,
    layer: &RemoteLayer,
    node: NodeId,
    whiteout: bool,
) -> Result<FileAttr, Errno> {
    let tree = layer.tree();
    let n = tree.get(node).ok_or(Errno::ENOENT)?;
    let ino = inodes.encode(Inode::Node {
        slot,
        node,
        whiteout,
    });
    let mtime = Timestamp {
        secs: n.mtime(),
        nsecs: 0,
    };
    let mut a = if whiteout {
        FileAttr::new(ino, FileType::CharDevice, 0, 0)
    } else {
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
        if matches!(kind, FileKind::Char | FileKind::Block) {
            let (major, minor) = n.rdev();
            a.rdev = encode_dev(major, minor);
        }
        a
    };
    a.mtime = mtime;
    a.ctime = mtime;
    a.atime = mtime;
    Ok(a)
}

pub(crate) fn state_dir_attr(inodes: InodeNumbers, slot: u32) -> FileAttr {
    let mut a = FileAttr::new(
        inodes.encode(Inode::StateDir { slot }),
        FileType::Directory,
        0,
        0o500,
    );
    a.nlink = 2;
    a
}

pub(crate) fn state_file_attr(inodes: InodeNumbers, slot: u32, layer: &RemoteLayer) -> FileAttr {
    FileAttr::new(
        inodes.encode(Inode::StateFile { slot }),
        FileType::RegularFile,
        state_json(layer).len() as u64,
        0o400,
    )
}
