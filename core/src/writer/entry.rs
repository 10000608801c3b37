//! One entry into the blob: its tar header, each chunk of its payload as
//! a member of its own, and its TOC entries (the reference's fields and
//! omissions).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write};

use base64::Engine as _;

use super::member::MemberWriter;
use super::{WriteError, WriterOptions};
use crate::blob::BlobRead;
use crate::digest::{Digest, Hasher};
use crate::tar::{self, Entry, EntryType, TarError, TarStream};
use crate::toc::{self, TocEntry};

/// Where an entry's payload is read from.
pub(super) enum Payload<'a> {
    /// A spool file, from this offset.
    Spool(&'a File, u64),
    Bytes(&'a [u8]),
    /// The input stream, positioned at the payload (read in order).
    Stream(&'a mut dyn ReadPayload),
}

/// A stream positioned at an entry's payload.
pub(super) trait ReadPayload {
    /// The next `buf.len()` bytes of the payload.
    fn read_payload(&mut self, buf: &mut [u8]) -> Result<(), TarError>;
}

impl<R: io::Read> ReadPayload for TarStream<R> {
    fn read_payload(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        TarStream::read_payload(self, buf)
    }
}

impl Payload<'_> {
    /// `len` bytes at `offset` of the payload; a stream is read in order,
    /// so `offset` must be where the last read ended.
    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, WriteError> {
        Ok(match self {
            Payload::Spool(f, base) => f.read_at(*base + offset, len)?,
            Payload::Bytes(b) => b.read_at(offset, len)?,
            Payload::Stream(s) => {
                let mut buf = vec![0u8; len];
                s.read_payload(&mut buf)?;
                buf
            }
        })
    }
}

/// The TOC as entries are written: its entries, the members whose
/// compressed offsets they need (known once every member is written),
/// and the names emitted so far.
#[derive(Default)]
pub(super) struct TocBuilder {
    entries: Vec<TocEntry<'static>>,
    /// (entry index, member index) of each entry with an offset.
    offsets: Vec<(usize, u64)>,
    names: NameEmitter,
}

impl TocBuilder {
    /// The entries with their offsets filled in from each member's
    /// compressed offset.
    pub(super) fn finish(self, member_offsets: &[u64]) -> Vec<TocEntry<'static>> {
        let mut entries = self.entries;
        for (entry, member) in self.offsets {
            entries[entry].offset = member_offsets[member as usize] as i64;
        }
        entries
    }
}

/// The reference emits a user/group name only when it differs from the
/// last one it emitted for the same id; readers back-fill the rest.
#[derive(Default)]
pub(super) struct NameEmitter {
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

/// Writes entry `e` (its header, and a regular file's payload from
/// `payload` in chunks of `opts.chunk_size`, each a member of its own)
/// and appends its TOC entries.
pub(super) fn write_entry<W: Write>(
    w: &mut MemberWriter<W>,
    toc: &mut TocBuilder,
    e: &Entry,
    mut payload: Payload<'_>,
    opts: &WriterOptions,
) -> Result<(), WriteError> {
    let mut te = toc_entry(e, &mut toc.names);
    w.append(&tar::encode_header(e));
    if e.kind() != EntryType::Reg {
        toc.entries.push(te);
        return Ok(());
    }
    te.size = e.size as i64;
    let first = toc.entries.len();
    let (chunks, members) = write_chunks(w, &mut te, e, &mut payload, opts)?;
    w.append(&vec![0u8; tar::padding(e.size)]);
    toc.entries.push(te);
    toc.entries.extend(chunks);
    toc.offsets
        .extend(members.into_iter().enumerate().map(|(i, m)| (first + i, m)));
    Ok(())
}

/// The TOC entry of `e` but for its content (size, chunks, digest).
fn toc_entry(e: &Entry, names: &mut NameEmitter) -> TocEntry<'static> {
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
    te
}

/// Writes a regular file's payload, each chunk a member of its own: the
/// first chunk and the file's digest go into `te`, the others are
/// returned as `chunk` entries; with the member of each chunk, in order.
fn write_chunks<W: Write>(
    w: &mut MemberWriter<W>,
    te: &mut TocEntry<'static>,
    e: &Entry,
    payload: &mut Payload<'_>,
    opts: &WriterOptions,
) -> Result<(Vec<TocEntry<'static>>, Vec<u64>), WriteError> {
    let mut file_hash = Hasher::new();
    let mut chunks: Vec<TocEntry<'static>> = Vec::new();
    let mut members = Vec::new();
    let mut inner_offset = 0i64;
    let mut at = 0u64;
    while at < e.size {
        let len = opts.chunk_size.min(e.size - at);
        let data = payload.read(at, len as usize)?;
        file_hash.update(&data);
        // Every chunk starts its own member, but a file's first chunk
        // joins the member under way while that is below the minimum
        // (not the blob's first: offset 0 reads as "no offset" in a TOC).
        let shares = at == 0 && w.current_member() > 0 && w.pending_len() < opts.min_chunk_size;
        if shares {
            inner_offset = w.pending_len() as i64;
        } else {
            w.finish_member()?;
        }
        members.push(w.current_member());
        w.append(&data);
        let chunk_digest = Some(Cow::Owned(Digest::of(&data).to_string()));
        let chunk_size = if len == opts.chunk_size {
            len as i64
        } else {
            0
        };
        if at == 0 {
            te.inner_offset = inner_offset;
            te.chunk_size = chunk_size;
            te.chunk_digest = chunk_digest;
        } else {
            chunks.push(TocEntry {
                name: Cow::Owned(e.name.clone()),
                kind: Cow::Borrowed("chunk"),
                chunk_offset: at as i64,
                chunk_size,
                chunk_digest,
                ..TocEntry::default()
            });
        }
        at += len;
    }
    te.digest = Some(Cow::Owned(file_hash.finish().to_string()));
    Ok((chunks, members))
}
