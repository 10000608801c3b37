//! Turning one chunk's compressed bytes into verified content.
//!
//! The gzip-bomb rule: the output is exactly the chunk's size, whatever the
//! member would inflate to. libdeflate inflates a whole member at once, so
//! it gets a scratch buffer of the chunk plus a little slack (the member
//! also holds tar padding and the following headers); a member larger than
//! that goes through a streaming decoder that stops at the chunk's end.

use std::io::Read;

use crate::digest::Digest;
use crate::error::ChunkError;
use crate::layer::Compression;
use crate::tree::Chunk;

/// Room past the chunk for the padding and headers sharing its member.
const MEMBER_SLACK: usize = 64 * 1024;

/// Reusable state for inflating chunks: one per thread.
pub struct ChunkReader {
    gzip: libdeflater::Decompressor,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for ChunkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkReader")
            .field("scratch", &self.scratch.capacity())
            .finish()
    }
}

impl Default for ChunkReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkReader {
    pub fn new() -> Self {
        ChunkReader {
            gzip: libdeflater::Decompressor::new(),
            scratch: Vec::new(),
        }
    }

    /// Inflates `chunk` from `compressed` (the blob bytes from
    /// `chunk.offset`, at least through the end of its member; normally
    /// `[offset, next_offset)`) into `out`, which must be exactly
    /// `chunk.size` long, then checks the result against `expected`.
    /// With `expected == None` the read fails: unverified bytes never leave.
    pub fn read(
        &mut self,
        compression: Compression,
        chunk: &Chunk,
        expected: Option<Digest>,
        compressed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let expected = expected.ok_or(ChunkError::Unverifiable)?;
        self.inflate(compression, chunk, compressed, out)?;
        let actual = Digest::of(out);
        if actual != expected {
            return Err(ChunkError::DigestMismatch { expected, actual });
        }
        Ok(())
    }

    /// Inflates without verifying. For writers checking their own output
    /// and for callers that verify by other means.
    pub fn inflate(
        &mut self,
        compression: Compression,
        chunk: &Chunk,
        compressed: &[u8],
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        if out.len() as u64 != chunk.size {
            return Err(ChunkError::BadRequest(format!(
                "buffer of {} bytes for a {}-byte chunk",
                out.len(),
                chunk.size
            )));
        }
        let inner = usize::try_from(chunk.inner_offset)
            .map_err(|_| ChunkError::BadRequest("innerOffset too large".into()))?;
        let want = inner
            .checked_add(out.len())
            .ok_or_else(|| ChunkError::BadRequest("chunk end overflows".into()))?;
        match compression {
            Compression::Gzip => self.inflate_gzip(compressed, inner, want, out),
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::with_buffer(compressed)
                    .map_err(|e| ChunkError::Corrupt(format!("zstd: {e}")))?
                    .single_frame();
                stream_exact(dec, inner, out)
            }
        }
    }

    fn inflate_gzip(
        &mut self,
        compressed: &[u8],
        inner: usize,
        want: usize,
        out: &mut [u8],
    ) -> Result<(), ChunkError> {
        let cap = want.saturating_add(MEMBER_SLACK);
        if self.scratch.len() < cap {
            self.scratch.resize(cap, 0);
        }
        match self
            .gzip
            .gzip_decompress(compressed, &mut self.scratch[..cap])
        {
            Ok(n) if n >= want => {
                out.copy_from_slice(&self.scratch[inner..want]);
                self.shrink_scratch();
                Ok(())
            }
            Ok(n) => Err(ChunkError::Corrupt(format!(
                "member inflates to {n} bytes, chunk needs {want}"
            ))),
            Err(libdeflater::DecompressionError::InsufficientSpace) => {
                // A member with many headers after the chunk: stream it and
                // stop at the chunk's end.
                stream_exact(flate2::read::GzDecoder::new(compressed), inner, out)
            }
            Err(e) => Err(ChunkError::Corrupt(format!("gzip: {e}"))),
        }
    }

    /// Keeps one large chunk from pinning its buffer for good.
    fn shrink_scratch(&mut self) {
        const KEEP: usize = 8 << 20;
        if self.scratch.len() > KEEP {
            self.scratch = Vec::new();
        }
    }
}

