//! Which entries go in, in what order: the input decompressed (by its
//! magic) as a stream; prioritized files (and their parents and hardlink
//! targets) spooled to a temporary file in a first pass, so they can go
//! first while everything else streams through in the last pass in input
//! order. Only the prioritized files are ever held, never the layer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};

use super::{WriteError, WriterOptions};
use crate::name;
use crate::tar::{EntryType, Located, TarStream};
use crate::toc::TOC_NAME;
use crate::tree::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};

/// The input decompressed by its magic: gzip, zstd or a plain tar.
pub fn decompressed<'a>(input: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let magic = {
        use std::io::BufRead;
        input
            .fill_buf()?
            .get(..4)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(if magic.starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(input),
        ))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
    } else {
        Box::new(input)
    })
}

/// Entries a writer never copies from its input: an old TOC and root
/// landmarks (it writes its own).
pub(super) fn is_replaced(clean: &str) -> bool {
    clean == TOC_NAME || clean == PREFETCH_LANDMARK || clean == NO_PREFETCH_LANDMARK
}

/// `names` and every directory above each of them.
fn with_parents<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let mut out = HashSet::new();
    for n in names {
        let mut n = n;
        while !n.is_empty() && out.insert(n.to_string()) {
            n = name::parent(n);
        }
    }
    out
}

/// Entries spooled for the prioritized section: their headers, with
/// `data_offset` in the spool file.
pub(super) struct Spooled {
    pub(super) file: File,
    pub(super) entries: Vec<Located>,
}

/// Spools, from one pass over the input, every entry named in `wanted`
/// (every occurrence: the last wins when ordered).
fn spool_pass(
    input: impl Read,
    wanted: &HashSet<String>,
    spooled: &mut Spooled,
) -> Result<(), WriteError> {
    let mut tar = TarStream::new(decompressed(input)?);
    let mut buf = vec![0u8; 1 << 16];
    while let Some(entry) = tar.next_entry()? {
        let clean = name::clean(&entry.name);
        if is_replaced(&clean) || !wanted.contains(&clean) {
            continue;
        }
        let data_offset = spooled.file.stream_position()?;
        let mut left = entry.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            tar.read_payload(&mut buf[..n])?;
            spooled.file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        spooled.entries.push(Located {
            entry,
            header_offset: 0,
            data_offset,
        });
    }
    super::drain(tar.into_inner())
}

/// The prioritized files, their parents and hardlink targets, spooled:
/// one pass for the names, and one more only when a prioritized hardlink
/// points at a file that was not spooled (tar puts a target before its
/// links, so its name is learnt too late).
pub(super) fn spool_prioritized<R: Read>(
    open: &mut impl FnMut() -> io::Result<R>,
    opts: &WriterOptions,
) -> Result<Spooled, WriteError> {
    let mut spooled = Spooled {
        file: tempfile::tempfile()?,
        entries: Vec::new(),
    };
    let prioritized: Vec<String> = opts.prioritized.iter().map(|p| name::clean(p)).collect();
    let wanted = with_parents(prioritized.iter().map(String::as_str));
    spool_pass(open()?, &wanted, &mut spooled)?;
    let have: HashSet<String> = spooled
        .entries
        .iter()
        .map(|l| name::clean(&l.entry.name))
        .collect();
    let targets: Vec<String> = spooled
        .entries
        .iter()
        .filter(|l| l.entry.kind() == EntryType::Hardlink)
        .map(|l| name::clean(&l.entry.link_name))
        .filter(|t| !have.contains(t))
        .collect();
    if !targets.is_empty() {
        let more: HashSet<String> = with_parents(targets.iter().map(String::as_str))
            .into_iter()
            .filter(|n| !have.contains(n))
            .collect();
        spool_pass(open()?, &more, &mut spooled)?;
    }
    Ok(spooled)
}

/// The prioritized section among spooled `entries`: each prioritized file
/// after its not-yet-written parents and hardlink target, in order (the
/// last occurrence of a name). Returns it and the prioritized names not
/// found.
pub(super) fn order_prioritized(
    entries: &[Located],
    opts: &WriterOptions,
) -> Result<(Vec<usize>, Vec<String>), WriteError> {
    let by_name: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (name::clean(&e.entry.name), i))
        .collect();
    let mut emitted: HashSet<usize> = HashSet::new();
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for p in &opts.prioritized {
        let clean = name::clean(p);
        let Some(&i) = by_name.get(&clean) else {
            if opts.allow_missing_prioritized {
                missing.push(p.clone());
                continue;
            }
            return Err(WriteError::MissingPrioritized(p.clone()));
        };
        // Iterative: parents, then hardlink targets (and their parents).
        let mut want = vec![i];
        while let Some(&top) = want.last() {
            let e = &entries[top].entry;
            let clean = name::clean(&e.name);
            let mut deps: Vec<usize> = Vec::new();
            let mut dir = name::parent(&clean);
            while !dir.is_empty() {
                if let Some(&d) = by_name.get(dir) {
                    deps.push(d);
                }
                dir = name::parent(dir);
            }
            if e.kind() == EntryType::Hardlink
                && let Some(&t) = by_name.get(&name::clean(&e.link_name))
            {
                deps.push(t);
            }
            match deps
                .into_iter()
                .rev()
                .find(|d| !emitted.contains(d) && !want.contains(d))
            {
                Some(d) => want.push(d),
                None => {
                    want.pop();
                    if emitted.insert(top) {
                        out.push(top);
                    }
                }
            }
        }
    }
    Ok((out, missing))
}
