//! tar (plain, gzip or zstd) → eStargz, as the reference `estargz.Build`
//! lays it out (estargz-format.md §2, §5.1, §7, §11), single-threaded so
//! the same input always gives the same bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use base64::Engine as _;

use crate::blob::BlobRead;
use crate::digest::{Digest, Hasher};
use crate::footer::Footer;
use crate::limits::MAX_CHUNK_SPAN;
use crate::name;
use crate::tar::{self, Entry, EntryType, Located, Scanner, TarError};
use crate::toc::{self, TOC_NAME, TocDocument, TocEntry};
use crate::tree::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};

/// The single byte a landmark file holds.
pub const LANDMARK_CONTENT: u8 = 0x0f;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("input tar: {0}")]
    Tar(#[from] TarError),
    #[error("prioritized file {0:?} is not in the layer")]
    MissingPrioritized(String),
    #[error("bad option: {0}")]
    Option(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Build options.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed bytes per chunk (reference default 4 MiB).
    pub chunk_size: u64,
    /// gzip level, 0 (store) to 12 (libdeflate's best); reference default 9.
    pub compression_level: i32,
    /// Files to put first, in this order, before `.prefetch.landmark`.
    pub prioritized: Vec<String>,
    /// Record missing prioritized files instead of failing.
    pub allow_missing_prioritized: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: 4 << 20,
            compression_level: 9,
            prioritized: Vec::new(),
            allow_missing_prioritized: false,
        }
    }
}

/// What a build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub blob_size: u64,
    pub blob_digest: Digest,
    /// The `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: Digest,
    /// sha256 of the whole decompressed blob: the layer's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Prioritized names that were not found (with `allow_missing_prioritized`).
    pub missing_prioritized: Vec<String>,
}

/// Largest chunk size the writer takes: half of what a reader accepts as
/// one member's compressed span ([`MAX_CHUNK_SPAN`]), leaving the other
/// half for deflate's expansion of incompressible data and the headers
/// that share the last chunk's member.
pub const MAX_WRITER_CHUNK_SIZE: u64 = MAX_CHUNK_SPAN / 2;

/// Converts a tar stream into an eStargz blob written to `out`.
pub fn build(input: impl Read, out: impl Write, opts: &WriterOptions) -> Result<Built, WriteError> {
    if opts.chunk_size == 0 {
        return Err(WriteError::Option("chunk size must be positive".into()));
    }
    if opts.chunk_size > MAX_WRITER_CHUNK_SIZE {
        return Err(WriteError::Option(format!(
            "chunk size {} exceeds {MAX_WRITER_CHUNK_SIZE}: readers refuse members spanning more than {MAX_CHUNK_SPAN} bytes",
            opts.chunk_size
        )));
    }
    if !(0..=12).contains(&opts.compression_level) {
        return Err(WriteError::Option(format!(
            "compression level {} is outside 0..=12",
            opts.compression_level
        )));
    }
    let (spool, len) = spool_tar(input)?;
    let entries = read_entries(&spool, len)?;
    let (order, missing) = order_entries(&entries, opts)?;
    let mut w = MemberWriter::new(out, opts.compression_level)?;
    let mut toc_entries: Vec<TocEntry<'static>> = Vec::new();
    let mut names = NameEmitter::default();
    let landmark_entry = |name: &str| Entry {
        name: name.to_string(),
        entry_type: Some(EntryType::Reg),
        size: 1,
        ..Entry::default()
    };
    for item in order {
        match item {
            Item::Input(i) => {
                let Located {
                    entry, data_offset, ..
                } = &entries[i];
                write_entry(
                    &mut w,
                    &mut toc_entries,
                    &mut names,
                    entry,
                    &Payload::Spool(&spool, *data_offset),
                    opts,
                )?;
            }
            Item::Landmark(name) => {
                write_entry(
                    &mut w,
                    &mut toc_entries,
                    &mut names,
                    &landmark_entry(name),
                    &Payload::Bytes(&[LANDMARK_CONTENT]),
                    opts,
                )?;
            }
        }
    }
    w.finish_member()?;
    let toc_offset = w.written;
    let json = TocDocument {
        version: 1,
        entries: toc_entries,
    }
    .to_json();
    let toc_digest = Digest::of(&json);
    let toc_header = Entry {
        name: TOC_NAME.to_string(),
        entry_type: Some(EntryType::Reg),
        size: json.len() as u64,
        ..Entry::default()
    };
    w.append(&tar::encode_header(&toc_header));
    w.append(&json);
    w.append(&vec![0u8; tar::padding(json.len() as u64)]);
    w.append(&[0u8; 2 * tar::BLOCK]);
    w.finish_member()?;
    w.write_raw(&Footer::Estargz { toc_offset }.encode())?;
    let (blob_size, blob_digest, diff_id) = w.close()?;
    Ok(Built {
        blob_size,
        blob_digest,
        toc_digest,
        diff_id,
        missing_prioritized: missing,
    })
}

