//! The footers that locate a layer's TOC (estargz-format.md §6).
//!
//! Only the gzip header and extra field of the gzip footers are parsed, as
//! in the reference; writers still emit the whole member.

/// How the blob's members are compressed (which footer it has says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// Size of the eStargz footer.
pub const ESTARGZ_FOOTER_SIZE: usize = 51;
/// Size of the legacy (crfs) stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the external-TOC eStargz footer.
pub const EXTERNAL_TOC_FOOTER_SIZE: usize = 46;
/// Size of the zstd:chunked tail: an 8-byte skippable-frame header and the
/// 40-byte footer it wraps.
pub const ZSTD_FOOTER_SIZE: usize = 48;
/// The most bytes any footer needs.
pub const MAX_FOOTER_SIZE: usize = ESTARGZ_FOOTER_SIZE;

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff];
const EMPTY_DEFLATE_AND_TRAILER: [u8; 13] = [0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
/// The magic number of the zstd skippable frame zstd:chunked wraps its
/// TOC and footer in.
pub const ZSTD_SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const ZSTD_CHUNKED_MAGIC: [u8; 8] = *b"GnUlInUx";

/// Which layout the blob has, and where its TOC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footer {
    /// eStargz: the TOC gzip member starts at `toc_offset` and runs up to
    /// the 51-byte footer.
    Estargz { toc_offset: u64 },
    /// Legacy stargz: as eStargz with a 47-byte footer.
    Legacy { toc_offset: u64 },
    /// zstd:chunked: the compressed TOC frame is `[toc_offset,
    /// toc_offset + toc_compressed_len)` and inflates to
    /// `toc_uncompressed_len` bytes of JSON.
    ZstdChunked {
        toc_offset: u64,
        toc_compressed_len: u64,
        toc_uncompressed_len: u64,
    },
    /// External-TOC eStargz: no TOC in the blob.
    ExternalToc,
}

impl Footer {
    /// The footer's size in bytes.
    pub fn size(&self) -> usize {
        match self {
            Footer::Estargz { .. } => ESTARGZ_FOOTER_SIZE,
            Footer::Legacy { .. } => LEGACY_FOOTER_SIZE,
            Footer::ZstdChunked { .. } => ZSTD_FOOTER_SIZE,
            Footer::ExternalToc => EXTERNAL_TOC_FOOTER_SIZE,
        }
    }

    /// Encodes the footer as a writer must emit it.
    pub fn encode(&self) -> Vec<u8> {
        match *self {
            Footer::Estargz { toc_offset } => {
                let mut out = GZIP_HEADER.to_vec();
                out.extend_from_slice(&[26, 0, b'S', b'G', 22, 0]);
                out.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
                out.extend_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
                out
            }
            Footer::Legacy { toc_offset } => {
                let mut out = GZIP_HEADER.to_vec();
                out.extend_from_slice(&[22, 0]);
                out.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
                out.extend_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
                out
            }
            Footer::ZstdChunked {
                toc_offset,
                toc_compressed_len,
                toc_uncompressed_len,
            } => {
                let mut out = ZSTD_SKIPPABLE_MAGIC.to_vec();
                out.extend_from_slice(&40u32.to_le_bytes());
                out.extend_from_slice(&toc_offset.to_le_bytes());
                out.extend_from_slice(&toc_compressed_len.to_le_bytes());
                out.extend_from_slice(&toc_uncompressed_len.to_le_bytes());
                out.extend_from_slice(&1u64.to_le_bytes());
                out.extend_from_slice(&ZSTD_CHUNKED_MAGIC);
                out
            }
            Footer::ExternalToc => {
                let mut out = GZIP_HEADER.to_vec();
                out.extend_from_slice(&[21, 0, b'S', b'G', 17, 0]);
                out.extend_from_slice(b"STARGZEXTERNALTOC");
                out.extend_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
                out
            }
        }
    }

    /// Finds the footer at the end of `tail` (the last bytes of the blob;
    /// any length). Tries eStargz, legacy, zstd:chunked and external-TOC in
    /// that order. `None` when none matches: not an eStargz layer.
    pub fn find(tail: &[u8]) -> Option<Footer> {
        let last = |n: usize| tail.len().checked_sub(n).map(|start| &tail[start..]);
        last(ESTARGZ_FOOTER_SIZE)
            .and_then(parse_estargz)
            .or_else(|| last(LEGACY_FOOTER_SIZE).and_then(parse_legacy))
            .or_else(|| last(ZSTD_FOOTER_SIZE).and_then(parse_zstd_chunked))
            .or_else(|| last(EXTERNAL_TOC_FOOTER_SIZE).and_then(parse_external_toc))
    }
}

/// The gzip extra field of a footer member, when it has the fixed header.
fn gzip_extra(footer: &[u8]) -> Option<&[u8]> {
    let header = footer.get(..10)?;
    // ID1 ID2 CM=deflate, FLG must carry FEXTRA; MTIME/XFL/OS are not checked.
    if header[..3] != GZIP_HEADER[..3] || header[3] & 0x04 == 0 {
        return None;
    }
    let xlen = u16::from_le_bytes([*footer.get(10)?, *footer.get(11)?]) as usize;
    footer.get(12..12 + xlen)
}

