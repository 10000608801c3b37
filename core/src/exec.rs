//! What executing a file opens next, read from the file's own bytes: an
//! ELF file's interpreter (`PT_INTERP`), the libraries it needs
//! (`DT_NEEDED`), where it says to look for them (`DT_RUNPATH`, else
//! `DT_RPATH`) and the parts of it the loader maps and touches at once
//! (executable and writable segments, the dynamic section); a script's
//! interpreter from its `#!` line.
//!
//! The bytes are untrusted and usually partial (a lazily pulled file
//! whose first chunk has just arrived): [`FilePieces`] holds what is
//! there, and parsing says which byte it needs next when the answer lies
//! in a part not fetched yet. The ELF structures are `object`'s; every
//! offset and count comes from the file and is checked against the bytes
//! actually held, so nothing here allocates by a number the file states
//! beyond the caps below.

use std::cell::Cell;
use std::ops::Range;

use object::Endianness;
use object::elf;
use object::read::ReadRef;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};

/// At most this many libraries are taken from one file (glibc programs
/// need a handful; large ones a few dozen).
pub const MAX_NEEDED: usize = 256;
/// At most this many search directories from one file's run path.
pub const MAX_SEARCH_DIRS: usize = 32;
/// Names and paths longer than this (Linux's PATH_MAX) are not taken.
pub const MAX_NAME: usize = 4096;
/// A read-only loaded segment up to this size counts as touched at once
/// (constants and unwind tables of code that runs); bigger ones are data
/// a program reads a little of (ICU's 30 MB `libicudata`).
pub const MAX_HOT_READ_ONLY: u64 = 8 << 20;
/// How much of a script's first line is read for its interpreter.
pub const MAX_SHEBANG: usize = 256;

/// What the dynamic loader of an ELF file will open and touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `e_machine`: which library directories apply.
    pub machine: u16,
    /// The dynamic loader (`PT_INTERP`): absent for static programs and
    /// for libraries.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` if present, else `DT_RPATH`, split at `:`; `$ORIGIN`
    /// left for the caller to expand.
    pub search: Vec<String>,
    /// File ranges the loader maps and the program touches soon: its
    /// executable and writable `PT_LOAD` segments, read-only ones up to
    /// [`MAX_HOT_READ_ONLY`], and `PT_DYNAMIC`, within the file.
    pub hot: Vec<Range<u64>>,
}

/// What parsing the bytes held so far found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not an ELF file.
    NotElf,
    /// The answer needs the byte at this file offset, not held yet;
    /// `hot` as far as the program headers held tell.
    Incomplete {
        missing: u64,
        hot: Vec<Range<u64>>,
    },
    Done(ElfDeps),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
}

/// The parts of a file held so far: pieces at file offsets (a file's
/// chunks as they arrive), and the file's size.
#[derive(Debug, Default)]
pub struct FilePieces<'a> {
    size: u64,
    pieces: Vec<(u64, &'a [u8])>,
    /// The first byte a failed read wanted and no piece had.
    missing: Cell<Option<u64>>,
}

impl<'a> FilePieces<'a> {
    pub fn new(size: u64) -> Self {
        FilePieces {
            size,
            pieces: Vec::new(),
            missing: Cell::new(None),
        }
    }

    /// Adds the bytes at file offset `at` (cut to the file's size).
    pub fn add(&mut self, at: u64, bytes: &'a [u8]) {
        let keep = self.size.saturating_sub(at).min(bytes.len() as u64) as usize;
        if keep > 0 {
            self.pieces.push((at, &bytes[..keep]));
        }
    }

    /// The piece holding `offset`, from `offset` to the piece's end.
    fn from(&self, offset: u64) -> Option<&'a [u8]> {
        self.pieces.iter().find_map(|&(at, b)| {
            let end = at + b.len() as u64;
            (at <= offset && offset < end).then(|| &b[(offset - at) as usize..])
        })
    }

    /// Notes the first byte of `[offset, end)` no piece holds (a byte
    /// within the file: past its end the file is malformed, not partial).
    fn note_missing(&self, offset: u64, end: u64) {
        let mut at = offset;
        while at < end.min(self.size) {
            match self.from(at) {
                Some(rest) => at += rest.len() as u64,
                None => {
                    self.missing.set(Some(at));
                    return;
                }
            }
        }
    }
}

