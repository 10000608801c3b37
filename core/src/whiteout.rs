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

/// The xattrs the mount shows for an entry: its own, minus every
/// overlayfs control xattr (`trusted.overlay.*`, `user.overlay.*`: the
/// tree builder already drops them, this keeps the view safe on its own),
/// plus the opaque marker on opaque directories. Whiteouts have none.
pub fn xattrs<'t>(tree: &'t LayerTree, entry: ViewEntry<'t>) -> Vec<(&'t str, &'t [u8])> {
    if entry.whiteout {
        return Vec::new();
    }
    let mut out: Vec<(&str, &[u8])> = tree
        .xattrs(entry.node)
        .filter(|(k, _)| !crate::toc::is_overlay_xattr(k))
        .collect();
    if tree.node(entry.node).kind() == FileKind::Dir && is_opaque(tree, entry.node) {
        out.push((OPAQUE_XATTR, b"y"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, OpenOptions};
    use crate::tar::{self, Entry, EntryType};
    use crate::writer::{WriterOptions, build_to_vec};

    fn layer(entries: &[(&str, EntryType)]) -> Layer {
        let mut out = Vec::new();
        for (name, kind) in entries {
            let e = Entry {
                name: name.to_string(),
                entry_type: Some(*kind),
                mode: 0o755,
                xattrs: if *name == "a/" {
                    vec![
                        ("user.keep".into(), b"1".to_vec()),
                        ("trusted.overlay.redirect".into(), b"/etc".to_vec()),
                        ("trusted.overlay.metacopy".into(), Vec::new()),
                        ("user.overlay.origin".into(), b"x".to_vec()),
                        ("trusted.overlay.opaque".into(), b"n".to_vec()),
                    ]
                } else if *name == "b/" {
                    // Opaque by xattr only: not opaque, and not shown.
                    vec![("trusted.overlay.opaque".into(), b"y".to_vec())]
                } else {
                    Vec::new()
                },
                ..Entry::default()
            };
            out.extend(tar::encode_header(&e));
        }
        let opts = WriterOptions {
            prioritized: vec!["sub/.prefetch.landmark".into()],
            ..WriterOptions::default()
        };
        let (blob, _) = build_to_vec(&out[..], &opts).unwrap();
        Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap()
    }

    #[test]
    fn overlay_view_of_whiteouts_opaque_dirs_and_landmarks() {
        let l = layer(&[
            ("a/", EntryType::Dir),
            ("a/.wh..wh..opq", EntryType::Reg),
            ("a/kept", EntryType::Reg),
            ("b/", EntryType::Dir),
            ("b/.wh.gone", EntryType::Reg),
            ("b/.wh.both", EntryType::Reg),
            ("b/both", EntryType::Reg),
            ("b/stays", EntryType::Reg),
            ("sub/.prefetch.landmark", EntryType::Reg),
        ]);
        let t = &l.tree;
        let names = |dir: NodeId| -> Vec<(String, bool)> {
            entries_from(t, dir, 0)
                .map(|(_, e)| (e.name.to_string(), e.whiteout))
                .collect()
        };
        // Root landmark hidden; the one in sub/ is an ordinary file.
        assert_eq!(
            names(NodeId::ROOT),
            [
                ("a".into(), false),
                ("b".into(), false),
                ("sub".into(), false)
            ]
        );
        assert!(lookup(t, NodeId::ROOT, PREFETCH_LANDMARK).is_none());
        let sub = t.lookup_path("sub").unwrap();
        assert!(lookup(t, sub, PREFETCH_LANDMARK).is_some());
        let a = t.lookup_path("a").unwrap();
        assert_eq!(names(a), [("kept".into(), false)]);
        assert!(is_opaque(t, a));
        let a_entry = lookup(t, NodeId::ROOT, "a").unwrap();
        let x = xattrs(t, a_entry);
        // Only the layer's own ordinary xattr and the opaque marker's
        // meaning: no overlayfs control xattr from the TOC (#14).
        assert_eq!(x, [("user.keep", &b"1"[..]), (OPAQUE_XATTR, &b"y"[..])]);
        assert!(lookup(t, a, OPAQUE_MARKER).is_none());
        let b = t.lookup_path("b").unwrap();
        assert!(!is_opaque(t, b));
        assert!(xattrs(t, lookup(t, NodeId::ROOT, "b").unwrap()).is_empty());
        // The real `both` wins over its whiteout; `gone` shows as a whiteout
        // (listed in raw-name order, where `.wh.gone` sorts first).
        let mut listed = names(b);
        listed.sort();
        assert_eq!(
            listed,
            [
                ("both".into(), false),
                ("gone".into(), true),
                ("stays".into(), false)
            ]
        );
        let gone = lookup(t, b, "gone").unwrap();
        assert!(gone.whiteout);
        assert_eq!(gone.kind(t), FileKind::Char);
        assert!(xattrs(t, gone).is_empty());
        assert!(lookup(t, b, ".wh.gone").is_none());
        assert!(!lookup(t, b, "both").unwrap().whiteout);
        // Resuming from a returned position continues after that entry.
        let all: Vec<_> = entries_from(t, b, 0).collect();
        let rest: Vec<_> = entries_from(t, b, all[0].0).collect();
        assert_eq!(rest, all[1..]);
    }
}