/// [`build`] into memory.
pub fn build_to_vec(
    input: impl Read,
    opts: &WriterOptions,
) -> Result<(Vec<u8>, Built), WriteError> {
    let mut blob = Vec::new();
    let built = build(input, &mut blob, opts)?;
    Ok((blob, built))
}

/// Decompresses the input (by magic) into a temporary file, so entries can
/// be reordered without holding the layer in memory.
fn spool_tar(mut input: impl Read) -> Result<(File, u64), WriteError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match input.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let joined = head.chain(input);
    let mut reader: Box<dyn Read> = if magic[..n].starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(joined))
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(joined)?)
    } else {
        Box::new(joined)
    };
    let mut spool = tempfile::tempfile()?;
    let len = io::copy(&mut reader, &mut spool)?;
    Ok((spool, len))
}

fn read_entries(spool: &File, len: u64) -> Result<Vec<Located>, WriteError> {
    let mut scanner = Scanner::new(spool, len);
    let mut all = Vec::new();
    while let Some(e) = scanner.next_entry()? {
        all.push(e);
    }
    // Drop a previous TOC and root landmarks; later duplicates win, at the
    // position of the last occurrence.
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        last.insert(name::clean(&e.entry.name), i);
    }
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(i, e)| {
            let clean = name::clean(&e.entry.name);
            last.get(&clean) == Some(i)
                && clean != TOC_NAME
                && clean != PREFETCH_LANDMARK
                && clean != NO_PREFETCH_LANDMARK
        })
        .map(|(_, e)| e)
        .collect())
}

enum Item {
    Input(usize),
    Landmark(&'static str),
}

/// Prioritized files first (each after its not-yet-written parents and
/// hardlink target), then the landmark, then the rest in input order. No
/// prioritized files: `.no.prefetch.landmark` first.
fn order_entries(
    entries: &[Located],
    opts: &WriterOptions,
) -> Result<(Vec<Item>, Vec<String>), WriteError> {
    if opts.prioritized.is_empty() {
        let mut out = vec![Item::Landmark(NO_PREFETCH_LANDMARK)];
        out.extend((0..entries.len()).map(Item::Input));
        return Ok((out, Vec::new()));
    }
    let by_name: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (name::clean(&e.entry.name), i))
        .collect();
    let mut emitted: HashSet<usize> = HashSet::new();
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for p in &opts.prioritized {
        let clean = name::clean(p);
        let Some(&i) = by_name.get(&clean) else {
            if opts.allow_missing_prioritized {
                missing.push(p.clone());
                continue;
            }
            return Err(WriteError::MissingPrioritized(p.clone()));
        };
        // Iterative: parents, then hardlink targets (and their parents).
        let mut want = vec![i];
        while let Some(&top) = want.last() {
            let e = &entries[top].entry;
            let clean = name::clean(&e.name);
            let mut deps: Vec<usize> = Vec::new();
            let mut dir = name::parent(&clean);
            while !dir.is_empty() {
                if let Some(&d) = by_name.get(dir) {
                    deps.push(d);
                }
                dir = name::parent(dir);
            }
            if e.kind() == EntryType::Hardlink
                && let Some(&t) = by_name.get(&name::clean(&e.link_name))
            {
                deps.push(t);
            }
            match deps
                .into_iter()
                .rev()
                .find(|d| !emitted.contains(d) && !want.contains(d))
            {
                Some(d) => want.push(d),
                None => {
                    want.pop();
                    if emitted.insert(top) {
                        out.push(Item::Input(top));
                    }
                }
            }
        }
    }
    out.push(Item::Landmark(PREFETCH_LANDMARK));
    out.extend(
        (0..entries.len())
            .filter(|i| !emitted.contains(i))
            .map(Item::Input),
    );
    Ok((out, missing))
}

