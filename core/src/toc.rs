//! `stargz.index.json`: the schema (shared by reader and writer) and the
//! streaming parser that builds a [`LayerTree`] without holding the entry
//! list in memory.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;
use crate::inflate::check_geometry;
use crate::layer::Compression;
use crate::limits::{MAX_CHUNK_SPAN, MAX_TOC_ENTRIES};
use crate::name;
use crate::tar::EntryType;
use crate::tree::{Chunk, Dirent, FileKind, LayerTree, NO_INDEX, Node, NodeId, StrRef, Xattr};

/// The TOC's file name inside its tar member.
pub const TOC_NAME: &str = "stargz.index.json";

/// Limits that keep a hostile TOC from costing more than it should.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most entries (chunks included) one TOC may have.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: MAX_TOC_ENTRIES,
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_none_or_empty(v: &Option<Cow<'_, str>>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

/// One TOC entry, field for field as the reference writes it (same order,
/// same omissions). Unknown keys are accepted and ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TocEntry<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(
        default,
        borrow,
        rename = "modtime",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub mod_time: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        rename = "linkName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub link_name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(
        default,
        borrow,
        rename = "userName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub user_name: Option<Cow<'a, str>>,
    #[serde(
        default,
        borrow,
        rename = "groupName",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub group_name: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(default, rename = "innerOffset", skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(default, rename = "devMajor", skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(default, rename = "devMinor", skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Values are standard padded base64, as Go encodes `[]byte`.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub xattrs: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
    #[serde(default, borrow, skip_serializing_if = "is_none_or_empty")]
    pub digest: Option<Cow<'a, str>>,
    #[serde(default, rename = "chunkOffset", skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    #[serde(default, rename = "chunkSize", skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(
        default,
        borrow,
        rename = "chunkDigest",
        skip_serializing_if = "is_none_or_empty"
    )]
    pub chunk_digest: Option<Cow<'a, str>>,
}

/// The TOC document, for writing.
#[derive(Debug, Serialize)]
pub struct TocDocument<'a> {
    pub version: i32,
    pub entries: Vec<TocEntry<'a>>,
}

impl TocDocument<'_> {
    /// The JSON the reference writer emits: indented with one tab per
    /// level, no trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        self.serialize(&mut ser)
            .expect("serialising to a Vec cannot fail");
        out
    }
}

/// Parses TOC JSON held in memory into a tree. `data_end` is where the
/// blob's payload members end (the TOC's own offset): every chunk must lie
/// before it. `compression` is the payload's, which bounds how much a
/// chunk's compressed span can inflate to.
pub fn parse(
    json: &[u8],
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    parse_with(
        serde_json::Deserializer::from_slice(json),
        data_end,
        compression,
        limits,
    )
}

/// Parses TOC JSON as it is read: entries are visited one at a time and
/// nothing holds the document, so memory follows the entries, not the
/// bytes (whitespace, ignored keys). Wrap slow readers in a `BufReader`.
pub fn parse_reader<R: std::io::Read>(
    json: R,
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    parse_with(
        serde_json::Deserializer::from_reader(json),
        data_end,
        compression,
        limits,
    )
}

fn parse_with<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    data_end: u64,
    compression: Compression,
    limits: Limits,
) -> Result<LayerTree, Error> {
    let mut builder = Builder::new(limits, compression);
    let parsed = DocSeed(&mut builder)
        .deserialize(&mut de)
        .and_then(|()| de.end());
    if let Some(e) = builder.error.take() {
        return Err(e);
    }
    parsed.map_err(|e| Error::BadToc(format!("JSON: {e}")))?;
    builder.finish(data_end)
}

struct DocSeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "entries" {
                map.next_value_seed(EntriesSeed(&mut *self.0))?;
            } else {
                // `version` is not checked, as in the reference.
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'b>(&'b mut Builder);

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of TOC entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<TocEntry<'de>>()? {
            if let Err(e) = self.0.push(entry) {
                let msg = e.to_string();
                self.0.error = Some(e);
                return Err(de::Error::custom(msg));
            }
        }
        Ok(())
    }
}

