//! How a layer directory must look as an overlayfs lower layer: tar-style
//! whiteouts become overlay whiteouts, opaque markers become an xattr, and
//! the root landmarks disappear.

use crate::tree::{FileKind, LayerTree, NO_PREFETCH_LANDMARK, NodeId, PREFETCH_LANDMARK};

/// Prefix of a tar whiteout: `.wh.NAME` deletes `NAME` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks its directory opaque.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads for an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// One visible name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewEntry<'t> {
    pub name: &'t str,
    /// The node behind the name. For a whiteout, the `.wh.` entry's node
    /// (for its owner and times); present it as a char device 0:0.
    pub node: NodeId,
    pub whiteout: bool,
}

impl ViewEntry<'_> {
    /// The kind the mount shows.
    pub fn kind(&self, tree: &LayerTree) -> FileKind {
        if self.whiteout {
            FileKind::Char
        } else {
            tree.node(self.node).kind()
        }
    }
}

fn hidden(dir: NodeId, name: &str) -> bool {
    name == OPAQUE_MARKER
        || (dir == NodeId::ROOT && (name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK))
}

/// Looks `name` up in `dir` as the mount shows it.
pub fn lookup<'t>(tree: &'t LayerTree, dir: NodeId, name: &'t str) -> Option<ViewEntry<'t>> {
    if name.starts_with(WHITEOUT_PREFIX) || hidden(dir, name) {
        return None;
    }
    if let Some(node) = tree.lookup(dir, name) {
        return Some(ViewEntry {
            name,
            node,
            whiteout: false,
        });
    }
    let wh = format!("{WHITEOUT_PREFIX}{name}");
    tree.lookup(dir, &wh).map(|node| ViewEntry {
        name,
        node,
        whiteout: true,
    })
}

/// The visible entries of `dir` from position `from` on, each with the
/// position to resume after it (stable across calls: a FUSE readdir
/// offset). `.` and `..` are the caller's.
pub fn entries_from(
    tree: &LayerTree,
    dir: NodeId,
    from: usize,
) -> impl Iterator<Item = (usize, ViewEntry<'_>)> + '_ {
    (from..tree.child_count(dir)).filter_map(move |i| {
        let (name, node) = tree.child_at(dir, i)?;
        if hidden(dir, name) {
            return None;
        }
        let entry = match name.strip_prefix(WHITEOUT_PREFIX) {
            // A real entry of the same name wins over its whiteout.
            Some(target) if tree.lookup(dir, target).is_some() || target.is_empty() => return None,
            Some(target) => ViewEntry {
                name: target,
                node,
                whiteout: true,
            },
            None => ViewEntry {
                name,
                node,
                whiteout: false,
            },
        };
        Some((i + 1, entry))
    })
}

/// Whether `dir` is opaque (holds `.wh..wh..opq`).
pub fn is_opaque(tree: &LayerTree, dir: NodeId) -> bool {
    tree.lookup(dir, OPAQUE_MARKER).is_some()
}

/// The xattrs the mount shows for an entry: its own, plus the opaque
/// marker on opaque directories. Whiteouts have none.
pub fn xattrs<'t>(tree: &'t LayerTree, entry: ViewEntry<'t>) -> Vec<(&'t str, &'t [u8])> {
    if entry.whiteout {
        return Vec::new();
    }
    let mut out: Vec<(&str, &[u8])> = tree
        .xattrs(entry.node)
        .filter(|(k, _)| *k != OPAQUE_XATTR)
        .collect();
    if tree.node(entry.node).kind() == FileKind::Dir && is_opaque(tree, entry.node) {
        out.push((OPAQUE_XATTR, b"y"));
    }
    out
}
