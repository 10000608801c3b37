//! Walking the entries of an uncompressed tar read as a stream, once,
//! front to back: each entry's payload is read (or skipped) before the
//! next header. What a converter needs when the layer arrives from a
//! registry and is never held whole.

use std::io::{self, Read};

use super::scan::{Records, read_entry};
use super::{BLOCK, Entry, EntryType, MAX_META_SIZE, TarError};

/// A tar read front to back from `R`.
#[derive(Debug)]
pub struct TarStream<R> {
    src: R,
    pos: u64,
    /// Bytes of the current entry's payload not read yet.
    payload_left: u64,
    /// Padding after it.
    padding_left: u64,
}

impl<R: Read> TarStream<R> {
    pub fn new(src: R) -> Self {
        TarStream {
            src,
            pos: 0,
            payload_left: 0,
            padding_left: 0,
        }
    }

    /// The next entry (the rest of the previous payload skipped), or
    /// `None` at the end of the archive. A regular file's payload is then
    /// read through [`TarStream::payload`]; other entries have size 0.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        self.skip(self.payload_left + self.padding_left)?;
        self.payload_left = 0;
        self.padding_left = 0;
        let Some((mut entry, _)) = read_entry(self)? else {
            return Ok(None);
        };
        let padded = entry
            .size
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .ok_or(TarError::Truncated)?;
        self.payload_left = entry.size;
        self.padding_left = padded - entry.size;
        if entry.kind() != EntryType::Reg {
            // Only regular entries have payload in the TOC's model; what a
            // header says of another's is stepped over.
            entry.size = 0;
        }
        Ok(Some(entry))
    }

    /// The stream behind, positioned after the end-of-archive blocks.
    pub fn into_inner(self) -> R {
        self.src
    }

    /// Reads exactly `buf.len()` bytes of the current payload; a payload
    /// shorter than that, or a stream that ends inside it, is an error.
    pub fn read_payload(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        if buf.len() as u64 > self.payload_left {
            return Err(TarError::Io(io::Error::other(
                "read past the entry's payload",
            )));
        }
        self.src.read_exact(buf).map_err(eof_is_truncation)?;
        self.payload_left -= buf.len() as u64;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Reads and discards `n` bytes.
    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let copied = io::copy(&mut (&mut self.src).take(n), &mut io::sink())?;
        self.pos += copied;
        if copied < n {
            // The final payload may lack its padding when the stream ends
            // there: only a short payload is a truncation.
            if n - copied > self.padding_left {
                return Err(TarError::Truncated);
            }
        }
        Ok(())
    }
}

fn eof_is_truncation(e: io::Error) -> TarError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        TarError::Truncated
    } else {
        TarError::Io(e)
    }
}

impl<R: Read> Records for TarStream<R> {
    fn pos(&self) -> u64 {
        self.pos
    }

    fn read_block(&mut self) -> Result<Option<Vec<u8>>, TarError> {
        let mut block = vec![0u8; BLOCK];
        let mut n = 0;
        while n < BLOCK {
            match self.src.read(&mut block[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.pos += n as u64;
        match n {
            // A stream that ends without the zero blocks is accepted, as
            // eStargz lossy mode writes it (and as Go's reader does at EOF).
            0 => Ok(None),
            BLOCK => Ok(Some(block)),
            _ => Err(TarError::Truncated),
        }
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META_SIZE {
            return Err(TarError::MetaTooLarge(size));
        }
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let mut data = vec![0u8; padded as usize];
        self.src.read_exact(&mut data).map_err(eof_is_truncation)?;
        self.pos += padded;
        data.truncate(size as usize);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobRead as _;
    use crate::tar::Scanner;

    fn sample() -> Vec<u8> {
        let mut t = Vec::new();
        for (name, data) in [
            ("a", &b"hello"[..]),
            ("dir/b", &[7u8; 1500][..]),
            ("c", b""),
        ] {
            let e = Entry {
                name: name.into(),
                entry_type: Some(EntryType::Reg),
                size: data.len() as u64,
                mode: 0o644,
                ..Entry::default()
            };
            t.extend(crate::tar::encode_header(&e));
            t.extend(data);
            t.extend(vec![0u8; crate::tar::padding(data.len() as u64)]);
        }
        t.extend([0u8; 1024]);
        t
    }

    #[test]
    fn stream_and_scanner_agree() {
        let t = sample();
        let mut s = TarStream::new(&t[..]);
        let mut scan = Scanner::new(&t[..], t.len() as u64);
        while let Some(l) = scan.next_entry().unwrap() {
            let e = s.next_entry().unwrap().unwrap();
            assert_eq!(e, l.entry);
            let mut got = vec![0u8; e.size as usize];
            s.read_payload(&mut got).unwrap();
            assert_eq!(got, t.read_at(l.data_offset, e.size as usize).unwrap());
        }
        assert!(s.next_entry().unwrap().is_none());
    }

    #[test]
    fn unread_payloads_are_skipped_and_truncation_is_an_error() {
        let t = sample();
        let mut s = TarStream::new(&t[..]);
        let names: Vec<String> = std::iter::from_fn(|| s.next_entry().unwrap())
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a", "dir/b", "c"]);
        // Cut inside dir/b's payload.
        let cut = &t[..512 * 3 + 700];
        let mut s = TarStream::new(cut);
        s.next_entry().unwrap();
        assert!(matches!(s.next_entry(), Ok(Some(_))));
        assert!(matches!(s.next_entry(), Err(TarError::Truncated)));
        // Cut inside a header block.
        let mut s = TarStream::new(&t[..100]);
        assert!(matches!(s.next_entry(), Err(TarError::Truncated)));
    }
}
