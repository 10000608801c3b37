//! Walking the entries of an uncompressed tar: PAX and GNU long-name
//! records applied to the header they precede, payloads located, not
//! read.

use super::header::{cstr, is_zero_block, lossy, parse_header, parse_pax, to_u32};
use super::{BLOCK, Entry, EntryType, MAX_META_SIZE, RawHeader, TarError};
use crate::blob::BlobRead;

/// An entry and where its payload starts in the tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub entry: Entry,
    /// Offset of the header block (the first of its PAX/GNU blocks).
    pub header_offset: u64,
    /// Offset of the payload's first byte.
    pub data_offset: u64,
}

/// Walks the entries of an uncompressed tar held in a [`BlobRead`] of
/// known length. Payloads are not read, only located.
#[derive(Debug)]
pub struct Scanner<B> {
    src: B,
    len: u64,
    pos: u64,
}

/// Where a tar's blocks come from, read forward: a random-access blob
/// ([`Scanner`]) or a stream ([`super::TarStream`]).
pub(super) trait Records {
    /// Offset of the next block.
    fn pos(&self) -> u64;
    /// The next block; `None` at a clean end of the input.
    fn read_block(&mut self) -> Result<Option<Vec<u8>>, TarError>;
    /// A metadata payload (PAX records, a GNU long name) of `size` bytes
    /// and its padding. `size` is checked against [`MAX_META_SIZE`] first.
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError>;
}

impl<B: BlobRead> Records for Scanner<B> {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn read_block(&mut self) -> Result<Option<Vec<u8>>, TarError> {
        if self.pos + BLOCK as u64 > self.len {
            // A stream that ends without the zero blocks is accepted, as
            // eStargz lossy mode writes it (and as Go's reader does at EOF).
            return if self.pos == self.len {
                Ok(None)
            } else {
                Err(TarError::Truncated)
            };
        }
        let b = self.src.read_at(self.pos, BLOCK)?;
        self.pos += BLOCK as u64;
        Ok(Some(b))
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META_SIZE {
            return Err(TarError::MetaTooLarge(size));
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if self.pos + padded > self.len {
            return Err(TarError::Truncated);
        }
        let data = self.src.read_at(self.pos, size as usize)?;
        self.pos += padded;
        Ok(data)
    }
}

/// The next entry's header with the records before it applied, and the
/// offset of its first block; `None` at the end of the archive. Its
/// payload is the caller's to skip or read.
pub(super) fn read_entry(src: &mut impl Records) -> Result<Option<(Entry, u64)>, TarError> {
    let header_offset = src.pos();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    loop {
        let offset = src.pos();
        let Some(block) = src.read_block()? else {
            return Ok(None);
        };
        if is_zero_block(&block) {
            return Ok(None);
        }
        let h = parse_header(&block, offset)?;
        match h.typeflag {
            b'x' => pax.extend(parse_pax(&src.read_meta(h.size)?)?),
            b'g' => {
                src.read_meta(h.size)?;
            }
            b'L' => long_name = Some(cstr(&src.read_meta(h.size)?).to_vec()),
            b'K' => long_link = Some(cstr(&src.read_meta(h.size)?).to_vec()),
            _ => {
                let e = entry_of(h, offset, pax, long_name, long_link)?;
                return Ok(Some((e, header_offset)));
            }
        }
    }
}

/// The entry of header `h` (at `offset`) with the records before it
/// applied. Its `size` is the payload's as the header says (for any
/// type: a tar reader steps over it all the same).
fn entry_of(
    h: RawHeader,
    offset: u64,
    pax: Vec<(String, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
) -> Result<Entry, TarError> {
    let typeflag = h.typeflag;
    let mut e = Entry {
        name: lossy(&long_name.unwrap_or(h.name)),
        entry_type: None,
        mode: (h.mode & 0o7777) as u32,
        uid: to_u32(h.uid, "uid", offset)?,
        gid: to_u32(h.gid, "gid", offset)?,
        uname: lossy(&h.uname),
        gname: lossy(&h.gname),
        size: h.size,
        mtime: h.mtime,
        link_name: lossy(&long_link.unwrap_or(h.link_name)),
        dev_major: to_u32(h.dev_major, "devmajor", offset)?,
        dev_minor: to_u32(h.dev_minor, "devminor", offset)?,
        xattrs: Vec::new(),
    };
    apply_pax(&mut e, pax, offset)?;
    e.entry_type = Some(entry_type(typeflag, &mut e.name)?);
    Ok(e)
}

impl<B: BlobRead> Scanner<B> {
    pub fn new(src: B, len: u64) -> Self {
        Scanner { src, len, pos: 0 }
    }

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Located>, TarError> {
        let Some((mut entry, header_offset)) = read_entry(self)? else {
            return Ok(None);
        };
        let data_offset = self.skip_payload(entry.size)?;
        if entry.kind() != EntryType::Reg {
            // Only regular entries have payload in the TOC's model.
            entry.size = 0;
        }
        Ok(Some(Located {
            entry,
            header_offset,
            data_offset,
        }))
    }

    /// Steps over a payload of `size` bytes and its padding; returns where
    /// it starts. Only regular files carry payload; a size on anything
    /// else is still skipped over, as tar readers do.
    fn skip_payload(&mut self, size: u64) -> Result<u64, TarError> {
        let data_offset = self.pos;
        let padded = size
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .ok_or(TarError::Truncated)?;
        let end = data_offset.checked_add(padded).ok_or(TarError::Truncated)?;
        if data_offset + size > self.len {
            return Err(TarError::Truncated);
        }
        // The final payload may lack its padding when the stream ends there.
        self.pos = end.min(self.len);
        Ok(data_offset)
    }
}

/// Applies PAX records (of the header at `offset`) to `e`.
fn apply_pax(e: &mut Entry, pax: Vec<(String, Vec<u8>)>, offset: u64) -> Result<(), TarError> {
    let num = |v: &[u8], field: &'static str| -> Result<u64, TarError> {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(TarError::Field { field, offset })
    };
    for (key, value) in pax {
        match key.as_str() {
            "path" => e.name = lossy(&value),
            "linkpath" => e.link_name = lossy(&value),
            "uname" => e.uname = lossy(&value),
            "gname" => e.gname = lossy(&value),
            "size" => e.size = num(&value, "size")?,
            "uid" => e.uid = to_u32(num(&value, "uid")?, "uid", offset)?,
            "gid" => e.gid = to_u32(num(&value, "gid")?, "gid", offset)?,
            "mtime" => {
                // Fractional seconds are dropped, as the TOC keeps whole seconds.
                let s = std::str::from_utf8(&value).map_err(|_| TarError::Pax)?;
                let whole = s.split('.').next().unwrap_or("");
                e.mtime = whole.parse().map_err(|_| TarError::Field {
                    field: "mtime",
                    offset,
                })?;
            }
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    e.xattrs.push((name.to_string(), value));
                }
            }
        }
    }
    Ok(())
}

/// The entry type of a typeflag; an unsupported one refuses the entry
/// `name` (taken for the error).
fn entry_type(typeflag: u8, name: &mut String) -> Result<EntryType, TarError> {
    Ok(match typeflag {
        b'0' | 0 => EntryType::Reg,
        b'1' => EntryType::Hardlink,
        b'2' => EntryType::Symlink,
        b'3' => EntryType::Char,
        b'4' => EntryType::Block,
        b'5' => EntryType::Dir,
        b'6' => EntryType::Fifo,
        t => {
            return Err(TarError::Unsupported {
                typeflag: char::from(t),
                name: std::mem::take(name),
            });
        }
    })
}
