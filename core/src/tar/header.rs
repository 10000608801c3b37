//! Decoding one header block and PAX records from untrusted bytes: every
//! length checked, nothing trusted.

use super::{BLOCK, RawHeader, TarError};

pub(super) fn cstr(field: &[u8]) -> &[u8] {
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

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(super) fn to_u32(v: u64, field: &'static str, offset: u64) -> Result<u32, TarError> {
    u32::try_from(v).map_err(|_| TarError::Field { field, offset })
}
