//! gzip members and what the blob's trailer needs from them.

use std::io::{self, BufWriter, Write};

use super::WriteError;
use crate::digest::{Digest, Hasher};

/// Writes gzip members: uncompressed bytes gather in a buffer and become
/// one member when a new one must start. Tracks the compressed offset, the
/// blob digest and the DiffID (digest of everything uncompressed).
pub(super) struct MemberWriter<W: Write> {
    out: BufWriter<W>,
    compressor: libdeflater::Compressor,
    pending: Vec<u8>,
    compressed: Vec<u8>,
    pub(super) written: u64,
    blob_hash: Hasher,
    diff_hash: Hasher,
}

impl<W: Write> MemberWriter<W> {
    pub(super) fn new(out: W, level: i32) -> Result<Self, WriteError> {
        let lvl = libdeflater::CompressionLvl::new(level)
            .map_err(|_| WriteError::Option(format!("compression level {level}")))?;
        Ok(MemberWriter {
            out: BufWriter::new(out),
            compressor: libdeflater::Compressor::new(lvl),
            pending: Vec::new(),
            compressed: Vec::new(),
            written: 0,
            blob_hash: Hasher::new(),
            diff_hash: Hasher::new(),
        })
    }

    pub(super) fn append(&mut self, data: &[u8]) {
        self.diff_hash.update(data);
        self.pending.extend_from_slice(data);
    }

    pub(super) fn finish_member(&mut self) -> Result<(), WriteError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bound = self.compressor.gzip_compress_bound(self.pending.len());
        self.compressed.resize(bound, 0);
        let n = self
            .compressor
            .gzip_compress(&self.pending, &mut self.compressed)
            .map_err(|e| io::Error::other(format!("gzip: {e}")))?;
        let member = std::mem::take(&mut self.compressed);
        self.write_raw(&member[..n])?;
        self.compressed = member;
        self.pending.clear();
        Ok(())
    }

    pub(super) fn write_raw(&mut self, data: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(data)?;
        self.blob_hash.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    pub(super) fn close(self) -> Result<(u64, Digest, Digest), WriteError> {
        let mut out = self.out;
        out.flush()?;
        Ok((
            self.written,
            self.blob_hash.finish(),
            self.diff_hash.finish(),
        ))
    }
}