/// A non-chunk entry as read, before names are linked into directories.
struct Pending {
    name: String,
    kind: EntryType,
    mode: u16,
    uid: u32,
    gid: u32,
    uname: u32,
    gname: u32,
    mtime: i64,
    size: u64,
    /// Symlink target as written, or hardlink target cleaned.
    link: StrRef,
    dev: (u32, u32),
    xattr_start: u32,
    xattr_len: u32,
    digest: u32,
    chunk_start: u32,
    chunk_len: u32,
}

struct Builder {
    limits: Limits,
    compression: Compression,
    error: Option<Error>,
    entries_seen: usize,
    /// The last non-chunk entry was dropped: its `chunk` entries go too
    /// (they must not attach to the file before it).
    dropping_chunks: bool,
    pending: Vec<Pending>,
    /// Cleaned name → index into `pending` of the entry that wins.
    by_name: HashMap<String, u32>,
    chunks: Vec<Chunk>,
    digests: Vec<Digest>,
    xattrs: Vec<Xattr>,
    strings: String,
    bytes: Vec<u8>,
    user_names: Vec<StrRef>,
    user_name_ids: HashMap<String, u32>,
    uid_names: HashMap<u32, u32>,
    gid_names: HashMap<u32, u32>,
}

/// Prefixes of the xattrs overlayfs interprets on its layers
/// (`trusted.` normally, `user.` with the `userxattr` mount option):
/// opaque, redirect, metacopy, origin, ... A layer must not carry them to
/// the mount; the opaque-directory meaning comes from `.wh..wh..opq`
/// markers instead (see [`crate::whiteout`]).
pub const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Whether `name` is an overlayfs control xattr.
pub fn is_overlay_xattr(name: &str) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why an xattr from a TOC is not kept, if it is not.
fn xattr_refused(name: &str) -> Option<&'static str> {
    if is_overlay_xattr(name) {
        Some("overlayfs interprets it")
    } else if name.is_empty() {
        Some("an empty name")
    } else if name.contains('\0') {
        // listxattr separates names by NUL: one would split in two.
        Some("a NUL byte in the name")
    } else {
        None
    }
}

fn num<T: TryFrom<i64>>(v: i64, name: &str, field: &str) -> Result<T, Error> {
    T::try_from(v).map_err(|_| Error::entry(name, format!("{field} {v} is out of range")))
}

impl Builder {
    fn new(limits: Limits, compression: Compression) -> Self {
        Builder {
            limits,
            compression,
            error: None,
            entries_seen: 0,
            dropping_chunks: false,
            pending: Vec::new(),
            by_name: HashMap::new(),
            chunks: Vec::new(),
            digests: Vec::new(),
            xattrs: Vec::new(),
            strings: String::new(),
            bytes: Vec::new(),
            user_names: Vec::new(),
            user_name_ids: HashMap::new(),
            uid_names: HashMap::new(),
            gid_names: HashMap::new(),
        }
    }

    fn add_str(&mut self, s: &str) -> Result<StrRef, Error> {
        let off = u32::try_from(self.strings.len()).ok();
        let len = u32::try_from(s.len()).ok();
        match (off, len) {
            (Some(off), Some(len)) if off.checked_add(len).is_some() => {
                self.strings.push_str(s);
                Ok(StrRef { off, len })
            }
            _ => Err(Error::Limit("names take more than 4 GiB".into())),
        }
    }

    fn user_name(&mut self, s: &str) -> Result<u32, Error> {
        if let Some(&id) = self.user_name_ids.get(s) {
            return Ok(id);
        }
        let r = self.add_str(s)?;
        let id = self.user_names.len() as u32;
        self.user_names.push(r);
        self.user_name_ids.insert(s.to_string(), id);
        Ok(id)
    }

