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
