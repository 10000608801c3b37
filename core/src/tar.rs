//! The tar subset eStargz needs: reading ustar/GNU/PAX headers from
//! untrusted bytes (every length checked, fuzzed), and writing ustar headers
//! with PAX records where ustar cannot hold a value.

use std::io;

use crate::blob::BlobRead;

/// Tar block size.
pub const BLOCK: usize = 512;
/// A PAX record block or GNU long name larger than this is refused: real
/// ones are a few KiB, and the limit keeps a hostile size from allocating.
pub const MAX_META_SIZE: u64 = 1 << 20;

/// Why tar input was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar header checksum mismatch at offset {0}")]
    Checksum(u64),
    #[error("bad tar header field {field} at offset {offset}")]
    Field { field: &'static str, offset: u64 },
    #[error("unsupported tar entry type {typeflag:?} for {name:?}")]
    Unsupported { typeflag: char, name: String },
    #[error("tar metadata of {0} bytes is too large")]
    MetaTooLarge(u64),
    #[error("malformed PAX record")]
    Pax,
    #[error("truncated tar stream")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The entry types eStargz carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    Reg,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl EntryType {
    /// The TOC `type` string.
    pub fn toc_name(self) -> &'static str {
        match self {
            EntryType::Reg => "reg",
            EntryType::Hardlink => "hardlink",
            EntryType::Symlink => "symlink",
            EntryType::Char => "char",
            EntryType::Block => "block",
            EntryType::Dir => "dir",
            EntryType::Fifo => "fifo",
        }
    }

    fn typeflag(self) -> u8 {
        match self {
            EntryType::Reg => b'0',
            EntryType::Hardlink => b'1',
            EntryType::Symlink => b'2',
            EntryType::Char => b'3',
            EntryType::Block => b'4',
            EntryType::Dir => b'5',
            EntryType::Fifo => b'6',
        }
    }
}

/// One tar entry with PAX and GNU long-name records applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub name: String,
    pub entry_type: Option<EntryType>,
    /// Permission bits with setuid/setgid/sticky (type bits masked off).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub uname: String,
    pub gname: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records, in the order they appeared.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The entry type; only `None` on a default-constructed entry.
    pub fn kind(&self) -> EntryType {
        self.entry_type.unwrap_or(EntryType::Reg)
    }
}

