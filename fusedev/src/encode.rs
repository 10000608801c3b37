//! Encoding the filesystem's answers (`types`) as protocol structs
//! (`abi`): what both the dispatcher (`reply`) and `fs::DirOut` write. A
//! leaf below them: it depends only on `abi` and `types`, and they depend
//! on it, never the other way.

use std::mem::size_of;

use zerocopy::{FromZeros, IntoBytes};

use crate::abi;
use crate::types::Entry;

/// A TTL as the (seconds, nanoseconds) pair the protocol carries.
pub(crate) fn split_ttl(d: std::time::Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_nanos())
}

pub(crate) fn entry_out(e: &Entry) -> abi::EntryOut {
    let (ev, evn) = split_ttl(e.entry_ttl);
    let (av, avn) = split_ttl(e.attr_ttl);
    abi::EntryOut {
        nodeid: e.attr.ino.0,
        generation: e.generation,
        entry_valid: ev,
        attr_valid: av,
        entry_valid_nsec: evn,
        attr_valid_nsec: avn,
        attr: e.attr.to_abi(),
    }
}

/// Writes one READDIR (or, with `plus`, READDIRPLUS) record at the start
/// of `out`. Returns its length, or `None` (writing nothing) when it does
/// not fit. `counted`: whether the kernel keeps the entry as a lookup
/// (false for `.` and `..`).
pub(crate) fn dirent(
    out: &mut [u8],
    plus: bool,
    name: &[u8],
    next_offset: u64,
    entry: &Entry,
    counted: bool,
) -> Option<usize> {
    let dirent_len = abi::dirent_padded_len(name.len());
    let rec_len = if plus {
        size_of::<abi::EntryOut>() + dirent_len
    } else {
        dirent_len
    };
    let rec = out.get_mut(..rec_len)?;
    rec.fill(0);
    let mut at = 0;
    if plus {
        let mut e = entry_out(entry);
        if !counted {
            // The kernel skips nodeid 0 entries when counting lookups.
            e = abi::EntryOut::new_zeroed();
        }
        rec[..size_of::<abi::EntryOut>()].copy_from_slice(e.as_bytes());
        at = size_of::<abi::EntryOut>();
    }
    let d = abi::Dirent {
        ino: entry.attr.ino.0,
        off: next_offset,
        namelen: name.len() as u32,
        typ: entry.attr.kind.dirent_type(),
    };
    rec[at..at + size_of::<abi::Dirent>()].copy_from_slice(d.as_bytes());
    at += size_of::<abi::Dirent>();
    rec[at..at + name.len()].copy_from_slice(name);
    Some(rec_len)
}