fn stream_exact(mut r: impl Read, skip: usize, out: &mut [u8]) -> Result<(), ChunkError> {
    let skipped = std::io::copy(&mut (&mut r).take(skip as u64), &mut std::io::sink())
        .map_err(|e| ChunkError::Corrupt(e.to_string()))?;
    if skipped != skip as u64 {
        return Err(ChunkError::Corrupt(
            "member ends before the chunk starts".into(),
        ));
    }
    r.read_exact(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ChunkError::Corrupt("member ends before the chunk does".into())
        }
        _ => ChunkError::Corrupt(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
        let n = c.gzip_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn reads_exactly_the_chunk_from_a_larger_member() {
        let member: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let z = gzip(&member);
        let mut r = ChunkReader::new();
        for (inner, size) in [(0usize, 5000usize), (0, 10), (100, 900), (4999, 1)] {
            let chunk = Chunk::new(1, 1 + z.len() as u64, inner as u64, 0, size as u64);
            let want = &member[inner..inner + size];
            let mut out = vec![0u8; size];
            r.read(
                Compression::Gzip,
                &chunk,
                Some(Digest::of(want)),
                &z,
                &mut out,
            )
            .unwrap();
            assert_eq!(out, want);
        }
        // Past the member's end.
        let chunk = Chunk::new(1, 2, 4990, 0, 20);
        let mut out = vec![0u8; 20];
        assert!(matches!(
            r.inflate(Compression::Gzip, &chunk, &z, &mut out),
            Err(ChunkError::Corrupt(_))
        ));
    }

    #[test]
    fn a_gzip_bomb_costs_only_the_chunk() {
        // 64 MiB of zeros compress to ~64 KiB; the chunk wants 10 bytes.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let chunk = Chunk::new(1, 2, 0, 0, 10);
        let mut out = vec![1u8; 10];
        let mut r = ChunkReader::new();
        r.read(
            Compression::Gzip,
            &chunk,
            Some(Digest::of(&[0u8; 10])),
            &bomb,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0u8; 10]);
        assert!(
            r.scratch.len() <= 10 + MEMBER_SLACK,
            "scratch grew to {}",
            r.scratch.len()
        );
    }

    #[test]
    fn refuses_bad_digests_bad_buffers_and_garbage() {
        let z = gzip(b"hello world");
        let chunk = Chunk::new(1, 2, 0, 0, 5);
        let mut r = ChunkReader::new();
        let mut out = [0u8; 5];
        assert!(matches!(
            r.read(
                Compression::Gzip,
                &chunk,
                Some(Digest::of(b"jello")),
                &z,
                &mut out
            ),
            Err(ChunkError::DigestMismatch { .. })
        ));
        assert!(matches!(
            r.read(Compression::Gzip, &chunk, None, &z, &mut out),
            Err(ChunkError::Unverifiable)
        ));
        let mut wrong = [0u8; 4];
        assert!(matches!(
            r.inflate(Compression::Gzip, &chunk, &z, &mut wrong),
            Err(ChunkError::BadRequest(_))
        ));
        assert!(
            r.inflate(Compression::Gzip, &chunk, b"not gzip at all", &mut out)
                .is_err()
        );
        assert!(
            r.inflate(Compression::Zstd, &chunk, b"not zstd at all", &mut out)
                .is_err()
        );
        assert!(
            r.inflate(Compression::Gzip, &chunk, &z[..z.len() / 2], &mut out)
                .is_err()
        );
    }

    #[test]
    fn zstd_frames_are_bounded_too() {
        let data = vec![3u8; 1 << 20];
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let chunk = Chunk::new(1, 2, 1000, 0, 100);
        let mut out = vec![0u8; 100];
        ChunkReader::new()
            .read(
                Compression::Zstd,
                &chunk,
                Some(Digest::of(&[3u8; 100])),
                &z,
                &mut out,
            )
            .unwrap();
    }
}