/// A raw header block decoded, before PAX/GNU records are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub name: Vec<u8>,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub link_name: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub dev_major: u64,
    pub dev_minor: u64,
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Parses a numeric field: octal (space/NUL padded) or GNU base-256.
/// Negative base-256 values are refused.
fn parse_number(field: &[u8], name: &'static str, offset: u64) -> Result<u64, TarError> {
    let bad = || TarError::Field {
        field: name,
        offset,
    };
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(bad());
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(bad)?;
        }
        return Ok(v);
    }
    let s = cstr(field);
    let s = s.iter().skip_while(|&&b| b == b' ');
    let mut v: u64 = 0;
    let mut seen_space = false;
    for &b in s {
        match b {
            b'0'..=b'7' if !seen_space => {
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or_else(bad)?;
            }
            b' ' => seen_space = true,
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

/// Whether a block is all zeros (end-of-archive marker).
pub fn is_zero_block(block: &[u8]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Decodes one 512-byte header block. `offset` is only for messages.
pub fn parse_header(block: &[u8], offset: u64) -> Result<RawHeader, TarError> {
    if block.len() != BLOCK {
        return Err(TarError::Truncated);
    }
    let stored = parse_number(&block[148..156], "chksum", offset)?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(TarError::Checksum(offset));
    }
    let magic = &block[257..265];
    let ustar = &magic[..6] == b"ustar\0";
    let mut name = cstr(&block[0..100]).to_vec();
    if ustar {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let mtime = parse_number(&block[136..148], "mtime", offset)?;
    Ok(RawHeader {
        name,
        mode: parse_number(&block[100..108], "mode", offset)?,
        uid: parse_number(&block[108..116], "uid", offset)?,
        gid: parse_number(&block[116..124], "gid", offset)?,
        size: parse_number(&block[124..136], "size", offset)?,
        mtime: i64::try_from(mtime).map_err(|_| TarError::Field {
            field: "mtime",
            offset,
        })?,
        typeflag: block[156],
        link_name: cstr(&block[157..257]).to_vec(),
        uname: cstr(&block[265..297]).to_vec(),
        gname: cstr(&block[297..329]).to_vec(),
        dev_major: parse_number(&block[329..337], "devmajor", offset).unwrap_or(0),
        dev_minor: parse_number(&block[337..345], "devminor", offset).unwrap_or(0),
    })
}

/// Parses PAX extended header records (`"<len> <key>=<value>\n"`).
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data.iter().position(|&b| b == b' ').ok_or(TarError::Pax)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::Pax)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(TarError::Pax);
        }
        let record = &data[sp + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TarError::Pax)?;
        let key = String::from_utf8(record[..eq].to_vec()).map_err(|_| TarError::Pax)?;
        out.push((key, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn to_u32(v: u64, field: &'static str, offset: u64) -> Result<u32, TarError> {
    u32::try_from(v).map_err(|_| TarError::Field { field, offset })
}

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

impl<B: BlobRead> Scanner<B> {
    pub fn new(src: B, len: u64) -> Self {
        Scanner { src, len, pos: 0 }
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

    /// The next entry, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Located>, TarError> {
        let header_offset = self.pos;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let offset = self.pos;
            let Some(block) = self.read_block()? else {
                return Ok(None);
            };
            if is_zero_block(&block) {
                return Ok(None);
            }
            let h = parse_header(&block, offset)?;
            match h.typeflag {
                b'x' => pax.extend(parse_pax(&self.read_meta(h.size)?)?),
                b'g' => {
                    self.read_meta(h.size)?;
                }
                b'L' => long_name = Some(cstr(&self.read_meta(h.size)?).to_vec()),
                b'K' => long_link = Some(cstr(&self.read_meta(h.size)?).to_vec()),
                _ => {
                    return self
                        .finish(h, offset, header_offset, pax, long_name, long_link)
                        .map(Some);
                }
            }
        }
    }

    fn finish(
        &mut self,
        h: RawHeader,
        offset: u64,
        header_offset: u64,
        pax: Vec<(String, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Located, TarError> {
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
        e.entry_type = Some(match h.typeflag {
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
                    name: e.name,
                });
            }
        });
        // Only regular files carry payload; a size on anything else is
        // still skipped over, as tar readers do.
        let data_offset = self.pos;
        let padded = e
            .size
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .ok_or(TarError::Truncated)?;
        let end = data_offset.checked_add(padded).ok_or(TarError::Truncated)?;
        if data_offset + e.size > self.len {
            return Err(TarError::Truncated);
        }
        // The final payload may lack its padding when the stream ends there.
        self.pos = end.min(self.len);
        if e.kind() != EntryType::Reg {
            // Only regular entries have payload in the TOC's model.
            e.size = 0;
        }
        Ok(Located {
            entry: e,
            header_offset,
            data_offset,
        })
    }
}

fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn ustar_block(name: &[u8], e: &Entry, typeflag: u8, size: u64, pax: &mut Vec<u8>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let put = |b: &mut [u8; BLOCK], range: std::ops::Range<usize>, v: &[u8]| {
        let n = v.len().min(range.len());
        b[range.start..range.start + n].copy_from_slice(&v[..n]);
    };
    put(&mut b, 0..100, name);
    if !octal(&mut b[100..108], u64::from(e.mode)) {
        unreachable!("mode is masked to 12 bits");
    }
    if !octal(&mut b[108..116], u64::from(e.uid)) {
        pax_record(pax, "uid", e.uid.to_string().as_bytes());
    }
    if !octal(&mut b[116..124], u64::from(e.gid)) {
        pax_record(pax, "gid", e.gid.to_string().as_bytes());
    }
    if !octal(&mut b[124..136], size) {
        pax_record(pax, "size", size.to_string().as_bytes());
    }
    if e.mtime < 0 || !octal(&mut b[136..148], e.mtime as u64) {
        pax_record(pax, "mtime", e.mtime.to_string().as_bytes());
    }
    b[156] = typeflag;
    put(&mut b, 157..257, e.link_name.as_bytes());
    b[257..265].copy_from_slice(b"ustar\x0000");
    put(&mut b, 265..297, e.uname.as_bytes());
    put(&mut b, 297..329, e.gname.as_bytes());
    // Device numbers past the octal range are written in base-256.
    for (range, v) in [(329..337, e.dev_major), (337..345, e.dev_minor)] {
        if !octal(&mut b[range.clone()], u64::from(v)) {
            b[range.start] = 0x80;
            b[range.end - 4..range.end].copy_from_slice(&v.to_be_bytes());
        }
    }
    b
}

fn checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
}

/// Encodes the header blocks of one entry: a PAX header when a value does
/// not fit ustar (long or non-ASCII names, xattrs, large numbers), then the
/// ustar header. The payload (size from `e.size`, regular files only)
/// follows; the caller writes it and pads it to a block.
pub fn encode_header(e: &Entry) -> Vec<u8> {
    let kind = e.kind();
    let size = if kind == EntryType::Reg { e.size } else { 0 };
    let mut pax = Vec::new();
    let needs_pax = |s: &str, max: usize| s.len() > max || !s.is_ascii();
    if needs_pax(&e.name, 100) {
        pax_record(&mut pax, "path", e.name.as_bytes());
    }
    if needs_pax(&e.link_name, 100) {
        pax_record(&mut pax, "linkpath", e.link_name.as_bytes());
    }
    if needs_pax(&e.uname, 32) {
        pax_record(&mut pax, "uname", e.uname.as_bytes());
    }
    if needs_pax(&e.gname, 32) {
        pax_record(&mut pax, "gname", e.gname.as_bytes());
    }
    let mut xattrs: Vec<&(String, Vec<u8>)> = e.xattrs.iter().collect();
    xattrs.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, v) in xattrs {
        pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
    }
    let mut main = ustar_block(e.name.as_bytes(), e, kind.typeflag(), size, &mut pax);
    checksum(&mut main);
    let mut out = Vec::with_capacity(BLOCK * 3);
    if !pax.is_empty() {
        let pax_entry = Entry {
            mode: 0o644,
            ..Entry::default()
        };
        let pax_name: String = format!("PaxHeaders/{}", crate::name::base(&e.name))
            .chars()
            .take(99)
            .collect();
        let mut h = ustar_block(
            pax_name.as_bytes(),
            &pax_entry,
            b'x',
            pax.len() as u64,
            &mut Vec::new(),
        );
        checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&pax);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.extend_from_slice(&main);
    out
}