impl<'a> ReadRef<'a> for &FilePieces<'a> {
    fn len(self) -> Result<u64, ()> {
        Ok(self.size)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        let end = offset.checked_add(size).ok_or(())?;
        if end > self.size {
            return Err(());
        }
        if size == 0 {
            return Ok(&[]);
        }
        match self.from(offset) {
            Some(rest) if rest.len() as u64 >= size => Ok(&rest[..size as usize]),
            _ => {
                self.note_missing(offset, end);
                Err(())
            }
        }
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Err(());
        }
        let Some(rest) = self.from(range.start) else {
            self.note_missing(range.start, end);
            return Err(());
        };
        let rest = &rest[..rest.len().min((end - range.start) as usize)];
        match rest.iter().position(|&b| b == delimiter) {
            Some(n) => Ok(&rest[..n]),
            None => {
                self.note_missing(range.start + rest.len() as u64, end);
                Err(())
            }
        }
    }
}

/// What the held bytes of a file say about executing it.
pub fn parse_elf(file: &FilePieces<'_>) -> Result<Parsed, ExecError> {
    file.missing.set(None);
    let ident = match file.read_bytes_at(0, 16) {
        Ok(b) => b,
        Err(()) => {
            return Ok(match file.missing.take() {
                Some(missing) if file.size >= 16 => Parsed::Incomplete {
                    missing,
                    hot: Vec::new(),
                },
                _ => Parsed::NotElf,
            });
        }
    };
    if &ident[..4] != b"\x7fELF" {
        return Ok(Parsed::NotElf);
    }
    let mut deps = ElfDeps::default();
    let parsed = match elf::FileClass(ident[4]) {
        elf::ELFCLASS32 => parse_as::<elf::FileHeader32<Endianness>>(file, &mut deps),
        elf::ELFCLASS64 => parse_as::<elf::FileHeader64<Endianness>>(file, &mut deps),
        _ => return Err(ExecError::Malformed("unknown class")),
    };
    match parsed {
        Ok(()) => Ok(Parsed::Done(deps)),
        Err(why) => match file.missing.take() {
            Some(missing) => Ok(Parsed::Incomplete {
                missing,
                hot: deps.hot,
            }),
            None => Err(why),
        },
    }
}

/// The ELF walk for one class, filling `deps` as it goes; `Err` says
/// why it stopped (a missing byte, if that was it, is in `file.missing`).
fn parse_as<H: FileHeader<Endian = Endianness>>(
    file: &FilePieces<'_>,
    deps: &mut ElfDeps,
) -> Result<(), ExecError> {
    let bad = ExecError::Malformed;
    let header = H::parse(file).map_err(|_| bad("file header"))?;
    let endian = header.endian().map_err(|_| bad("endianness"))?;
    let phdrs = header
        .program_headers(endian, file)
        .map_err(|_| bad("program headers"))?;
    deps.machine = header.e_machine(endian).0;
    let Some(dynamic) = program_headers::<H>(file, endian, phdrs, deps)? else {
        return Ok(());
    };
    let entries = dynamic
        .dynamic(endian, file)
        .map_err(|_| bad("dynamic section"))?
        .unwrap_or_default();
    let value = |tag| {
        entries
            .iter()
            .map_while(|d| (d.d_tag(endian) != elf::DT_NULL).then_some(d))
            .find(|d| d.d_tag(endian) == tag)
            .map(|d| d.d_val(endian).into())
    };
    let (Some(strtab), Some(strsz)) = (value(elf::DT_STRTAB), value(elf::DT_STRSZ)) else {
        return Ok(());
    };
    let strings = string_table(endian, phdrs, strtab, strsz)?;
    dynamic_names(file, endian, entries, strings, deps)
}

/// The interpreter and hot ranges from the program headers; the dynamic
/// segment's header, if any.
fn program_headers<'p, H: FileHeader<Endian = Endianness>>(
    file: &FilePieces<'_>,
    endian: Endianness,
    phdrs: &'p [H::ProgramHeader],
    deps: &mut ElfDeps,
) -> Result<Option<&'p H::ProgramHeader>, ExecError> {
    let mut dynamic = None;
    for ph in phdrs {
        let (offset, size): (u64, u64) = (ph.p_offset(endian).into(), ph.p_filesz(endian).into());
        let range = offset..offset.saturating_add(size).min(file.size);
        let p_type = ph.p_type(endian);
        let code_or_data = ph.p_flags(endian).0 & (elf::PF_X.0 | elf::PF_W.0) != 0;
        let hot = (p_type == elf::PT_LOAD && (code_or_data || size <= MAX_HOT_READ_ONLY))
            || p_type == elf::PT_DYNAMIC;
        if hot && !range.is_empty() {
            deps.hot.push(range);
        }
        if p_type == elf::PT_DYNAMIC {
            dynamic = Some(ph);
        }
        let interp = ph
            .interpreter(endian, file)
            .map_err(|_| ExecError::Malformed("interpreter"))?;
        if let Some(interp) = interp {
            deps.interpreter = Some(name(interp).ok_or(ExecError::Malformed("interpreter name"))?);
        }
    }
    Ok(dynamic)
}