    fn add_digest(&mut self, s: Option<&str>, name: &str, field: &str) -> Result<u32, Error> {
        match s {
            None | Some("") => Ok(NO_INDEX),
            Some(s) => {
                let d: Digest = s
                    .parse()
                    .map_err(|e| Error::entry(name, format!("{field}: {e}")))?;
                // Single-chunk files repeat their digest as chunkDigest.
                if self.digests.last() == Some(&d) {
                    return Ok((self.digests.len() - 1) as u32);
                }
                self.digests.push(d);
                Ok((self.digests.len() - 1) as u32)
            }
        }
    }

    fn push(&mut self, e: TocEntry<'_>) -> Result<(), Error> {
        self.entries_seen += 1;
        if self.entries_seen > self.limits.max_entries {
            return Err(Error::Limit(format!(
                "more than {} TOC entries",
                self.limits.max_entries
            )));
        }
        if e.kind == "chunk" {
            if self.dropping_chunks {
                return Ok(());
            }
            return self.push_chunk(&e);
        }
        let clean = name::clean(&e.name);
        self.dropping_chunks = false;
        if let Some(why) = name::refused(&clean).or_else(|| {
            e.link_name
                .as_deref()
                .filter(|l| l.contains('\0'))
                .map(|_| "a link target with a NUL byte")
        }) {
            tracing::warn!(entry = ?clean, reason = why, "TOC entry dropped");
            self.dropping_chunks = true;
            return Ok(());
        }
        let kind = match &*e.kind {
            "reg" => EntryType::Reg,
            "dir" => EntryType::Dir,
            "symlink" => EntryType::Symlink,
            "hardlink" => EntryType::Hardlink,
            "char" => EntryType::Char,
            "block" => EntryType::Block,
            "fifo" => EntryType::Fifo,
            other => return Err(Error::entry(&*e.name, format!("unknown type {other:?}"))),
        };
        if clean.is_empty() && kind != EntryType::Dir {
            return Err(Error::entry(&*e.name, "the root must be a directory"));
        }
        let size: u64 = num(e.size, &clean, "size")?;
        if kind != EntryType::Reg && size != 0 {
            return Err(Error::entry(&clean, "only regular files have a size"));
        }
        let uid: u32 = num(e.uid, &clean, "uid")?;
        let gid: u32 = num(e.gid, &clean, "gid")?;
        if e.mode < 0 {
            return Err(Error::entry(&clean, "negative mode"));
        }
        let uname = match e.user_name.as_deref().filter(|s| !s.is_empty()) {
            Some(n) => {
                let id = self.user_name(n)?;
                self.uid_names.insert(uid, id);
                id
            }
            None => self.uid_names.get(&uid).copied().unwrap_or(NO_INDEX),
        };
        let gname = match e.group_name.as_deref().filter(|s| !s.is_empty()) {
            Some(n) => {
                let id = self.user_name(n)?;
                self.gid_names.insert(gid, id);
                id
            }
            None => self.gid_names.get(&gid).copied().unwrap_or(NO_INDEX),
        };
        let link_raw = e.link_name.as_deref().unwrap_or("");
        let link = match kind {
            EntryType::Symlink => self.add_str(link_raw)?,
            EntryType::Hardlink => self.add_str(&name::clean(link_raw))?,
            _ => StrRef::default(),
        };
        let dev = match kind {
            EntryType::Char | EntryType::Block => (
                num(e.dev_major, &clean, "devMajor")?,
                num(e.dev_minor, &clean, "devMinor")?,
            ),
            _ => (0, 0),
        };
        let xattr_start = self.xattrs.len() as u32;
        for (k, v) in e.xattrs.iter().flatten() {
            if let Some(why) = xattr_refused(k) {
                tracing::warn!(entry = ?clean, xattr = ?k, reason = why, "TOC xattr dropped");
                continue;
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|err| Error::entry(&clean, format!("xattr {k}: {err}")))?;
            let name = self.add_str(k)?;
            let value_off = u32::try_from(self.bytes.len())
                .map_err(|_| Error::Limit("xattr values take more than 4 GiB".into()))?;
            self.bytes.extend_from_slice(&value);
            self.xattrs.push(Xattr {
                name,
                value_off,
                value_len: value.len() as u32,
            });
        }
        let xattr_len = self.xattrs.len() as u32 - xattr_start;
        let digest = if kind == EntryType::Reg {
            self.add_digest(e.digest.as_deref(), &clean, "digest")?
        } else {
            NO_INDEX
        };
        let chunk_start = self.chunks.len() as u32;
        let mut chunk_len = 0;
        if kind == EntryType::Reg && e.offset != 0 && size > 0 {
            let chunk_size = if e.chunk_size == 0 {
                e.size
            } else {
                e.chunk_size
            };
            self.add_chunk(&e, &clean, chunk_size, 0)?;
            chunk_len = 1;
        } else if kind == EntryType::Reg && size > 0 {
            return Err(Error::entry(
                &clean,
                "regular file with content but no offset",
            ));
        }
        let index = u32::try_from(self.pending.len())
            .map_err(|_| Error::Limit("too many entries".into()))?;
        self.pending.push(Pending {
            name: clean.clone(),
            kind,
            mode: (e.mode & 0o7777) as u16,
            uid,
            gid,
            uname,
            gname,
            mtime: parse_mtime(e.mod_time.as_deref()),
            size,
            link,
            dev,
            xattr_start,
            xattr_len,
            digest,
            chunk_start,
            chunk_len,
        });
        // Later duplicates win.
        self.by_name.insert(clean, index);
        Ok(())
    }

