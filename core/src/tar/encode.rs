//! Writing ustar headers, with PAX records where ustar cannot hold a
//! value.

use super::{BLOCK, Entry, EntryType};

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

pub(super) fn ustar_block(
    name: &[u8],
    e: &Entry,
    typeflag: u8,
    size: u64,
    pax: &mut Vec<u8>,
) -> [u8; BLOCK] {
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

pub(super) fn checksum(b: &mut [u8; BLOCK]) {
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