fn parse_offset_hex(s: &[u8]) -> Option<u64> {
    if s.len() != 16 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let v = u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()?;
    // The reference parses an int64: anything above is not a valid offset.
    (v <= i64::MAX as u64).then_some(v)
}

/// Parses the 51-byte eStargz footer.
pub fn parse_estargz(footer: &[u8]) -> Option<Footer> {
    if footer.len() != ESTARGZ_FOOTER_SIZE {
        return None;
    }
    let extra = gzip_extra(footer)?;
    if extra.len() < 4 || extra[..2] != *b"SG" {
        return None;
    }
    let sub_len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
    let sub = extra.get(4..4 + sub_len)?;
    if sub_len != 22 || &sub[16..] != b"STARGZ" {
        return None;
    }
    Some(Footer::Estargz {
        toc_offset: parse_offset_hex(&sub[..16])?,
    })
}

/// Parses the 47-byte legacy stargz footer.
pub fn parse_legacy(footer: &[u8]) -> Option<Footer> {
    if footer.len() != LEGACY_FOOTER_SIZE {
        return None;
    }
    let extra = gzip_extra(footer)?;
    if extra.len() != 22 || &extra[16..] != b"STARGZ" {
        return None;
    }
    Some(Footer::Legacy {
        toc_offset: parse_offset_hex(&extra[..16])?,
    })
}

/// Parses the 46-byte external-TOC footer.
pub fn parse_external_toc(footer: &[u8]) -> Option<Footer> {
    if footer.len() != EXTERNAL_TOC_FOOTER_SIZE {
        return None;
    }
    let extra = gzip_extra(footer)?;
    (extra.len() == 21 && extra[..4] == [b'S', b'G', 17, 0] && &extra[4..] == b"STARGZEXTERNALTOC")
        .then_some(Footer::ExternalToc)
}

/// Parses the zstd:chunked tail (skippable-frame header + 40 bytes).
pub fn parse_zstd_chunked(tail: &[u8]) -> Option<Footer> {
    if tail.len() != ZSTD_FOOTER_SIZE
        || tail[..4] != ZSTD_SKIPPABLE_MAGIC
        || tail[4..8] != 40u32.to_le_bytes()
    {
        return None;
    }
    let f = &tail[8..];
    if f[32..40] != ZSTD_CHUNKED_MAGIC {
        return None;
    }
    let le = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().expect("8 bytes"));
    Some(Footer::ZstdChunked {
        toc_offset: le(0),
        toc_compressed_len: le(8),
        toc_uncompressed_len: le(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_worked_example() {
        let f = Footer::Estargz {
            toc_offset: 0x12345,
        }
        .encode();
        let want: Vec<u8> = [
            &[
                0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 0x1a, 0, 0x53, 0x47, 0x16, 0,
            ][..],
            b"0000000000012345STARGZ",
            &[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(f, want);
        let legacy = Footer::Legacy {
            toc_offset: 0x12345,
        }
        .encode();
        assert_eq!(legacy.len(), LEGACY_FOOTER_SIZE);
        assert_eq!(&legacy[10..12], &[0x16, 0]);
    }

    #[test]
    fn round_trips_every_variant() {
        for off in (0..200_000u64).step_by(1023) {
            for f in [
                Footer::Estargz { toc_offset: off },
                Footer::Legacy { toc_offset: off },
            ] {
                let bytes = f.encode();
                assert_eq!(bytes.len(), f.size());
                assert_eq!(Footer::find(&bytes), Some(f));
                // With payload before it, too.
                let mut blob = vec![0u8; 100];
                blob.extend_from_slice(&bytes);
                assert_eq!(Footer::find(&blob), Some(f));
            }
        }
        let z = Footer::ZstdChunked {
            toc_offset: 1008,
            toc_compressed_len: 300,
            toc_uncompressed_len: 1200,
        };
        assert_eq!(Footer::find(&z.encode()), Some(z));
        assert_eq!(
            Footer::find(&Footer::ExternalToc.encode()),
            Some(Footer::ExternalToc)
        );
    }

    #[test]
    fn rejects_without_panicking() {
        assert_eq!(Footer::find(&[]), None);
        assert_eq!(Footer::find(&[0x1f, 0x8b]), None);
        // Empty, 2-byte and truncated extra fields.
        for xlen in [0u8, 2, 3, 200] {
            let mut f = GZIP_HEADER.to_vec();
            f.extend_from_slice(&[xlen, 0, b'S', b'G']);
            f.resize(ESTARGZ_FOOTER_SIZE, 0);
            assert_eq!(parse_estargz(&f), None);
            f.truncate(LEGACY_FOOTER_SIZE);
            assert_eq!(parse_legacy(&f), None);
        }
        let mut bad = Footer::Estargz { toc_offset: 5 }.encode();
        bad[20] = b'g'; // not hex
        assert_eq!(Footer::find(&bad), None);
        let mut too_big = GZIP_HEADER.to_vec();
        too_big.extend_from_slice(&[26, 0, b'S', b'G', 22, 0]);
        too_big.extend_from_slice(b"ffffffffffffffffSTARGZ");
        too_big.extend_from_slice(&EMPTY_DEFLATE_AND_TRAILER);
        assert_eq!(Footer::find(&too_big), None);
    }
}
