use super::*;
use crate::layer::{Layer, OpenOptions};
use crate::tree::{NO_PREFETCH_LANDMARK, NodeId, PREFETCH_LANDMARK};

fn tar_of(entries: &[(&str, EntryType, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let e = Entry {
            name: name.to_string(),
            entry_type: Some(*kind),
            mode: 0o644,
            size: data.len() as u64,
            link_name: link.to_string(),
            mtime: 1_700_000_000,
            ..Entry::default()
        };
        out.extend(tar::encode_header(&e));
        out.extend_from_slice(data);
        out.resize(out.len() + tar::padding(data.len() as u64), 0);
    }
    out
}

fn toc_names(blob: &[u8]) -> Vec<String> {
    let layer = Layer::open(blob, blob.len() as u64, &OpenOptions::default()).unwrap();
    // Rebuild TOC order from chunk offsets: members are in TOC order.
    let mut files: Vec<(u64, String)> = layer
        .tree
        .walk()
        .into_iter()
        .filter_map(|(name, id)| layer.tree.chunks(id).first().map(|c| (c.offset, name)))
        .collect();
    files.sort();
    files.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn prioritized_files_come_first_with_their_dependencies() {
    let tar = tar_of(&[
        ("a/one", EntryType::Reg, b"1", ""),
        ("b/", EntryType::Dir, b"", ""),
        ("b/two", EntryType::Reg, b"22", ""),
        ("c/link", EntryType::Hardlink, b"", "a/one"),
        ("d", EntryType::Reg, b"4444", ""),
    ]);
    let opts = WriterOptions {
        prioritized: vec!["c/link".into(), "./b/two".into()],
        ..WriterOptions::default()
    };
    let (blob, _) = build_to_vec(&tar[..], &opts).unwrap();
    // a/one (link target) before the landmark, then b/two, then the rest.
    assert_eq!(toc_names(&blob), ["a/one", "b/two", PREFETCH_LANDMARK, "d"]);
    let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
    let lm = layer.tree.prefetch_landmark().unwrap();
    let range = layer.tree.prefetch_range().unwrap();
    assert_eq!(range, layer.tree.chunks(lm)[0].offset);
    let two = layer.tree.lookup_path("b/two").unwrap();
    assert!(layer.tree.chunks(two)[0].next_offset <= range);
    assert!(!layer.tree.has_no_prefetch_landmark());
}

#[test]
fn no_prioritized_files_put_the_no_prefetch_landmark_first() {
    let tar = tar_of(&[("x", EntryType::Reg, b"x", "")]);
    let (blob, _) = build_to_vec(&tar[..], &WriterOptions::default()).unwrap();
    assert_eq!(toc_names(&blob), [NO_PREFETCH_LANDMARK, "x"]);
}

#[test]
fn missing_prioritized_is_an_error_unless_allowed() {
    let tar = tar_of(&[("x", EntryType::Reg, b"x", "")]);
    let mut opts = WriterOptions {
        prioritized: vec!["nope".into()],
        ..WriterOptions::default()
    };
    assert!(matches!(
        build_to_vec(&tar[..], &opts),
        Err(WriteError::MissingPrioritized(_))
    ));
    opts.allow_missing_prioritized = true;
    let (_, built) = build_to_vec(&tar[..], &opts).unwrap();
    assert_eq!(built.missing_prioritized, ["nope"]);
}

#[test]
fn old_toc_and_landmarks_are_dropped_and_duplicates_last_win() {
    let tar = tar_of(&[
        ("stargz.index.json", EntryType::Reg, b"{}", ""),
        ("./.prefetch.landmark", EntryType::Reg, b"\x0f", ""),
        ("sub/.prefetch.landmark", EntryType::Reg, b"kept", ""),
        ("f", EntryType::Reg, b"old", ""),
        ("g", EntryType::Reg, b"g", ""),
        ("./f", EntryType::Reg, b"new", ""),
    ]);
    let (blob, _) = build_to_vec(&tar[..], &WriterOptions::default()).unwrap();
    assert_eq!(
        toc_names(&blob),
        [NO_PREFETCH_LANDMARK, "sub/.prefetch.landmark", "g", "f"]
    );
    let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
    assert!(layer.tree.lookup(NodeId::ROOT, TOC_NAME).is_none());
    assert!(layer.tree.prefetch_landmark().is_none());
}

#[test]
fn chunk_sizes_readers_would_refuse_are_refused() {
    let tar = tar_of(&[("f", EntryType::Reg, b"x", "")]);
    for chunk_size in [MAX_WRITER_CHUNK_SIZE + 1, u64::MAX] {
        let opts = WriterOptions {
            chunk_size,
            ..WriterOptions::default()
        };
        assert!(matches!(
            build_to_vec(&tar[..], &opts),
            Err(WriteError::Option(_))
        ));
    }
}

#[test]
fn chunk_size_field_follows_the_reference() {
    let data = vec![7u8; 10];
    let tar = tar_of(&[
        ("f", EntryType::Reg, &data, ""),
        ("e", EntryType::Reg, &data[..8], ""),
    ]);
    let opts = WriterOptions {
        chunk_size: 4,
        ..WriterOptions::default()
    };
    let (blob, _) = build_to_vec(&tar[..], &opts).unwrap();
    let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
    let sizes = |p: &str| -> Vec<u64> {
        let id = layer.tree.lookup_path(p).unwrap();
        layer.tree.chunks(id).iter().map(|c| c.size).collect()
    };
    assert_eq!(sizes("f"), [4, 4, 2]);
    assert_eq!(sizes("e"), [4, 4]);
    // The raw TOC: the short tail chunk omits chunkSize; a full last one keeps it.
    let Footer::Estargz { toc_offset } = layer.footer else {
        unreachable!("the writer emits eStargz footers")
    };
    let mut json = String::new();
    flate2::read::GzDecoder::new(&blob[toc_offset as usize..])
        .read_to_string(&mut json)
        .unwrap();
    assert_eq!(json.matches("\"chunkSize\": 4").count(), 4, "{json}");
    assert!(json.contains("\t\"version\": 1"));
}

/// A tar of many small files and a few multi-chunk ones.
fn mixed_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut entries: Vec<(String, EntryType, Vec<u8>, &str)> = Vec::new();
    entries.push(("d/".into(), EntryType::Dir, Vec::new(), ""));
    for i in 0..200 {
        let data = format!("file {i} ").repeat(i % 13 + 1).into_bytes();
        entries.push((format!("d/f{i}"), EntryType::Reg, data, ""));
        if i % 50 == 0 {
            entries.push((format!("d/big{i}"), EntryType::Reg, big.clone(), ""));
        }
    }
    let refs: Vec<(&str, EntryType, &[u8], &str)> = entries
        .iter()
        .map(|(n, k, d, l)| (n.as_str(), *k, d.as_slice(), *l))
        .collect();
    tar_of(&refs)
}

#[test]
fn compression_threads_do_not_change_the_bytes() {
    let tar = mixed_tar();
    for prioritized in [vec![], vec!["d/f9".to_string(), "d/big100".to_string()]] {
        let one = WriterOptions {
            chunk_size: 4096,
            prioritized,
            ..WriterOptions::default()
        };
        let four = WriterOptions {
            threads: 4,
            ..one.clone()
        };
        let (a, built_a) = build_to_vec(&tar[..], &one).unwrap();
        let (b, built_b) = build_to_vec(&tar[..], &four).unwrap();
        assert!(a == b, "threads changed the blob");
        assert_eq!(built_a, built_b);
        let layer = Layer::open(&b[..], b.len() as u64, &OpenOptions::default()).unwrap();
        for p in ["d/f9", "d/big100", "d/f199"] {
            let id = layer.tree.lookup_path(p).unwrap();
            assert!(!layer.tree.chunks(id).is_empty(), "{p}");
        }
    }
}

#[test]
fn a_reopenable_source_is_read_once_or_twice_and_never_spooled_whole() {
    let tar = tar_of(&[
        ("a", EntryType::Reg, b"aaaa", ""),
        ("b", EntryType::Reg, b"bbbb", ""),
        ("c/link", EntryType::Hardlink, b"", "a"),
    ]);
    let opens = std::cell::Cell::new(0);
    let open = || {
        opens.set(opens.get() + 1);
        Ok(&tar[..])
    };
    let mut out = Vec::new();
    build_from(open, &mut out, &WriterOptions::default()).unwrap();
    assert_eq!(opens.replace(0), 1);

    let opts = WriterOptions {
        prioritized: vec!["b".into()],
        ..WriterOptions::default()
    };
    let mut via_source = Vec::new();
    build_from(open, &mut via_source, &opts).unwrap();
    assert_eq!(opens.replace(0), 2);
    // The same bytes as from a stream read once (spooled as it came).
    assert_eq!(via_source, build_to_vec(&tar[..], &opts).unwrap().0);
    assert_eq!(toc_names(&via_source), ["b", PREFETCH_LANDMARK, "a"]);

    // A prioritized hardlink whose target came before it: one more pass
    // for the target.
    let opts = WriterOptions {
        prioritized: vec!["c/link".into()],
        ..WriterOptions::default()
    };
    let mut linked = Vec::new();
    build_from(open, &mut linked, &opts).unwrap();
    assert_eq!(opens.get(), 3);
    assert_eq!(toc_names(&linked), ["a", PREFETCH_LANDMARK, "b"]);
}

#[test]
fn small_files_share_members_above_a_minimum_chunk_size() {
    let tar = mixed_tar();
    let base = WriterOptions {
        chunk_size: 4096,
        ..WriterOptions::default()
    };
    let shared = WriterOptions {
        min_chunk_size: 16 << 10,
        ..base.clone()
    };
    let (plain, _) = build_to_vec(&tar[..], &base).unwrap();
    let (blob, _) = build_to_vec(&tar[..], &shared).unwrap();
    let members = |b: &[u8]| {
        let layer = Layer::open(b, b.len() as u64, &OpenOptions::default()).unwrap();
        let mut offsets: Vec<u64> = layer
            .tree
            .walk()
            .into_iter()
            .flat_map(|(_, id)| {
                layer
                    .tree
                    .chunks(id)
                    .iter()
                    .map(|c| c.offset)
                    .collect::<Vec<_>>()
            })
            .collect();
        offsets.sort();
        offsets.dedup();
        offsets.len()
    };
    assert!(
        members(&blob) * 4 < members(&plain),
        "{} vs {}",
        members(&blob),
        members(&plain)
    );
    let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default()).unwrap();
    let records = crate::inspect::inspect(&layer, &blob[..]);
    let plain_layer = Layer::open(&plain[..], plain.len() as u64, &OpenOptions::default()).unwrap();
    let plain_records = crate::inspect::inspect(&plain_layer, &plain[..]);
    assert!(records.iter().all(|r| r.error.is_none()), "{records:?}");
    let digests = |rs: &[crate::inspect::Record]| -> Vec<(String, Option<String>)> {
        rs.iter()
            .map(|r| (r.name.clone(), r.sha256.clone()))
            .collect()
    };
    assert_eq!(digests(&records), digests(&plain_records));
}
