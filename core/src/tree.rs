//! The layer tree: what a TOC describes, in a few flat arrays.
//!
//! One [`Node`] per inode in an arena indexed by [`NodeId`] (root is 0);
//! every name, link target and user name in one string arena; directory
//! entries in one array sorted by (parent, name) so a directory's children
//! are a contiguous, binary-searchable slice; chunks in one array with
//! their compressed range already resolved (`next_offset`). Hardlinks are
//! directory entries that point at their target's node.

use crate::digest::Digest;
use crate::tar::EntryType;

/// Index of a node in the arena. The root is [`NodeId::ROOT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub const ROOT: NodeId = NodeId(0);
    pub(crate) const NONE: NodeId = NodeId(u32::MAX);

    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a node is. `Hardlink` nodes exist only for the raw view (their own
/// attributes and target name); directory entries never resolve to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
    Hardlink,
}

impl FileKind {
    pub(crate) fn from_entry_type(t: EntryType) -> Self {
        match t {
            EntryType::Reg => FileKind::Reg,
            EntryType::Hardlink => FileKind::Hardlink,
            EntryType::Symlink => FileKind::Symlink,
            EntryType::Char => FileKind::Char,
            EntryType::Block => FileKind::Block,
            EntryType::Dir => FileKind::Dir,
            EntryType::Fifo => FileKind::Fifo,
        }
    }

    /// The name the TOC and the inspect output use.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Dir => "dir",
            FileKind::Reg => "reg",
            FileKind::Symlink => "symlink",
            FileKind::Char => "char",
            FileKind::Block => "block",
            FileKind::Fifo => "fifo",
            FileKind::Hardlink => "hardlink",
        }
    }

    /// The `S_IFMT` bits for this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::Dir => 0o040000,
            FileKind::Reg | FileKind::Hardlink => 0o100000,
            FileKind::Symlink => 0o120000,
            FileKind::Char => 0o020000,
            FileKind::Block => 0o060000,
            FileKind::Fifo => 0o010000,
        }
    }
}

/// A slice of the string arena.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StrRef {
    pub(crate) off: u32,
    pub(crate) len: u32,
}

pub(crate) const NO_INDEX: u32 = u32::MAX;

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) kind: FileKind,
    pub(crate) mode: u16,
    pub(crate) nlink: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) uname: u32,
    pub(crate) gname: u32,
    pub(crate) mtime: i64,
    pub(crate) size: u64,
    /// Dir: first dirent; reg: first chunk; symlink/hardlink: link string
    /// offset; char/block: major.
    pub(crate) a: u32,
    /// Dir: dirent count; reg: chunk count; symlink/hardlink: link length;
    /// char/block: minor.
    pub(crate) b: u32,
    pub(crate) digest: u32,
    pub(crate) xattr_start: u32,
    pub(crate) xattr_len: u32,
    pub(crate) parent: NodeId,
}

impl Node {
    pub fn kind(&self) -> FileKind {
        self.kind
    }
    /// Permission bits with setuid/setgid/sticky.
    pub fn mode(&self) -> u32 {
        u32::from(self.mode)
    }
    pub fn nlink(&self) -> u32 {
        self.nlink
    }
    pub fn uid(&self) -> u32 {
        self.uid
    }
    pub fn gid(&self) -> u32 {
        self.gid
    }
    /// Seconds since the epoch (0 when the TOC has none).
    pub fn mtime(&self) -> i64 {
        self.mtime
    }
    /// Content size for regular files; 0 otherwise.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The directory holding this node's first name (the root's is itself).
    pub fn parent(&self) -> NodeId {
        self.parent
    }
    /// `(major, minor)` for device nodes.
    pub fn rdev(&self) -> (u32, u32) {
        match self.kind {
            FileKind::Char | FileKind::Block => (self.a, self.b),
            _ => (0, 0),
        }
    }
}

