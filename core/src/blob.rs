//! Random access to a layer blob: a local file, bytes in memory, or (later)
//! a registry through the fetcher.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Reads byte ranges of one blob. Implementations return exactly `len`
/// bytes or an error; a short read is an error (`UnexpectedEof`).
pub trait BlobRead {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

impl BlobRead for [u8] {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(len).ok_or_else(eof)?;
        self.get(start..end).map(<[u8]>::to_vec).ok_or_else(eof)
    }
}

impl BlobRead for Vec<u8> {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.as_slice().read_at(offset, len)
    }
}

impl BlobRead for File {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
}

impl<T: BlobRead + ?Sized> BlobRead for &T {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        (**self).read_at(offset, len)
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "range past the end of the blob",
    )
}

/// A [`std::io::Read`] over the range `[start, end)` of a blob, fetched in
/// pieces of at most `piece` bytes, so what it buffers never follows the
/// range's length.
#[derive(Debug)]
pub struct BlobReader<'b, B: BlobRead + ?Sized> {
    blob: &'b B,
    pos: u64,
    end: u64,
    piece: usize,
    buf: Vec<u8>,
    at: usize,
}

impl<'b, B: BlobRead + ?Sized> BlobReader<'b, B> {
    /// Reads `[start, end)` (empty when `end <= start`) in pieces of
    /// `piece` bytes (at least 1).
    pub fn new(blob: &'b B, start: u64, end: u64, piece: usize) -> Self {
        BlobReader {
            blob,
            pos: start,
            end: end.max(start),
            piece: piece.max(1),
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl<B: BlobRead + ?Sized> io::Read for BlobReader<'_, B> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos == self.end || out.is_empty() {
                return Ok(0);
            }
            let n = (self.end - self.pos).min(self.piece as u64) as usize;
            self.buf = self.blob.read_at(self.pos, n)?;
            if self.buf.len() != n {
                return Err(eof());
            }
            self.pos += n as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn blob_reader_reads_its_range_in_pieces() {
        let data: Vec<u8> = (0..=255).collect();
        let mut got = Vec::new();
        BlobReader::new(&data, 10, 200, 7)
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data[10..200]);
        // Past the blob's end is an error, not a short read.
        let mut r = BlobReader::new(&data, 250, 300, 64);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        let mut empty = Vec::new();
        BlobReader::new(&data, 50, 10, 4)
            .read_to_end(&mut empty)
            .unwrap();
        assert!(empty.is_empty());
    }
}
