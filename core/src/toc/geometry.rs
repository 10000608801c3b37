//! Geometry checks over all chunks once every entry is in: where each
//! chunk's compressed span ends, that it is bounded and could inflate to
//! what it claims, and that a file's chunks tile it.

use super::build::Builder;
use crate::error::Error;
use crate::inflate::check_geometry;
use crate::limits::MAX_CHUNK_SPAN;
use crate::tar::EntryType;

impl Builder {
    /// `next_offset` of each chunk: the next member start in TOC order (an
    /// entry with `innerOffset == 0`); the data end for the last. Each
    /// chunk's compressed span must be at most [`MAX_CHUNK_SPAN`], and its
    /// `innerOffset` and size what that span could inflate to.
    pub(super) fn resolve_next_offsets(&mut self, data_end: u64) -> Result<(), Error> {
        let mut next = data_end;
        for i in (0..self.chunks.len()).rev() {
            let c = &mut self.chunks[i];
            c.next_offset = next;
            let c = *c;
            if c.inner_offset == 0 {
                next = c.offset;
            }
            let why = if c.offset >= c.next_offset {
                format!(
                    "chunk at offset {} does not lie before the next member ({}); data ends at {data_end}",
                    c.offset, c.next_offset
                )
            } else if c.compressed_len() > MAX_CHUNK_SPAN {
                format!(
                    "chunk at offset {} spans {} compressed bytes, more than {MAX_CHUNK_SPAN}",
                    c.offset,
                    c.compressed_len()
                )
            } else if let Err(why) = check_geometry(self.compression, &c) {
                why.to_string()
            } else {
                continue;
            };
            let owner = self
                .pending
                .iter()
                .find(|p| (p.chunk_start..p.chunk_start + p.chunk_len).contains(&(i as u32)));
            return Err(Error::entry(owner.map_or("?", |p| p.name.as_str()), why));
        }
        Ok(())
    }

    /// Every regular file's chunks tile `[0, size)` exactly.
    pub(super) fn check_chunk_cover(&self) -> Result<(), Error> {
        for p in self.pending.iter().filter(|p| p.kind == EntryType::Reg) {
            let chunks =
                &self.chunks[p.chunk_start as usize..(p.chunk_start + p.chunk_len) as usize];
            let mut at = 0u64;
            for c in chunks {
                if c.chunk_offset != at {
                    return Err(Error::entry(
                        &p.name,
                        format!(
                            "chunk at {} leaves a gap or overlap at {at}",
                            c.chunk_offset
                        ),
                    ));
                }
                at = at
                    .checked_add(c.size)
                    .ok_or_else(|| Error::entry(&p.name, "chunk sizes overflow"))?;
            }
            if at != p.size {
                return Err(Error::entry(
                    &p.name,
                    format!("chunks cover {at} bytes of a {}-byte file", p.size),
                ));
            }
        }
        Ok(())
    }
}
