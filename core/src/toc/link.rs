//! Linking the winning entries into directories (implicit parents,
//! hardlinks, link counts) and sorting each directory's children.

use std::collections::HashMap;

use super::build::{Builder, Pending};
use crate::error::Error;
use crate::name;
use crate::tar::EntryType;
use crate::tree::{Dirent, FileKind, LayerTree, NO_INDEX, Node, NodeId, StrRef};

/// Links the winning entries into directories, creating implicit parents.
///
/// Linear in the total name bytes, however deep the paths: parents are
/// found by walking down one component at a time through a (parent, name)
/// map, with explicit entries registered shallowest first so that a
/// missing component is always an implicit directory.
pub(super) struct Linker<'p> {
    pub(super) nodes: Vec<Node>,
    pub(super) dirents: Vec<Dirent>,
    /// Pending index → node id, for winners.
    pub(super) node_of: Vec<NodeId>,
    /// (directory, component) → what the name resolves to.
    pub(super) children: HashMap<(NodeId, &'p str), NodeId>,
    pub(super) pending: &'p [Pending],
    pub(super) by_name: &'p HashMap<String, u32>,
}

fn dir_node(parent: NodeId) -> Node {
    Node {
        kind: FileKind::Dir,
        mode: 0o755,
        nlink: 0,
        uid: 0,
        gid: 0,
        uname: NO_INDEX,
        gname: NO_INDEX,
        mtime: 0,
        size: 0,
        a: 0,
        b: 0,
        digest: NO_INDEX,
        xattr_start: 0,
        xattr_len: 0,
        parent,
    }
}

/// Hardlink resolution state per pending entry.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    Unresolved,
    InProgress,
    To(NodeId),
}

impl<'p> Linker<'p> {
    fn is_winner(&self, i: usize) -> bool {
        self.by_name.get(&self.pending[i].name) == Some(&(i as u32))
    }

    pub(super) fn link_all(&mut self, b: &mut Builder) -> Result<(), Error> {
        self.nodes.push(dir_node(NodeId::ROOT));
        // Nodes for every winner first, so hardlinks can point anywhere.
        for (i, p) in self.pending.iter().enumerate() {
            if !self.is_winner(i) {
                continue;
            }
            let (a, b_) = match p.kind {
                EntryType::Reg => (p.chunk_start, p.chunk_len),
                EntryType::Symlink | EntryType::Hardlink => (p.link.off, p.link.len),
                EntryType::Char | EntryType::Block => p.dev,
                _ => (0, 0),
            };
            let node = Node {
                kind: FileKind::from_entry_type(p.kind),
                mode: p.mode,
                nlink: 0,
                uid: p.uid,
                gid: p.gid,
                uname: p.uname,
                gname: p.gname,
                mtime: p.mtime,
                size: p.size,
                a,
                b: b_,
                digest: p.digest,
                xattr_start: p.xattr_start,
                xattr_len: p.xattr_len,
                parent: NodeId::ROOT,
            };
            if p.name.is_empty() {
                // An explicit root supplies the root's attributes.
                self.nodes[0] = node;
                self.node_of[i] = NodeId::ROOT;
            } else {
                self.node_of[i] = NodeId(self.nodes.len() as u32);
                self.nodes.push(node);
            }
        }
        let links = self.resolve_hardlinks(b)?;
        let mut order: Vec<(usize, u32)> = (0..self.pending.len())
            .filter(|&i| !self.pending[i].name.is_empty() && self.is_winner(i))
            .map(|i| {
                (
                    self.pending[i].name.bytes().filter(|&c| c == b'/').count(),
                    i as u32,
                )
            })
            .collect();
        order.sort_unstable();
        for (_, i) in order {
            let i = i as usize;
            let p: &'p Pending = &self.pending[i];
            let own = self.node_of[i];
            let (target, link_entry) = match links[i] {
                Link::To(t) => (t, own),
                _ => (own, NodeId::NONE),
            };
            let parent = self.dir_for(b, name::parent(&p.name), &p.name)?;
            self.nodes[own.index()].parent = parent;
            let base = name::base(&p.name);
            self.children.insert((parent, base), target);
            let name = b.add_str(base)?;
            self.dirents.push(Dirent {
                parent,
                name,
                node: target,
                link_entry,
            });
        }
        self.count_links();
        Ok(())
    }

    /// The directory node for `dir_name`, walking down from the root and
    /// creating missing components as implicit directories.
    fn dir_for(
        &mut self,
        b: &mut Builder,
        dir_name: &'p str,
        child: &str,
    ) -> Result<NodeId, Error> {
        let mut cur = NodeId::ROOT;
        if dir_name.is_empty() {
            return Ok(cur);
        }
        for part in dir_name.split('/') {
            cur = match self.children.get(&(cur, part)) {
                Some(&next) => next,
                None => {
                    let id = NodeId(self.nodes.len() as u32);
                    self.nodes.push(dir_node(cur));
                    let name = b.add_str(part)?;
                    self.dirents.push(Dirent {
                        parent: cur,
                        name,
                        node: id,
                        link_entry: NodeId::NONE,
                    });
                    self.children.insert((cur, part), id);
                    id
                }
            };
            if self.nodes[cur.index()].kind != FileKind::Dir {
                return Err(Error::entry(
                    child,
                    format!("parent {part:?} is not a directory"),
                ));
            }
        }
        Ok(cur)
    }