/// The file range of the dynamic string table: `DT_STRTAB` is an
/// address, found in the loaded segment that maps it.
fn string_table<P: ProgramHeader<Endian = Endianness>>(
    endian: Endianness,
    phdrs: &[P],
    strtab: u64,
    strsz: u64,
) -> Result<Range<u64>, ExecError> {
    let start = phdrs
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let vaddr: u64 = ph.p_vaddr(endian).into();
            let filesz: u64 = ph.p_filesz(endian).into();
            let offset: u64 = ph.p_offset(endian).into();
            (vaddr <= strtab && strtab - vaddr < filesz)
                .then(|| offset.saturating_add(strtab - vaddr))
        })
        .ok_or(ExecError::Malformed(
            "string table outside the loaded segments",
        ))?;
    Ok(start..start.saturating_add(strsz))
}

/// `DT_NEEDED`, `DT_RUNPATH` and `DT_RPATH` into `deps`.
fn dynamic_names<D: Dyn<Endian = Endianness>>(
    file: &FilePieces<'_>,
    endian: Endianness,
    entries: &[D],
    strings: Range<u64>,
    deps: &mut ElfDeps,
) -> Result<(), ExecError> {
    let bad = ExecError::Malformed;
    let string = |at: u64| -> Result<String, ExecError> {
        let start = strings.start.checked_add(at).ok_or(bad("string offset"))?;
        if start >= strings.end {
            return Err(bad("string offset"));
        }
        let bytes = file
            .read_bytes_at_until(start..strings.end, 0)
            .map_err(|_| bad("string"))?;
        name(bytes).ok_or(bad("string"))
    };
    let (mut runpath, mut rpath) = (None, None);
    for d in entries {
        let val: u64 = d.d_val(endian).into();
        match d.d_tag(endian) {
            elf::DT_NULL => break,
            elf::DT_NEEDED if deps.needed.len() < MAX_NEEDED => deps.needed.push(string(val)?),
            elf::DT_RUNPATH => runpath = Some(string(val)?),
            elf::DT_RPATH => rpath = Some(string(val)?),
            _ => {}
        }
    }
    if let Some(path) = runpath.or(rpath) {
        deps.search = path
            .split(':')
            .filter(|d| !d.is_empty())
            .take(MAX_SEARCH_DIRS)
            .map(str::to_string)
            .collect();
    }
    Ok(())
}

/// A name from the file: UTF-8, not empty, at most [`MAX_NAME`] bytes.
fn name(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() || bytes.len() > MAX_NAME {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

/// A script's interpreter and its first argument (`#!/usr/bin/env
/// python3` gives `/usr/bin/env` and `python3`), from the file's first
/// bytes; `None` when they do not start with a complete `#!` line.
pub fn shebang(first: &[u8]) -> Option<(String, Option<String>)> {
    let line = first.strip_prefix(b"#!")?;
    let line = &line[..line.len().min(MAX_SHEBANG)];
    let end = line.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&line[..end]).ok()?;
    let mut words = line.split([' ', '\t', '\r']).filter(|w| !w.is_empty());
    let interpreter = words.next()?;
    if !interpreter.starts_with('/') {
        return None;
    }
    Some((interpreter.to_string(), words.next().map(str::to_string)))
}

/// The directories glibc's loader (Debian's ld.so.conf and built-in
/// defaults), musl and 64-bit distributions search for a library of
/// machine `machine` not found on its run path, most specific first.
pub fn library_dirs(machine: u16) -> Vec<String> {
    let triplet = match elf::Machine(machine) {
        elf::EM_X86_64 => Some("x86_64-linux-gnu"),
        elf::EM_AARCH64 => Some("aarch64-linux-gnu"),
        elf::EM_386 => Some("i386-linux-gnu"),
        elf::EM_ARM => Some("arm-linux-gnueabihf"),
        elf::EM_PPC64 => Some("powerpc64le-linux-gnu"),
        elf::EM_S390 => Some("s390x-linux-gnu"),
        elf::EM_RISCV => Some("riscv64-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        for base in ["/usr/local/lib", "/lib", "/usr/lib"] {
            dirs.push(format!("{base}/{t}"));
        }
    }
    for d in ["/usr/local/lib", "/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(d.to_string());
    }
    dirs
}

#[cfg(test)]
mod tests;
