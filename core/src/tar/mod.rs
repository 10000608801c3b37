//! The tar subset eStargz needs: reading ustar/GNU/PAX headers from
//! untrusted bytes (every length checked, fuzzed), and writing ustar headers
//! with PAX records where ustar cannot hold a value.

//!
//! Layout: this file holds the types; `header` decodes one header block
//! and PAX records, `scan` walks an archive's entries held whole, `stream` one read
//! front to back, `encode` writes
//! headers.

mod encode;
mod header;
mod scan;
mod stream;

use std::io;

pub use encode::{encode_header, padding};
pub use header::{is_zero_block, parse_header, parse_pax};
pub use scan::{Located, Scanner};
pub use stream::TarStream;

/// Tar block size.
pub const BLOCK: usize = 512;
/// A PAX record block or GNU long name larger than this is refused: real
/// ones are a few KiB, and the limit keeps a hostile size from allocating.
pub const MAX_META_SIZE: u64 = 1 << 20;

/// Why tar input was refused.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar header checksum mismatch at offset {0}")]
    Checksum(u64),
    #[error("bad tar header field {field} at offset {offset}")]
    Field { field: &'static str, offset: u64 },
    #[error("unsupported tar entry type {typeflag:?} for {name:?}")]
    Unsupported { typeflag: char, name: String },
    #[error("tar metadata of {0} bytes is too large")]
    MetaTooLarge(u64),
    #[error("malformed PAX record")]
    Pax,
    #[error("truncated tar stream")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The entry types eStargz carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    Reg,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl EntryType {
    /// The TOC `type` string.
    pub fn toc_name(self) -> &'static str {
        match self {
            EntryType::Reg => "reg",
            EntryType::Hardlink => "hardlink",
            EntryType::Symlink => "symlink",
            EntryType::Char => "char",
            EntryType::Block => "block",
            EntryType::Dir => "dir",
            EntryType::Fifo => "fifo",
        }
    }

    fn typeflag(self) -> u8 {
        match self {
            EntryType::Reg => b'0',
            EntryType::Hardlink => b'1',
            EntryType::Symlink => b'2',
            EntryType::Char => b'3',
            EntryType::Block => b'4',
            EntryType::Dir => b'5',
            EntryType::Fifo => b'6',
        }
    }
}

/// One tar entry with PAX and GNU long-name records applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub name: String,
    pub entry_type: Option<EntryType>,
    /// Permission bits with setuid/setgid/sticky (type bits masked off).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub uname: String,
    pub gname: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records, in the order they appeared.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The entry type; only `None` on a default-constructed entry.
    pub fn kind(&self) -> EntryType {
        self.entry_type.unwrap_or(EntryType::Reg)
    }
}

/// A raw header block decoded, before PAX/GNU records are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub name: Vec<u8>,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub link_name: Vec<u8>,
    pub uname: Vec<u8>,
    pub gname: Vec<u8>,
    pub dev_major: u64,
    pub dev_minor: u64,
}

#[cfg(test)]
mod tests;