enum Payload<'a> {
    Spool(&'a File, u64),
    Bytes(&'a [u8]),
}

impl Payload<'_> {
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Payload::Spool(f, base) => f.read_at(base + offset, len),
            Payload::Bytes(b) => b.read_at(offset, len),
        }
    }
}

/// The reference emits a user/group name only when it differs from the
/// last one it emitted for the same id; readers back-fill the rest.
#[derive(Default)]
struct NameEmitter {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

fn emit_name(seen: &mut HashMap<u32, String>, id: u32, name: &str) -> Option<Cow<'static, str>> {
    if name.is_empty() || seen.get(&id).map(String::as_str) == Some(name) {
        return None;
    }
    seen.insert(id, name.to_string());
    Some(Cow::Owned(name.to_string()))
}

fn write_entry<W: Write>(
    w: &mut MemberWriter<W>,
    toc: &mut Vec<TocEntry<'static>>,
    names: &mut NameEmitter,
    e: &Entry,
    payload: &Payload<'_>,
    opts: &WriterOptions,
) -> Result<(), WriteError> {
    let kind = e.kind();
    let mut te = TocEntry {
        name: Cow::Owned(e.name.clone()),
        kind: Cow::Borrowed(kind.toc_name()),
        mod_time: toc::format_mtime(e.mtime).map(Cow::Owned),
        mode: i64::from(e.mode),
        uid: i64::from(e.uid),
        gid: i64::from(e.gid),
        user_name: emit_name(&mut names.users, e.uid, &e.uname),
        group_name: emit_name(&mut names.groups, e.gid, &e.gname),
        ..TocEntry::default()
    };
    if matches!(kind, EntryType::Symlink | EntryType::Hardlink) {
        te.link_name = Some(Cow::Owned(e.link_name.clone()));
    }
    if matches!(kind, EntryType::Char | EntryType::Block) {
        te.dev_major = i64::from(e.dev_major);
        te.dev_minor = i64::from(e.dev_minor);
    }
    if !e.xattrs.is_empty() {
        let map: BTreeMap<Cow<'static, str>, Cow<'static, str>> = e
            .xattrs
            .iter()
            .map(|(k, v)| {
                (
                    Cow::Owned(k.clone()),
                    Cow::Owned(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        te.xattrs = Some(map);
    }
    w.append(&tar::encode_header(e));
    if kind != EntryType::Reg {
        toc.push(te);
        return Ok(());
    }
    te.size = e.size as i64;
    let mut file_hash = Hasher::new();
    let mut chunks: Vec<TocEntry<'static>> = Vec::new();
    let mut at = 0u64;
    while at < e.size {
        let len = opts.chunk_size.min(e.size - at);
        let data = payload.read(at, len as usize)?;
        file_hash.update(&data);
        // Every chunk starts its own member.
        w.finish_member()?;
        let offset = w.written as i64;
        w.append(&data);
        let chunk_digest = Some(Cow::Owned(Digest::of(&data).to_string()));
        let chunk_size = if len == opts.chunk_size {
            len as i64
        } else {
            0
        };
        if at == 0 {
            te.offset = offset;
            te.chunk_size = chunk_size;
            te.chunk_digest = chunk_digest;
        } else {
            chunks.push(TocEntry {
                name: Cow::Owned(e.name.clone()),
                kind: Cow::Borrowed("chunk"),
                offset,
                chunk_offset: at as i64,
                chunk_size,
                chunk_digest,
                ..TocEntry::default()
            });
        }
        at += len;
    }
    w.append(&vec![0u8; tar::padding(e.size)]);
    te.digest = Some(Cow::Owned(file_hash.finish().to_string()));
    toc.push(te);
    toc.append(&mut chunks);
    Ok(())
}

/// Writes gzip members: uncompressed bytes gather in a buffer and become
/// one member when a new one must start. Tracks the compressed offset, the
/// blob digest and the DiffID (digest of everything uncompressed).
struct MemberWriter<W: Write> {
    out: BufWriter<W>,
    compressor: libdeflater::Compressor,
    pending: Vec<u8>,
    compressed: Vec<u8>,
    written: u64,
    blob_hash: Hasher,
    diff_hash: Hasher,
}

impl<W: Write> MemberWriter<W> {
    fn new(out: W, level: i32) -> Result<Self, WriteError> {
        let lvl = libdeflater::CompressionLvl::new(level)
            .map_err(|_| WriteError::Option(format!("compression level {level}")))?;
        Ok(MemberWriter {
            out: BufWriter::new(out),
            compressor: libdeflater::Compressor::new(lvl),
            pending: Vec::new(),
            compressed: Vec::new(),
            written: 0,
            blob_hash: Hasher::new(),
            diff_hash: Hasher::new(),
        })
    }

    fn append(&mut self, data: &[u8]) {
        self.diff_hash.update(data);
        self.pending.extend_from_slice(data);
    }

    fn finish_member(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bound = self.compressor.gzip_compress_bound(self.pending.len());
        self.compressed.resize(bound, 0);
        let n = self
            .compressor
            .gzip_compress(&self.pending, &mut self.compressed)
            .map_err(|e| io::Error::other(format!("gzip: {e}")))?;
        let member = std::mem::take(&mut self.compressed);
        self.write_raw(&member[..n])?;
        self.compressed = member;
        self.pending.clear();
        Ok(())
    }

    fn write_raw(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(data)?;
        self.blob_hash.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn close(self) -> Result<(u64, Digest, Digest), WriteError> {
        let mut out = self.out;
        out.flush()?;
        Ok((
            self.written,
            self.blob_hash.finish(),
            self.diff_hash.finish(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, OpenOptions};
    use crate::tree::NodeId;

    fn tar_of(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let e = Entry {
                name: name.to_string(),
                entry_type: Some(*kind),
                mode: 0o644,
                size: data.len() as u64,
                link_name: link.to_string(),
                mtime: 1_700_000_000,
                ..Entry::default()
            };
            out.extend(tar::encode_header(&e));
            out.extend_from_slice(data);
            out.resize(out.len() + tar::padding(data.len() as u64), 0);
        }
        out
    }

    fn toc_names(blob: &[u8]) -> Vec<String> {
        let layer = Layer::open(blob, blob.len() as u64, &OpenOptions::default()).unwrap();
        // Rebuild TOC order from chunk offsets: members are in TOC order.
        let mut files: Vec<(u64, String)> = layer
            .tree
            .walk()
            .into_iter()
            .filter_map(|(name, id)| layer.tree.chunks(id).first().map(|c| (c.offset, name)))
            .collect();
        files.sort();
        files.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn prioritized_files_come_first_with_their_dependencies() {
        let tar = tar_of(&[
            ("a/one", EntryType::Reg, b"1", ""),
            ("b/", EntryType::Dir, b"", ""),
            ("b/two", EntryType::Reg, b"22", ""),
            ("c/link", EntryType::Hardlink, b"", "a/one"),
            ("d", EntryType::Reg, b"4444", ""),
        ]);
        let opts = WriterOptions {
            prioritized: vec!["c/link".into(), "./b/two".into()],
            ..WriterOptions::default()
        };
        let (blob, _) = build_to_vec(&tar[..], &opts).unwrap();
        // a/one (link target) before the landmark, then b/two, then the rest.
        assert_eq!(toc_names(&blob), ["a/one", "b/two", PREFETCH_LANDMARK, "d"]);
        let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
        let lm = layer.tree.prefetch_landmark().unwrap();
        let range = layer.tree.prefetch_range().unwrap();
        assert_eq!(range, layer.tree.chunks(lm)[0].offset);
        let two = layer.tree.lookup_path("b/two").unwrap();
        assert!(layer.tree.chunks(two)[0].next_offset <= range);
        assert!(!layer.tree.has_no_prefetch_landmark());
    }

    #[test]
    fn no_prioritized_files_put_the_no_prefetch_landmark_first() {
        let tar = tar_of(&[("x", EntryType::Reg, b"x", "")]);
        let (blob, _) = build_to_vec(&tar[..], &WriterOptions::default()).unwrap();
        assert_eq!(toc_names(&blob), [NO_PREFETCH_LANDMARK, "x"]);
    }

    #[test]
    fn missing_prioritized_is_an_error_unless_allowed() {
        let tar = tar_of(&[("x", EntryType::Reg, b"x", "")]);
        let mut opts = WriterOptions {
            prioritized: vec!["nope".into()],
            ..WriterOptions::default()
        };
        assert!(matches!(
            build_to_vec(&tar[..], &opts),
            Err(WriteError::MissingPrioritized(_))
        ));
        opts.allow_missing_prioritized = true;
        let (_, built) = build_to_vec(&tar[..], &opts).unwrap();
        assert_eq!(built.missing_prioritized, ["nope"]);
    }

    #[test]
    fn old_toc_and_landmarks_are_dropped_and_duplicates_last_win() {
        let tar = tar_of(&[
            ("stargz.index.json", EntryType::Reg, b"{}", ""),
            ("./.prefetch.landmark", EntryType::Reg, b"\x0f", ""),
            ("sub/.prefetch.landmark", EntryType::Reg, b"kept", ""),
            ("f", EntryType::Reg, b"old", ""),
            ("g", EntryType::Reg, b"g", ""),
            ("./f", EntryType::Reg, b"new", ""),
        ]);
        let (blob, _) = build_to_vec(&tar[..], &WriterOptions::default()).unwrap();
        assert_eq!(
            toc_names(&blob),
            [NO_PREFETCH_LANDMARK, "sub/.prefetch.landmark", "g", "f"]
        );
        let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
        assert!(layer.tree.lookup(NodeId::ROOT, TOC_NAME).is_none());
        assert!(layer.tree.prefetch_landmark().is_none());
    }

    #[test]
    fn chunk_sizes_readers_would_refuse_are_refused() {
        let tar = tar_of(&[("f", EntryType::Reg, b"x", "")]);
        for chunk_size in [MAX_WRITER_CHUNK_SIZE + 1, u64::MAX] {
            let opts = WriterOptions {
                chunk_size,
                ..WriterOptions::default()
            };
            assert!(matches!(
                build_to_vec(&tar[..], &opts),
                Err(WriteError::Option(_))
            ));
        }
    }

    #[test]
    fn chunk_size_field_follows_the_reference() {
        let data = vec![7u8; 10];
        let tar = tar_of(&[
            ("f", EntryType::Reg, &data, ""),
            ("e", EntryType::Reg, &data[..8], ""),
        ]);
        let opts = WriterOptions {
            chunk_size: 4,
            ..WriterOptions::default()
        };
        let (blob, _) = build_to_vec(&tar[..], &opts).unwrap();
        let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
        let sizes = |p: &str| -> Vec<u64> {
            let id = layer.tree.lookup_path(p).unwrap();
            layer.tree.chunks(id).iter().map(|c| c.size).collect()
        };
        assert_eq!(sizes("f"), [4, 4, 2]);
        assert_eq!(sizes("e"), [4, 4]);
        // The raw TOC: the short tail chunk omits chunkSize; a full last one keeps it.
        let Footer::Estargz { toc_offset } = layer.footer else {
            unreachable!("the writer emits eStargz footers")
        };
        let mut json = String::new();
        flate2::read::GzDecoder::new(&blob[toc_offset as usize..])
            .read_to_string(&mut json)
            .unwrap();
        assert_eq!(json.matches("\"chunkSize\": 4").count(), 4, "{json}");
        assert!(json.contains("\t\"version\": 1"));
    }
}
