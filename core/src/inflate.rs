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