    fn add_chunk(
        &mut self,
        e: &TocEntry<'_>,
        name: &str,
        chunk_size: i64,
        chunk_offset: i64,
    ) -> Result<(), Error> {
        if e.offset <= 0 {
            return Err(Error::entry(
                name,
                format!("chunk offset {} is not positive", e.offset),
            ));
        }
        if e.inner_offset < 0 {
            return Err(Error::entry(name, "negative innerOffset"));
        }
        if chunk_size <= 0 {
            return Err(Error::entry(
                name,
                format!("chunk size {chunk_size} is not positive"),
            ));
        }
        let digest = self.add_digest(e.chunk_digest.as_deref(), name, "chunkDigest")?;
        self.chunks.push(Chunk {
            offset: e.offset as u64,
            next_offset: 0,
            inner_offset: e.inner_offset as u64,
            chunk_offset: chunk_offset as u64,
            size: chunk_size as u64,
            digest,
        });
        Ok(())
    }

    fn push_chunk(&mut self, e: &TocEntry<'_>) -> Result<(), Error> {
        let Some(last) = self.pending.last() else {
            return Err(Error::entry(&*e.name, "chunk entry before any file"));
        };
        if last.kind != EntryType::Reg || last.chunk_len == 0 {
            return Err(Error::entry(
                &last.name,
                "chunk entry after an entry without content",
            ));
        }
        let (name, file_size) = (last.name.clone(), last.size as i64);
        if e.chunk_offset <= 0 || e.chunk_offset >= file_size {
            return Err(Error::entry(
                &name,
                format!(
                    "chunkOffset {} outside the file's {file_size} bytes",
                    e.chunk_offset
                ),
            ));
        }
        let size = if e.chunk_size == 0 {
            file_size - e.chunk_offset
        } else {
            e.chunk_size
        };
        self.add_chunk(e, &name, size, e.chunk_offset)?;
        self.pending.last_mut().expect("checked above").chunk_len += 1;
        Ok(())
    }