    /// Resolves every hardlink to its final target, following chains once
    /// each (memoised), refusing missing targets, directories and cycles.
    fn resolve_hardlinks(&self, b: &Builder) -> Result<Vec<Link>, Error> {
        let mut links = vec![Link::Unresolved; self.pending.len()];
        let link_str = |r: StrRef| &b.strings[r.off as usize..(r.off + r.len) as usize];
        for start in 0..self.pending.len() {
            if self.pending[start].kind != EntryType::Hardlink || !self.is_winner(start) {
                continue;
            }
            let mut chain = Vec::new();
            let mut cur = start;
            let target = loop {
                match links[cur] {
                    Link::To(t) => break t,
                    Link::InProgress => {
                        return Err(Error::entry(&self.pending[start].name, "hardlink cycle"));
                    }
                    Link::Unresolved => {}
                }
                links[cur] = Link::InProgress;
                chain.push(cur);
                let p = &self.pending[cur];
                let want = link_str(p.link);
                let Some(&t) = self.by_name.get(want) else {
                    return Err(Error::entry(
                        &p.name,
                        format!("hardlink target {want:?} does not exist"),
                    ));
                };
                let tp = &self.pending[t as usize];
                match tp.kind {
                    EntryType::Hardlink => cur = t as usize,
                    EntryType::Dir => {
                        return Err(Error::entry(
                            &p.name,
                            format!("hardlink to directory {want:?}"),
                        ));
                    }
                    _ => break self.node_of[t as usize],
                }
            };
            for i in chain {
                links[i] = Link::To(target);
            }
        }
        Ok(links)
    }

    /// Link counts as the reference computes them: one per name, one more
    /// for a directory's `.`, one per subdirectory's `..`.
    fn count_links(&mut self) {
        for n in &mut self.nodes {
            if n.kind == FileKind::Dir {
                n.nlink = 1;
            }
        }
        // The root's `..` is the mount point's.
        self.nodes[0].nlink += 1;
        for d in &self.dirents {
            self.nodes[d.node.index()].nlink += 1;
            if d.link_entry != NodeId::NONE {
                self.nodes[d.link_entry.index()].nlink = 1;
            }
            if self.nodes[d.node.index()].kind == FileKind::Dir {
                self.nodes[d.parent.index()].nlink += 1;
            }
        }
    }
}

/// Sorts directory entries by (parent, name) and points each directory at
/// its slice.
pub(super) fn sort_children(tree: &mut LayerTree) {
    let strings = &tree.strings;
    let key = |r: StrRef| &strings.as_bytes()[r.off as usize..(r.off + r.len) as usize];
    tree.dirents.sort_unstable_by(|x, y| {
        x.parent
            .cmp(&y.parent)
            .then_with(|| key(x.name).cmp(key(y.name)))
    });
    let mut i = 0;
    while i < tree.dirents.len() {
        let parent = tree.dirents[i].parent;
        let start = i;
        while i < tree.dirents.len() && tree.dirents[i].parent == parent {
            i += 1;
        }
        let n = &mut tree.nodes[parent.index()];
        n.a = start as u32;
        n.b = (i - start) as u32;
    }
}

/// Linking the entries into a tree is the last step of building it.
impl Builder {
    /// The tree of every entry pushed: chunk geometry checked, entries
    /// linked into directories, children sorted, arenas shrunk.
    pub(super) fn finish(mut self, data_end: u64) -> Result<LayerTree, Error> {
        self.resolve_next_offsets(data_end)?;
        self.check_chunk_cover()?;
        let pending = std::mem::take(&mut self.pending);
        let by_name = std::mem::take(&mut self.by_name);
        let mut linker = Linker {
            nodes: Vec::with_capacity(by_name.len() + 1),
            dirents: Vec::with_capacity(by_name.len()),
            node_of: vec![NodeId::NONE; pending.len()],
            children: HashMap::with_capacity(by_name.len()),
            pending: &pending,
            by_name: &by_name,
        };
        linker.link_all(&mut self)?;
        let Linker { nodes, dirents, .. } = linker;
        let mut tree = LayerTree {
            nodes,
            dirents,
            chunks: self.chunks,
            digests: self.digests,
            xattrs: self.xattrs,
            strings: self.strings,
            bytes: self.bytes,
            user_names: self.user_names,
            toc_entries: self.entries_seen,
        };
        sort_children(&mut tree);
        tree.nodes.shrink_to_fit();
        tree.dirents.shrink_to_fit();
        tree.chunks.shrink_to_fit();
        tree.digests.shrink_to_fit();
        tree.xattrs.shrink_to_fit();
        tree.strings.shrink_to_fit();
        tree.bytes.shrink_to_fit();
        tree.user_names.shrink_to_fit();
        Ok(tree)
    }
}