/// A directory entry: a name in a directory, and the node it resolves to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dirent {
    pub(crate) parent: NodeId,
    pub(crate) name: StrRef,
    pub(crate) node: NodeId,
    /// For names made by a hardlink entry: that entry's own node.
    pub(crate) link_entry: NodeId,
}

/// One piece of a regular file's content and where its compressed bytes
/// are in the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Blob offset of the compressed member holding this chunk.
    pub offset: u64,
    /// End of the compressed range to fetch: the next member start.
    pub next_offset: u64,
    /// Uncompressed offset of the chunk inside its member.
    pub inner_offset: u64,
    /// Offset of the chunk in the file.
    pub chunk_offset: u64,
    /// Uncompressed length.
    pub size: u64,
    pub(crate) digest: u32,
}

impl Chunk {
    /// A chunk without a digest of its own, for callers that inflate
    /// outside a tree (tests, fuzzing, writers checking their output).
    pub fn new(
        offset: u64,
        next_offset: u64,
        inner_offset: u64,
        chunk_offset: u64,
        size: u64,
    ) -> Self {
        Chunk {
            offset,
            next_offset,
            inner_offset,
            chunk_offset,
            size,
            digest: NO_INDEX,
        }
    }

    /// The compressed range `[offset, next_offset)` length.
    pub fn compressed_len(&self) -> u64 {
        self.next_offset.saturating_sub(self.offset)
    }
}

/// An extended attribute: name in the string arena, value in the byte arena.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Xattr {
    pub(crate) name: StrRef,
    pub(crate) value_off: u32,
    pub(crate) value_len: u32,
}

/// The landmark that marks the end of the prefetch range.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// The landmark that says "prefetch nothing".
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";

/// The whole layer's metadata, immutable once built.
#[derive(Debug, Clone)]
pub struct LayerTree {
    pub(crate) nodes: Vec<Node>,
    pub(crate) dirents: Vec<Dirent>,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) digests: Vec<Digest>,
    pub(crate) xattrs: Vec<Xattr>,
    pub(crate) strings: String,
    pub(crate) bytes: Vec<u8>,
    pub(crate) user_names: Vec<StrRef>,
    /// How many TOC entries built this tree (for reporting).
    pub(crate) toc_entries: usize,
}

impl LayerTree {
    /// Number of nodes, the root and implicit directories included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A tree always has its root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of TOC entries the tree was built from.
    pub fn toc_entries(&self) -> usize {
        self.toc_entries
    }

