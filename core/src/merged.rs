//! Paths looked up through a stack of layer trees as overlayfs merges
//! them (upper layers first, whiteouts and opaque directories hiding
//! lower entries, symlinks followed from the merged root): where a
//! program's loader would find a library, without a mount.

use crate::tree::{FileKind, LayerTree, NodeId};
use crate::whiteout::{self, OPAQUE_MARKER};

/// Symlinks followed in one lookup at most (Linux's limit).
pub const MAX_SYMLINKS: usize = 40;
/// Path components handled in one lookup at most (symlink targets
/// included): a bound on the work a hostile tree can cause, since a
/// prediction may try a few thousand paths for one program (256
/// libraries × its search directories). Real library paths, links
/// followed, take a few dozen.
const MAX_COMPONENTS: usize = 256;

/// Layer trees, the uppermost first.
#[derive(Debug, Clone, Copy)]
pub struct MergedView<'t> {
    layers: &'t [&'t LayerTree],
}

/// What one layer says of a name.
enum Found {
    Entry(NodeId),
    /// A whiteout, or an opaque directory above: lower layers are hidden.
    Hidden,
    Absent,
}

impl<'t> MergedView<'t> {
    pub fn new(layers: &'t [&'t LayerTree]) -> Self {
        MergedView { layers }
    }

    /// The regular file (or hardlink target) at `path`, absolute from the
    /// merged root, symlinks followed: the index of the layer that holds
    /// it and its node there.
    pub fn resolve_file(&self, path: &str) -> Option<(usize, NodeId)> {
        let mut todo: Vec<String> = components(path).rev().map(str::to_string).collect();
        let mut dir: Vec<String> = Vec::new();
        let (mut links, mut steps) = (0, 0);
        while let Some(name) = todo.pop() {
            steps += 1;
            if steps > MAX_COMPONENTS {
                return None;
            }
            match name.as_str() {
                "." => continue,
                ".." => {
                    dir.pop();
                    continue;
                }
                _ => {}
            }
            let (layer, node) = self.lookup(&dir, &name)?;
            let tree = self.layers[layer];
            match tree.node(node).kind() {
                FileKind::Dir => dir.push(name),
                FileKind::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return None;
                    }
                    let target = tree.link_target(node)?;
                    if target.starts_with('/') {
                        dir.clear();
                    }
                    todo.extend(components(target).rev().map(str::to_string));
                }
                FileKind::Reg if todo.is_empty() => return Some((layer, node)),
                _ => return None,
            }
        }
        None
    }

    /// The topmost entry `name` in merged directory `dir` (components
    /// with no symlinks in them).
    fn lookup(&self, dir: &[String], name: &str) -> Option<(usize, NodeId)> {
        for (i, tree) in self.layers.iter().enumerate() {
            match in_layer(tree, dir, name) {
                Found::Entry(node) => return Some((i, node)),
                Found::Hidden => return None,
                Found::Absent => {}
            }
        }
        None
    }
}

/// What `tree` says of `dir/name`.
fn in_layer(tree: &LayerTree, dir: &[String], name: &str) -> Found {
    let mut at = NodeId::ROOT;
    for part in dir {
        match step(tree, at, part) {
            Found::Entry(node) if tree.node(node).kind() == FileKind::Dir => at = node,
            // Not a directory here: a file or symlink in this layer over
            // a directory below hides it.
            Found::Entry(_) | Found::Hidden => return Found::Hidden,
            Found::Absent => return Found::Absent,
        }
    }
    step(tree, at, name)
}

/// What `tree` says of `name` in its directory `at`.
fn step(tree: &LayerTree, at: NodeId, name: &str) -> Found {
    match whiteout::lookup(tree, at, name) {
        Some(e) if e.whiteout => Found::Hidden,
        Some(e) => Found::Entry(e.node),
        None if tree.lookup(at, OPAQUE_MARKER).is_some() => Found::Hidden,
        None => Found::Absent,
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests;
