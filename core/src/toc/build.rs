//! Entries to a tree's arrays: each TOC entry is checked (types, numbers,
//! names, xattrs, digests) and appended as it arrives; `finish` checks the
//! geometry ([`super::geometry`]), links names ([`super::link`]) and
//! yields the [`LayerTree`].

use std::collections::HashMap;

use base64::Engine as _;

use super::{Limits, TocEntry, is_overlay_xattr, parse_mtime};
use crate::digest::Digest;
use crate::error::Error;
use crate::footer::Compression;
use crate::name;
use crate::tar::EntryType;
use crate::tree::{Chunk, NO_INDEX, StrRef, Xattr};

/// A non-chunk entry as read, before names are linked into directories.
pub(super) struct Pending {
    pub(super) name: String,
    pub(super) kind: EntryType,
    pub(super) mode: u16,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) uname: u32,
    pub(super) gname: u32,
    pub(super) mtime: i64,
    pub(super) size: u64,
    /// Symlink target as written, or hardlink target cleaned.
    pub(super) link: StrRef,
    pub(super) dev: (u32, u32),
    pub(super) xattr_start: u32,
    pub(super) xattr_len: u32,
    pub(super) digest: u32,
    pub(super) chunk_start: u32,
    pub(super) chunk_len: u32,
}

pub(super) struct Builder {
    pub(super) limits: Limits,
    pub(super) compression: Compression,
    pub(super) error: Option<Error>,
    pub(super) entries_seen: usize,
    /// The last non-chunk entry was dropped: its `chunk` entries go too
    /// (they must not attach to the file before it).
    pub(super) dropping_chunks: bool,
    pub(super) pending: Vec<Pending>,
    /// Cleaned name → index into `pending` of the entry that wins.
    pub(super) by_name: HashMap<String, u32>,
    pub(super) chunks: Vec<Chunk>,
    pub(super) digests: Vec<Digest>,
    pub(super) xattrs: Vec<Xattr>,
    pub(super) strings: String,
    pub(super) bytes: Vec<u8>,
    pub(super) user_names: Vec<StrRef>,
    pub(super) user_name_ids: HashMap<String, u32>,
    pub(super) uid_names: HashMap<u32, u32>,
    pub(super) gid_names: HashMap<u32, u32>,
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

/// Why an entry named `clean` is dropped (not refused: the layer stays
/// usable without it), if it is.
fn dropped_because(clean: &str, e: &TocEntry<'_>) -> Option<&'static str> {
    name::refused(clean).or_else(|| {
        e.link_name
            .as_deref()
            .filter(|l| l.contains('\0'))
            .map(|_| "a link target with a NUL byte")
    })
}

/// The entry's type; an unknown one refuses the layer.
fn entry_kind(e: &TocEntry<'_>) -> Result<EntryType, Error> {
    Ok(match &*e.kind {
        "reg" => EntryType::Reg,
        "dir" => EntryType::Dir,
        "symlink" => EntryType::Symlink,
        "hardlink" => EntryType::Hardlink,
        "char" => EntryType::Char,
        "block" => EntryType::Block,
        "fifo" => EntryType::Fifo,
        other => return Err(Error::entry(&*e.name, format!("unknown type {other:?}"))),
    })
}

fn num<T: TryFrom<i64>>(v: i64, name: &str, field: &str) -> Result<T, Error> {
    T::try_from(v).map_err(|_| Error::entry(name, format!("{field} {v} is out of range")))
}

impl Builder {
    pub(super) fn new(limits: Limits, compression: Compression) -> Self {
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

    pub(super) fn add_str(&mut self, s: &str) -> Result<StrRef, Error> {
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

    /// Takes one TOC entry: a `chunk` continues the last file; anything
    /// else is checked and appended as a pending entry (a later duplicate
    /// wins). An entry with a name that must not reach the tree is
    /// dropped, with its chunks.
    pub(super) fn push(&mut self, e: TocEntry<'_>) -> Result<(), Error> {
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
        if let Some(why) = dropped_because(&clean, &e) {
            tracing::warn!(entry = ?clean, reason = why, "TOC entry dropped");
            self.dropping_chunks = true;
            return Ok(());
        }
        let pending = self.pending_entry(&e, clean)?;
        let index = u32::try_from(self.pending.len())
            .map_err(|_| Error::Limit("too many entries".into()))?;
        let clean = pending.name.clone();
        self.pending.push(pending);
        // Later duplicates win.
        self.by_name.insert(clean, index);
        Ok(())
    }

    /// Checks a non-chunk entry named `clean` and stores its names,
    /// xattrs, digest and first chunk.
    fn pending_entry(&mut self, e: &TocEntry<'_>, clean: String) -> Result<Pending, Error> {
        let kind = entry_kind(e)?;
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
        let (uname, gname) = self.owner_names(e, uid, gid)?;
        let (link, dev) = self.link_and_device(e, kind, &clean)?;
        let (xattr_start, xattr_len) = self.add_xattrs(e, &clean)?;
        let (digest, chunk_start, chunk_len) = self.content(e, kind, size, &clean)?;
        Ok(Pending {
            name: clean,
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
        })
    }

    /// The user and group name ids; an entry without names gets the ones
    /// an earlier entry gave its ids.
    fn owner_names(&mut self, e: &TocEntry<'_>, uid: u32, gid: u32) -> Result<(u32, u32), Error> {
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
        Ok((uname, gname))
    }

    /// A symlink's target as written, a hardlink's cleaned; a device's
    /// numbers.
    fn link_and_device(
        &mut self,
        e: &TocEntry<'_>,
        kind: EntryType,
        clean: &str,
    ) -> Result<(StrRef, (u32, u32)), Error> {
        let link_raw = e.link_name.as_deref().unwrap_or("");
        let link = match kind {
            EntryType::Symlink => self.add_str(link_raw)?,
            EntryType::Hardlink => self.add_str(&name::clean(link_raw))?,
            _ => StrRef::default(),
        };
        let dev = match kind {
            EntryType::Char | EntryType::Block => (
                num(e.dev_major, clean, "devMajor")?,
                num(e.dev_minor, clean, "devMinor")?,
            ),
            _ => (0, 0),
        };
        Ok((link, dev))
    }

    /// Decodes and stores the entry's xattrs but those refused; returns
    /// their range.
    fn add_xattrs(&mut self, e: &TocEntry<'_>, clean: &str) -> Result<(u32, u32), Error> {
        let xattr_start = self.xattrs.len() as u32;
        for (k, v) in e.xattrs.iter().flatten() {
            if let Some(why) = xattr_refused(k) {
                tracing::warn!(entry = ?clean, xattr = ?k, reason = why, "TOC xattr dropped");
                continue;
            }
            let value = base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|err| Error::entry(clean, format!("xattr {k}: {err}")))?;
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
        Ok((xattr_start, self.xattrs.len() as u32 - xattr_start))
    }

    /// A regular file's digest index and its first chunk (the rest come
    /// as `chunk` entries): (digest, chunk start, chunk count).
    fn content(
        &mut self,
        e: &TocEntry<'_>,
        kind: EntryType,
        size: u64,
        clean: &str,
    ) -> Result<(u32, u32, u32), Error> {
        let digest = if kind == EntryType::Reg {
            self.add_digest(e.digest.as_deref(), clean, "digest")?
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
            self.add_chunk(e, clean, chunk_size, 0)?;
            chunk_len = 1;
        } else if kind == EntryType::Reg && size > 0 {
            return Err(Error::entry(
                clean,
                "regular file with content but no offset",
            ));
        }
        Ok((digest, chunk_start, chunk_len))
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
}