    /// The node, or `None` for an id not in this tree.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index())
    }

    /// The node. Panics on an id from another tree; ids handed out by this
    /// tree are always valid.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub(crate) fn str(&self, r: StrRef) -> &str {
        &self.strings[r.off as usize..(r.off + r.len) as usize]
    }

    fn dirents_of(&self, dir: NodeId) -> &[Dirent] {
        match self.get(dir) {
            Some(n) if n.kind == FileKind::Dir => &self.dirents[n.a as usize..(n.a + n.b) as usize],
            _ => &[],
        }
    }

    /// The children of `dir`, sorted by name (byte order). Hardlink names
    /// resolve to their target's node.
    pub fn children(&self, dir: NodeId) -> impl ExactSizeIterator<Item = (&str, NodeId)> + '_ {
        self.dirents_of(dir)
            .iter()
            .map(|d| (self.str(d.name), d.node))
    }

    /// Number of children of `dir`.
    pub fn child_count(&self, dir: NodeId) -> usize {
        self.dirents_of(dir).len()
    }

    /// The `index`-th child of `dir` in name order.
    pub fn child_at(&self, dir: NodeId, index: usize) -> Option<(&str, NodeId)> {
        self.dirents_of(dir)
            .get(index)
            .map(|d| (self.str(d.name), d.node))
    }

    /// The children of `dir` as the raw TOC has them: hardlink names give
    /// the hardlink entry's own node instead of the target's.
    pub fn raw_children(&self, dir: NodeId) -> impl Iterator<Item = (&str, NodeId)> + '_ {
        self.dirents_of(dir).iter().map(|d| {
            let node = if d.link_entry == NodeId::NONE {
                d.node
            } else {
                d.link_entry
            };
            (self.str(d.name), node)
        })
    }

    /// Looks `name` up in `dir` by binary search.
    pub fn lookup(&self, dir: NodeId, name: &str) -> Option<NodeId> {
        let ents = self.dirents_of(dir);
        ents.binary_search_by(|d| self.str(d.name).as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| ents[i].node)
    }

    /// Looks up a slash-separated path from the root (cleaned first).
    pub fn lookup_path(&self, path: &str) -> Option<NodeId> {
        let clean = crate::name::clean(path);
        if clean.is_empty() {
            return Some(NodeId::ROOT);
        }
        // A byte scan, not `str::split`: components are short, and the
        // generic searcher is an out-of-line call per component once other
        // code in the crate shares its instance (measured by perf-gate's
        // tree_lookup_deep).
        let mut dir = NodeId::ROOT;
        let mut rest: &str = &clean;
        loop {
            let slash = rest.bytes().position(|b| b == b'/');
            let part = slash.map_or(rest, |i| &rest[..i]);
            dir = self.lookup(dir, part)?;
            match slash {
                Some(i) => rest = &rest[i + 1..],
                None => return Some(dir),
            }
        }
    }

    /// The target of a symlink (as written) or hardlink entry (cleaned).
    pub fn link_target(&self, id: NodeId) -> Option<&str> {
        let n = self.get(id)?;
        matches!(n.kind, FileKind::Symlink | FileKind::Hardlink)
            .then(|| self.str(StrRef { off: n.a, len: n.b }))
    }

    /// The owner's user name, when the TOC gave one.
    pub fn uname(&self, id: NodeId) -> Option<&str> {
        self.user_name(self.get(id)?.uname)
    }

    /// The owner's group name, when the TOC gave one.
    pub fn gname(&self, id: NodeId) -> Option<&str> {
        self.user_name(self.get(id)?.gname)
    }

    fn user_name(&self, idx: u32) -> Option<&str> {
        self.user_names.get(idx as usize).map(|r| self.str(*r))
    }

    /// The whole-content digest of a regular file.
    pub fn digest(&self, id: NodeId) -> Option<Digest> {
        self.digests.get(self.get(id)?.digest as usize).copied()
    }

    /// The chunks of a regular file, in file order, covering `[0, size)`.
    pub fn chunks(&self, id: NodeId) -> &[Chunk] {
        match self.get(id) {
            Some(n) if n.kind == FileKind::Reg => &self.chunks[n.a as usize..(n.a + n.b) as usize],
            _ => &[],
        }
    }

    /// Where a regular file's chunks sit in [`LayerTree::all_chunks`]
    /// (empty for other kinds).
    pub fn chunk_span(&self, id: NodeId) -> std::ops::Range<usize> {
        match self.get(id) {
            Some(n) if n.kind == FileKind::Reg => n.a as usize..(n.a + n.b) as usize,
            _ => 0..0,
        }
    }

    /// Every chunk of the layer, superseded duplicates included, in TOC
    /// (and so blob) order.
    pub fn all_chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The indices (into [`LayerTree::chunks`], file-local) of the chunks
    /// of `id` that the file range `[offset, offset + len)` touches: the
    /// one lookup of "which chunks does this read need".
    pub fn chunks_overlapping(&self, id: NodeId, offset: u64, len: u64) -> std::ops::Range<usize> {
        let chunks = self.chunks(id);
        let first = chunks.partition_point(|c| c.chunk_offset + c.size <= offset);
        let end = offset.saturating_add(len);
        let last = first + chunks[first..].partition_point(|c| c.chunk_offset < end);
        first..last
    }

    /// The index (into [`LayerTree::chunks`]) of the chunk holding file
    /// offset `offset`, or `None` past the end.
    pub fn chunk_index_at(&self, id: NodeId, offset: u64) -> Option<usize> {
        let i = self.chunks_overlapping(id, offset, 1).start;
        (i < self.chunks(id).len()).then_some(i)
    }

    /// The first chunk (index into [`LayerTree::all_chunks`], blob order)
    /// whose compressed member starts at or after blob offset `offset`.
    pub fn first_chunk_from_blob_offset(&self, offset: u64) -> usize {
        self.chunks.partition_point(|c| c.offset < offset)
    }

    /// The digest a chunk's uncompressed bytes must have. A single-chunk
    /// file without a `chunkDigest` (old writers) falls back to the file's
    /// `digest`, which then covers the same bytes.
    pub fn chunk_digest(&self, id: NodeId, chunk: &Chunk) -> Option<Digest> {
        if let Some(d) = self.digests.get(chunk.digest as usize) {
            return Some(*d);
        }
        let n = self.get(id)?;
        if n.b == 1 && chunk.chunk_offset == 0 && chunk.size == n.size {
            self.digest(id)
        } else {
            None
        }
    }

    /// The extended attributes of a node, in TOC order.
    pub fn xattrs(&self, id: NodeId) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let (start, len) = self
            .get(id)
            .map_or((0, 0), |n| (n.xattr_start as usize, n.xattr_len as usize));
        self.xattrs[start..start + len].iter().map(|x| {
            (
                self.str(x.name),
                &self.bytes[x.value_off as usize..(x.value_off + x.value_len) as usize],
            )
        })
    }

    /// The root-level `.prefetch.landmark`, if the layer has one.
    pub fn prefetch_landmark(&self) -> Option<NodeId> {
        self.lookup(NodeId::ROOT, PREFETCH_LANDMARK)
    }

    /// Whether the layer says "prefetch nothing".
    pub fn has_no_prefetch_landmark(&self) -> bool {
        self.lookup(NodeId::ROOT, NO_PREFETCH_LANDMARK).is_some()
    }

    /// The blob range to prefetch: `[0, landmark offset)` when the layer
    /// has a `.prefetch.landmark`, else `None`.
    pub fn prefetch_range(&self) -> Option<u64> {
        let lm = self.prefetch_landmark()?;
        self.chunks(lm).first().map(|c| c.offset)
    }

    /// Bytes of heap the tree holds (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.nodes.capacity() * size_of::<Node>()
            + self.dirents.capacity() * size_of::<Dirent>()
            + self.chunks.capacity() * size_of::<Chunk>()
            + self.digests.capacity() * size_of::<Digest>()
            + self.xattrs.capacity() * size_of::<Xattr>()
            + self.strings.capacity()
            + self.bytes.capacity()
            + self.user_names.capacity() * size_of::<StrRef>()
    }

    /// The path of `id`'s first name from the root (`""` for the root),
    /// found through parents: a scan of each ancestor's entries, so for
    /// logs and predictions, not hot paths.
    pub fn path_of(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut at = id;
        // Depth is bounded by the node count: a malformed parent chain
        // cannot loop forever.
        for _ in 0..self.len() {
            if at == NodeId::ROOT {
                break;
            }
            let Some(n) = self.get(at) else { break };
            let parent = n.parent;
            match self.children(parent).find(|&(_, c)| c == at) {
                Some((name, _)) => parts.push(name),
                None => break,
            }
            at = parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// Every path of the raw view (hardlink names included) with its
    /// node, depth first; the root is `""`. Order is tree order, not
    /// string order.
    pub fn walk(&self) -> Vec<(String, NodeId)> {
        let mut out = vec![(String::new(), NodeId::ROOT)];
        let mut stack = vec![(String::new(), NodeId::ROOT)];
        while let Some((path, dir)) = stack.pop() {
            for (name, node) in self.raw_children(dir) {
                let full = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}/{name}")
                };
                if self.node(node).kind == FileKind::Dir {
                    stack.push((full.clone(), node));
                }
                out.push((full, node));
            }
        }
        out
    }
}
