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
use crate::tar::{self, Entry, EntryType};
use crate::toc::{self, TocEntry};

pub(super) enum Payload<'a> {
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
    toc: &mut Vec<TocEntry<'static>>,
    names: &mut NameEmitter,
    e: &Entry,
    payload: &Payload<'_>,
    opts: &WriterOptions,
) -> Result<(), WriteError> {
    let mut te = toc_entry(e, names);
    w.append(&tar::encode_header(e));
    if e.kind() != EntryType::Reg {
        toc.push(te);
        return Ok(());
    }
    te.size = e.size as i64;
    let mut chunks = write_chunks(w, &mut te, e, payload, opts)?;
    w.append(&vec![0u8; tar::padding(e.size)]);
    toc.push(te);
    toc.append(&mut chunks);
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
/// returned as `chunk` entries.
fn write_chunks<W: Write>(
    w: &mut MemberWriter<W>,
    te: &mut TocEntry<'static>,
    e: &Entry,
    payload: &Payload<'_>,
    opts: &WriterOptions,
) -> Result<Vec<TocEntry<'static>>, WriteError> {
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
    te.digest = Some(Cow::Owned(file_hash.finish().to_string()));
    Ok(chunks)
}
