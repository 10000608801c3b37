//! Which entries go in, in what order: the input spooled (decompressed)
//! to a temporary file, its entries read (old TOC, root landmarks and
//! earlier duplicates dropped), prioritized files and landmarks placed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};

use super::{WriteError, WriterOptions};
use crate::name;
use crate::tar::{EntryType, Located, Scanner};
use crate::toc::TOC_NAME;
use crate::tree::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};

/// Decompresses the input (by magic) into a temporary file, so entries can
/// be reordered without holding the layer in memory.
pub(super) fn spool_tar(mut input: impl Read) -> Result<(File, u64), WriteError> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match input.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let joined = head.chain(input);
    let mut reader: Box<dyn Read> = if magic[..n].starts_with(&[0x1f, 0x8b, 0x08]) {
        Box::new(flate2::read::MultiGzDecoder::new(joined))
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(joined)?)
    } else {
        Box::new(joined)
    };
    let mut spool = tempfile::tempfile()?;
    let len = io::copy(&mut reader, &mut spool)?;
    Ok((spool, len))
}

pub(super) fn read_entries(spool: &File, len: u64) -> Result<Vec<Located>, WriteError> {
    let mut scanner = Scanner::new(spool, len);
    let mut all = Vec::new();
    while let Some(e) = scanner.next_entry()? {
        all.push(e);
    }
    // Drop a previous TOC and root landmarks; later duplicates win, at the
    // position of the last occurrence.
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        last.insert(name::clean(&e.entry.name), i);
    }
    Ok(all
        .into_iter()
        .enumerate()
        .filter(|(i, e)| {
            let clean = name::clean(&e.entry.name);
            last.get(&clean) == Some(i)
                && clean != TOC_NAME
                && clean != PREFETCH_LANDMARK
                && clean != NO_PREFETCH_LANDMARK
        })
        .map(|(_, e)| e)
        .collect())
}

pub(super) enum Item {
    Input(usize),
    Landmark(&'static str),
}

/// Prioritized files first (each after its not-yet-written parents and
/// hardlink target), then the landmark, then the rest in input order. No
/// prioritized files: `.no.prefetch.landmark` first.
pub(super) fn order_entries(
    entries: &[Located],
    opts: &WriterOptions,
) -> Result<(Vec<Item>, Vec<String>), WriteError> {
    if opts.prioritized.is_empty() {
        let mut out = vec![Item::Landmark(NO_PREFETCH_LANDMARK)];
        out.extend((0..entries.len()).map(Item::Input));
        return Ok((out, Vec::new()));
    }
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
                        out.push(Item::Input(top));
                    }
                }
            }
        }
    }
    out.push(Item::Landmark(PREFETCH_LANDMARK));
    out.extend(
        (0..entries.len())
            .filter(|i| !emitted.contains(i))
            .map(Item::Input),
    );
    Ok((out, missing))
}