/// Zero bytes that pad a payload of `size` bytes to a block boundary.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            name: "dir/file.txt".into(),
            entry_type: Some(EntryType::Reg),
            mode: 0o4755,
            uid: 1000,
            gid: 100,
            uname: "user".into(),
            gname: "users".into(),
            size: 3,
            mtime: 1_700_000_000,
            ..Entry::default()
        }
    }

    fn archive(entries: &[(Entry, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (e, data) in entries {
            out.extend(encode_header(e));
            out.extend_from_slice(data);
            out.resize(out.len() + padding(data.len() as u64), 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn encode_then_scan_round_trips() {
        let long = format!("{}/end", "long-name-".repeat(20));
        let entries = vec![
            (sample(), &b"abc"[..]),
            (
                Entry {
                    name: long.clone(),
                    entry_type: Some(EntryType::Symlink),
                    link_name: format!("../{long}"),
                    mode: 0o777,
                    ..Entry::default()
                },
                &b""[..],
            ),
            (
                Entry {
                    name: "dev/x".into(),
                    entry_type: Some(EntryType::Char),
                    dev_major: 3_000_000,
                    dev_minor: 7,
                    xattrs: vec![("user.a".into(), vec![0xff, 0, b'\n'])],
                    uid: 5_000_000,
                    mtime: -5,
                    ..Entry::default()
                },
                &b""[..],
            ),
            (
                Entry {
                    name: "spaced ünïcode ☃".into(),
                    entry_type: Some(EntryType::Dir),
                    mode: 0o1777,
                    ..Entry::default()
                },
                &b""[..],
            ),
        ];
        let tar = archive(&entries);
        let mut s = Scanner::new(&tar, tar.len() as u64);
        for (want, data) in &entries {
            let got = s.next_entry().unwrap().unwrap();
            assert_eq!(&got.entry, want);
            assert_eq!(tar[got.data_offset as usize..][..data.len()], **data);
        }
        assert!(s.next_entry().unwrap().is_none());
    }

    #[test]
    fn reads_gnu_long_names_and_base256() {
        let mut e = sample();
        e.name = "x".into();
        e.size = 0;
        let mut h = encode_header(&e);
        // A GNU 'L' record before it.
        let name = "a/".repeat(80) + "z";
        let mut l = ustar_block(
            b"././@LongLink",
            &Entry::default(),
            b'L',
            name.len() as u64 + 1,
            &mut Vec::new(),
        );
        l[124] = 0x80; // base-256 size
        l[124..136].fill(0);
        l[124] = 0x80;
        l[132..136].copy_from_slice(&(name.len() as u32 + 1).to_be_bytes());
        checksum(&mut l);
        let mut tar = l.to_vec();
        tar.extend_from_slice(name.as_bytes());
        tar.push(0);
        tar.resize(tar.len().div_ceil(BLOCK) * BLOCK, 0);
        tar.append(&mut h);
        let mut s = Scanner::new(&tar, tar.len() as u64);
        assert_eq!(s.next_entry().unwrap().unwrap().entry.name, name);
        assert!(s.next_entry().unwrap().is_none());
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        let mut h = encode_header(&sample());
        h[0] ^= 1;
        assert!(matches!(parse_header(&h, 0), Err(TarError::Checksum(0))));
        assert!(parse_header(&h[..100], 0).is_err());
        // Payload running past the end.
        let mut tar = encode_header(&Entry {
            size: 1 << 40,
            ..sample()
        });
        tar.extend_from_slice(b"abc");
        assert!(Scanner::new(&tar, tar.len() as u64).next_entry().is_err());
        // Huge PAX block.
        let mut pax = ustar_block(b"p", &Entry::default(), b'x', 1 << 30, &mut Vec::new());
        checksum(&mut pax);
        assert!(matches!(
            Scanner::new(&pax[..], 512).next_entry(),
            Err(TarError::MetaTooLarge(_))
        ));
        for bad in [
            &b"5 a=b"[..],
            b"99 a=b\n",
            b"x a=b\n",
            b"6 ab\n\n",
            b"3 =\n",
        ] {
            assert!(parse_pax(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_pax(b"6 a=b\n").unwrap(),
            vec![("a".to_string(), b"b".to_vec())]
        );
    }
}