    fn finish(mut self, data_end: u64) -> Result<LayerTree, Error> {
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

    /// `next_offset` of each chunk: the next member start in TOC order (an
    /// entry with `innerOffset == 0`); the data end for the last. Each
    /// chunk's compressed span must be at most [`MAX_CHUNK_SPAN`], and its
    /// `innerOffset` and size what that span could inflate to.
    fn resolve_next_offsets(&mut self, data_end: u64) -> Result<(), Error> {
        let mut next = data_end;
        for i in (0..self.chunks.len()).rev() {
            let c = &mut self.chunks[i];
            c.next_offset = next;
            let c = *c;
            if c.inner_offset == 0 {
                next = c.offset;
            }
            let why = if c.offset >= c.next_offset {
                format!(
                    "chunk at offset {} does not lie before the next member ({}); data ends at {data_end}",
                    c.offset, c.next_offset
                )
            } else if c.compressed_len() > MAX_CHUNK_SPAN {
                format!(
                    "chunk at offset {} spans {} compressed bytes, more than {MAX_CHUNK_SPAN}",
                    c.offset,
                    c.compressed_len()
                )
            } else if let Err(why) = check_geometry(self.compression, &c) {
                why.to_string()
            } else {
                continue;
            };
            let owner = self
                .pending
                .iter()
                .find(|p| (p.chunk_start..p.chunk_start + p.chunk_len).contains(&(i as u32)));
            return Err(Error::entry(owner.map_or("?", |p| p.name.as_str()), why));
        }
        Ok(())
    }

    /// Every regular file's chunks tile `[0, size)` exactly.
    fn check_chunk_cover(&self) -> Result<(), Error> {
        for p in self.pending.iter().filter(|p| p.kind == EntryType::Reg) {
            let chunks =
                &self.chunks[p.chunk_start as usize..(p.chunk_start + p.chunk_len) as usize];
            let mut at = 0u64;
            for c in chunks {
                if c.chunk_offset != at {
                    return Err(Error::entry(
                        &p.name,
                        format!(
                            "chunk at {} leaves a gap or overlap at {at}",
                            c.chunk_offset
                        ),
                    ));
                }
                at = at
                    .checked_add(c.size)
                    .ok_or_else(|| Error::entry(&p.name, "chunk sizes overflow"))?;
            }
            if at != p.size {
                return Err(Error::entry(
                    &p.name,
                    format!("chunks cover {at} bytes of a {}-byte file", p.size),
                ));
            }
        }
        Ok(())
    }
}

/// Links the winning entries into directories, creating implicit parents.
///
/// Linear in the total name bytes, however deep the paths: parents are
/// found by walking down one component at a time through a (parent, name)
/// map, with explicit entries registered shallowest first so that a
/// missing component is always an implicit directory.
struct Linker<'p> {
    nodes: Vec<Node>,
    dirents: Vec<Dirent>,
    /// Pending index → node id, for winners.
    node_of: Vec<NodeId>,
    /// (directory, component) → what the name resolves to.
    children: HashMap<(NodeId, &'p str), NodeId>,
    pending: &'p [Pending],
    by_name: &'p HashMap<String, u32>,
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

    fn link_all(&mut self, b: &mut Builder) -> Result<(), Error> {
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
fn sort_children(tree: &mut LayerTree) {
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

/// RFC 3339 to seconds; an absent or unparsable time is 0, as the
/// reference ignores the parse error.
fn parse_mtime(s: Option<&str>) -> i64 {
    s.and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    })
    .map_or(0, |t| t.unix_timestamp())
}

/// Seconds to the TOC's RFC 3339 form (UTC, whole seconds); `None` for 0,
/// which the writer omits.
pub fn format_mtime(secs: i64) -> Option<String> {
    if secs == 0 {
        return None;
    }
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_entries(entries: serde_json::Value) -> Result<LayerTree, Error> {
        let doc = json!({ "version": 1, "entries": entries, "unknownKey": [1, 2] });
        let json = serde_json::to_vec(&doc).unwrap();
        let tree = parse(&json, 1 << 20, Compression::Gzip, Limits::default());
        // The streaming parser agrees with the in-memory one.
        let streamed = parse_reader(&json[..], 1 << 20, Compression::Gzip, Limits::default());
        match (&tree, &streamed) {
            (Ok(a), Ok(b)) => assert_eq!(a.walk(), b.walk()),
            (Err(a), Err(b)) => assert_eq!(
                a.to_string().split(" at line ").next(),
                b.to_string().split(" at line ").next()
            ),
            _ => panic!("parse and parse_reader disagree: {tree:?} vs {streamed:?}"),
        }
        tree
    }

    fn reason(entries: serde_json::Value) -> String {
        parse_entries(entries)
            .expect_err("must be refused")
            .to_string()
    }

    const D: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn hostile_numbers_are_refused_with_a_reason() {
        for (entries, needle) in [
            (
                json!([{"name": "a", "type": "reg", "size": 5, "offset": -3}]),
                "not positive",
            ),
            (
                json!([{"name": "a", "type": "reg", "size": 5, "offset": 1u64 << 40}]),
                "does not lie before",
            ),
            (json!([{"name": "a", "type": "reg", "size": -5}]), "size -5"),
            (
                json!([{"name": "a", "type": "reg", "size": 100, "offset": 10, "chunkSize": 10}]),
                "cover 10 bytes",
            ),
            (
                json!([{"name": "a", "type": "reg", "size": 20, "offset": 10, "chunkSize": 10},
                       {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 5, "chunkSize": 15}]),
                "gap or overlap",
            ),
            (
                json!([{"name": "a", "type": "reg", "size": 20, "offset": 10, "chunkSize": 10},
                       {"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 30}]),
                "outside the file",
            ),
            (
                json!([{"name": "a", "type": "chunk", "offset": 20, "chunkOffset": 5}]),
                "before any file",
            ),
            (
                json!([{"name": "a", "type": "reg", "size": 3}]),
                "no offset",
            ),
            (
                json!([{"name": "a", "type": "char", "devMajor": 1u64 << 40}]),
                "out of range",
            ),
            (json!([{"name": "a", "type": "reg", "uid": -1}]), "uid -1"),
            (json!([{"name": "a", "type": "socket"}]), "unknown type"),
            (
                json!([{"name": "./", "type": "reg"}]),
                "root must be a directory",
            ),
            (
                json!([{"name": "x", "type": "dir", "xattrs": {"user.a": "!!"}}]),
                "xattr user.a",
            ),
            (
                json!([{"name": "a", "type": "reg", "digest": "md5:00"}]),
                "digest",
            ),
            (
                json!([{"name": "a", "type": "hardlink", "linkName": "b"},
                    {"name": "b", "type": "hardlink", "linkName": "a"}]),
                "cycle",
            ),
            (
                json!([{"name": "d", "type": "dir"}, {"name": "l", "type": "hardlink", "linkName": "d"}]),
                "directory",
            ),
            (
                json!([{"name": "f", "type": "reg"}, {"name": "f/child", "type": "reg"}]),
                "not a directory",
            ),
            (
                json!([{"name": "d", "type": "dir", "size": 4}]),
                "only regular files",
            ),
        ] {
            let got = reason(entries.clone());
            assert!(got.contains(needle), "{entries}: {got}");
        }
    }

    #[test]
    fn absurd_counts_hit_the_limit_not_memory() {
        let entries: Vec<_> = (0..50)
            .map(|i| json!({"name": format!("f{i}"), "type": "reg"}))
            .collect();
        let doc = serde_json::to_vec(&json!({ "entries": entries })).unwrap();
        let err = parse(&doc, 1 << 20, Compression::Gzip, Limits { max_entries: 10 }).unwrap_err();
        assert!(matches!(err, Error::Limit(_)), "{err}");
    }

    #[test]
    fn structure_follows_the_reference_rules() {
        let tree = parse_entries(json!([
            {"name": "./", "type": "dir", "mode": 0o40700, "uid": 5},
            {"name": "d", "type": "dir", "mode": 0o700},
            {"name": "d/f", "type": "reg", "size": 4, "offset": 10, "digest": D, "chunkDigest": D, "userName": "u", "uid": 7},
            {"name": "d/", "type": "dir", "mode": 0o755},
            {"name": "../../../x/y", "type": "symlink", "linkName": "../../etc"},
            {"name": "h1", "type": "hardlink", "linkName": "./h2"},
            {"name": "h2", "type": "hardlink", "linkName": "d/f"},
            {"name": "g", "type": "reg", "uid": 7},
            {"name": "bar/../bar///////foo", "type": "fifo"},
        ]))
        .unwrap();
        let root = tree.node(NodeId::ROOT);
        assert_eq!((root.mode(), root.uid()), (0o700, 5));
        // The later `d/` wins and keeps the children added under the earlier one.
        let d = tree.lookup_path("d").unwrap();
        assert_eq!(tree.node(d).mode(), 0o755);
        let f = tree.lookup_path("d/f").unwrap();
        assert_eq!(tree.lookup_path("h1"), Some(f));
        assert_eq!(tree.lookup_path("h2"), Some(f));
        assert_eq!(tree.node(f).nlink(), 3);
        // Names: cleaned into the root; symlink targets kept as written.
        let y = tree.lookup_path("x/y").unwrap();
        assert_eq!(tree.link_target(y), Some("../../etc"));
        assert_eq!(tree.node(tree.lookup_path("x").unwrap()).mode(), 0o755);
        assert!(tree.lookup_path("bar/foo").is_some());
        // User names back-filled by uid.
        assert_eq!(tree.uname(tree.lookup_path("g").unwrap()), Some("u"));
        // Link counts: root has d, x, bar as subdirectories.
        assert_eq!(tree.node(NodeId::ROOT).nlink(), 2 + 3);
        assert_eq!(tree.node(d).nlink(), 2);
        // Chunk lookup edges.
        assert_eq!(tree.chunk_index_at(f, 0), Some(0));
        assert_eq!(tree.chunk_index_at(f, 3), Some(0));
        assert_eq!(tree.chunk_index_at(f, 4), None);
        assert_eq!(tree.chunks(f)[0].next_offset, 1 << 20);
    }

    #[test]
    fn trailing_bytes_after_the_json_are_refused() {
        for p in [parse, |j: &[u8], d, c, l| parse_reader(j, d, c, l)] {
            assert!(
                p(
                    b"{\"entries\":[]} x",
                    10,
                    Compression::Gzip,
                    Limits::default()
                )
                .is_err()
            );
            assert!(
                p(
                    b"{\"entries\":[]}\n\t ",
                    10,
                    Compression::Gzip,
                    Limits::default()
                )
                .is_ok()
            );
        }
    }

    #[test]
    fn impossible_inner_offsets_are_refused_at_validation() {
        // #14: 1<<46 made the inflate scratch buffer ask for 64 TiB;
        // i64::MAX overflowed its capacity. Both are refused here, as is
        // an offset the member's compressed bytes could not inflate to.
        for (inner, size, next, needle) in [
            (
                1i64 << 46,
                10i64,
                20i64,
                "innerOffset 70368744177664 exceeds",
            ),
            (i64::MAX, 10, 20, "exceeds"),
            (1 << 20, 10, 20, "inflates to at most"),
            (0, 1 << 30, 20, "inflates to at most"),
        ] {
            let got = reason(json!([
                {"name": "a", "type": "reg", "size": 1, "offset": 10, "digest": D},
                {"name": "b", "type": "reg", "size": size, "offset": 10, "innerOffset": inner},
                {"name": "c", "type": "reg", "size": 1, "offset": next},
            ]));
            assert!(got.contains(needle), "{inner}: {got}");
            assert!(got.contains("\"b\""), "names the entry: {got}");
        }
        // A packed member that could hold it is fine: 10 compressed bytes
        // of gzip stand for up to 10 320.
        parse_entries(json!([
            {"name": "a", "type": "reg", "size": 1, "offset": 10},
            {"name": "b", "type": "reg", "size": 100, "offset": 10, "innerOffset": 10_000},
            {"name": "c", "type": "reg", "size": 1, "offset": 20},
        ]))
        .unwrap();
    }

    #[test]
    fn chunk_spans_are_bounded() {
        let end = 2 * MAX_CHUNK_SPAN;
        let json = |second: u64| {
            serde_json::to_vec(&json!({"entries": [
                {"name": "a", "type": "reg", "size": 1, "offset": 10},
                {"name": "b", "type": "reg", "size": 1, "offset": second},
            ]}))
            .unwrap()
        };
        // a spans [10, 10 + MAX_CHUNK_SPAN + 1): one byte too many.
        let err = parse(
            &json(11 + MAX_CHUNK_SPAN),
            end,
            Compression::Gzip,
            Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::BadEntry { name, reason } if name == "a" && reason.contains("spans")),
            "{err}"
        );
        // The last chunk's span ends at the data end.
        let err = parse(&json(20), end, Compression::Zstd, Limits::default()).unwrap_err();
        assert!(
            matches!(&err, Error::BadEntry { name, .. } if name == "b"),
            "{err}"
        );
        parse(
            &json(10 + MAX_CHUNK_SPAN),
            20 + MAX_CHUNK_SPAN,
            Compression::Gzip,
            Limits::default(),
        )
        .unwrap();
    }

    #[test]
    fn overlay_xattrs_never_reach_the_tree() {
        let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
        let tree = parse_entries(json!([
            {"name": "d", "type": "dir", "xattrs": {
                "trusted.overlay.opaque": b64("y"),
                "trusted.overlay.redirect": b64("/etc"),
                "trusted.overlay.metacopy": "",
                "trusted.overlay.origin": b64("x"),
                "user.overlay.redirect": b64("/etc"),
                "user.keep": b64("1"),
                "security.capability": b64("c"),
                "user.bad\u{0}name": b64("z"),
                "": b64("z"),
            }},
        ]))
        .unwrap();
        let d = tree.lookup_path("d").unwrap();
        let names: Vec<&str> = tree.xattrs(d).map(|(k, _)| k).collect();
        assert_eq!(names, ["security.capability", "user.keep"]);
    }

    #[test]
    fn bad_names_are_dropped_not_listed() {
        let tree = parse_entries(json!([
            {"name": "ok", "type": "reg", "size": 2, "offset": 10, "chunkSize": 1},
            {"name": "ok", "type": "chunk", "offset": 20, "chunkOffset": 1},
            {"name": "nul\u{0}name", "type": "reg", "size": 4, "offset": 30, "chunkSize": 2},
            // These chunks belonged to the dropped file, not to `ok`.
            {"name": "nul\u{0}name", "type": "chunk", "offset": 40, "chunkOffset": 2},
            {"name": "d/.wh..", "type": "reg"},
            {"name": "d/.wh...", "type": "reg"},
            {"name": "d/.wh.", "type": "reg"},
            {"name": ".wh../under", "type": "reg"},
            {"name": "dir\u{0}/child", "type": "dir"},
            {"name": "link", "type": "symlink", "linkName": "a\u{0}b"},
            {"name": "d/.wh.gone", "type": "reg"},
        ]))
        .unwrap();
        let root: Vec<&str> = tree.children(NodeId::ROOT).map(|(n, _)| n).collect();
        assert_eq!(root, ["d", "ok"]);
        let ok = tree.lookup_path("ok").unwrap();
        assert_eq!(tree.chunks(ok).len(), 2);
        let d = tree.lookup_path("d").unwrap();
        let view: Vec<(&str, bool)> = crate::whiteout::entries_from(&tree, d, 0)
            .map(|(_, e)| (e.name, e.whiteout))
            .collect();
        assert_eq!(view, [("gone", true)]);
        assert!(crate::whiteout::lookup(&tree, d, ".").is_none());
        assert!(crate::whiteout::lookup(&tree, d, "..").is_none());
    }

    #[test]
    fn mtimes_round_trip() {
        for t in [1, 1_700_000_000, -86_400, 253_402_300_799] {
            assert_eq!(parse_mtime(format_mtime(t).as_deref()), t);
        }
        assert_eq!(format_mtime(0), None);
        assert_eq!(parse_mtime(Some("not a time")), 0);
        assert_eq!(
            parse_mtime(Some("2024-01-02T03:04:05.5+01:00")),
            1_704_161_045
        );
    }
}
