//! A partial file's journal: a header (magic, file size, content
//! digest), then one record per chunk written (offset, length, sha256),
//! each appended by one `O_APPEND` write, so a crash leaves it whole or
//! torn, and a torn record never verifies.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use super::index::{Entry, Partial, PartialFiles, Record, State};
use super::keys::{FileKey, StoreChunk};
use crate::digest::Digest;

const JOURNAL_MAGIC: &[u8; 8] = b"RSTRJNL2";
const HEADER_LEN: usize = 48;
const RECORD_LEN: usize = 48;

/// A partial entry from its journal, if the journal and the data file
/// agree on the file's size. Records past the end or torn are dropped;
/// the rest are to be hashed again before use.
pub(super) fn load(journal: &Path, data: &Path, id: u64) -> Option<Entry> {
    let bytes = fs::read(journal).ok()?;
    if bytes.len() < HEADER_LEN || &bytes[..8] != JOURNAL_MAGIC {
        return None;
    }
    let size = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let content = Digest(bytes[16..48].try_into().ok()?);
    if fs::metadata(data).ok()?.len() != size {
        return None;
    }
    let mut partial = Partial::new(content);
    let mut charged = 0u64;
    for rec in bytes[HEADER_LEN..].chunks_exact(RECORD_LEN) {
        let offset = u64::from_le_bytes(rec[0..8].try_into().ok()?);
        let len = u64::from_le_bytes(rec[8..16].try_into().ok()?);
        let digest = Digest(rec[16..48].try_into().ok()?);
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > size) {
            continue;
        }
        let record = Record {
            digest,
            verified: false,
        };
        if partial.records.insert((offset, len), record).is_none() {
            charged += len;
        }
    }
    Some(Entry {
        id,
        size,
        charged,
        last_use: 0,
        state: State::Partial(partial),
    })
}

/// Opens an existing partial file and its journal for writing.
pub(super) fn open(dp: &Path, jp: &Path) -> io::Result<PartialFiles> {
    let data = OpenOptions::new().read(true).write(true).open(dp)?;
    let journal = OpenOptions::new().append(true).open(jp)?;
    Ok((Arc::new(data), Arc::new(journal)))
}

/// Creates a sparse data file of `file`'s size and its journal.
pub(super) fn create(file: &FileKey, dp: &Path, jp: &Path) -> io::Result<PartialFiles> {
    let data = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(dp)?;
    data.set_len(file.size)?;
    let mut journal = OpenOptions::new().create_new(true).append(true).open(jp)?;
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(JOURNAL_MAGIC);
    header[8..16].copy_from_slice(&file.size.to_le_bytes());
    header[16..48].copy_from_slice(&file.content.0);
    journal.write_all(&header)?;
    Ok((Arc::new(data), Arc::new(journal)))
}

/// Appends the record of `c`, written to the data file.
pub(super) fn append(journal: &fs::File, c: &StoreChunk) -> io::Result<()> {
    let mut rec = [0u8; RECORD_LEN];
    rec[0..8].copy_from_slice(&c.offset.to_le_bytes());
    rec[8..16].copy_from_slice(&c.len.to_le_bytes());
    rec[16..48].copy_from_slice(&c.digest.0);
    // One write with O_APPEND: whole or (after a crash) torn, and a torn
    // record never verifies.
    let mut journal = journal;
    journal.write_all(&rec)
}
