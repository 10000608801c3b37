//! Our writer → our reader, on generated trees: every entry comes back
//! with its attributes and content, through chunked inflate + verify, for
//! any chunk size and compression level. When `ESGZ_CHECK` names the
//! reference reader (shared/tools/build-esgz-check.sh), the same blobs must
//! open and verify there too.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

use base64::Engine as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use ringstar_core::inspect::{self, Record};
use ringstar_core::tar::{self, Entry, EntryType};
use ringstar_core::writer::{self, OutputFormat, WriterOptions};
use ringstar_core::{Digest, Layer, OpenOptions};

#[derive(Debug, Clone)]
struct Spec {
    path: String,
    kind: EntryType,
    data: Vec<u8>,
    mode: u32,
    uid: u32,
    link: String,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
}

fn leaf_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "f[a-z0-9._-]{0,12}",
        "f[a-z]{120,200}",
        "fünï ☃[a-z]{0,4}",
        Just("f with spaces".to_string()),
    ]
}

fn dir_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![
            Just("d0"),
            Just("d1"),
            Just("dé"),
            Just("d.long-directory-name")
        ],
        0..4,
    )
    .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn spec() -> impl Strategy<Value = Spec> {
    let kind = prop_oneof![
        4 => Just(EntryType::Reg),
        1 => Just(EntryType::Symlink),
        1 => Just(EntryType::Char),
        1 => Just(EntryType::Block),
        1 => Just(EntryType::Fifo),
    ];
    (
        dir_path(),
        leaf_name(),
        kind,
        prop::collection::vec(any::<u8>(), 0..700),
        prop_oneof![
            Just(0o644u32),
            Just(0o4755),
            Just(0o2700),
            Just(0o1777),
            Just(0o600)
        ],
        prop_oneof![Just(0u32), Just(1000), Just(65534), Just(4_000_000)],
        "(\\.\\./)?[a-z/]{0,150}",
        (0u32..300, 0u32..300),
        prop::collection::vec(
            (
                "user\\.[a-z]{1,8}",
                prop::collection::vec(any::<u8>(), 0..20),
            ),
            0..3,
        ),
    )
        .prop_map(|(dirs, leaf, kind, data, mode, uid, link, dev, xattrs)| {
            let mut path = dirs.join("/");
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(&leaf);
            Spec {
                path,
                kind,
                data: if kind == EntryType::Reg {
                    data
                } else {
                    Vec::new()
                },
                mode,
                uid,
                link: if kind == EntryType::Symlink {
                    link
                } else {
                    String::new()
                },
                dev: if matches!(kind, EntryType::Char | EntryType::Block) {
                    dev
                } else {
                    (0, 0)
                },
                xattrs: xattrs
                    .into_iter()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect(),
            }
        })
}

fn entry_of(s: &Spec, prefix: &str) -> Entry {
    Entry {
        name: format!("{prefix}{}", s.path),
        entry_type: Some(s.kind),
        mode: s.mode,
        uid: s.uid,
        gid: s.uid / 2,
        uname: if s.uid == 1000 {
            "user".into()
        } else {
            String::new()
        },
        size: s.data.len() as u64,
        mtime: 1_700_000_000,
        link_name: s.link.clone(),
        dev_major: s.dev.0,
        dev_minor: s.dev.1,
        xattrs: s.xattrs.clone(),
        ..Entry::default()
    }
}

/// A tar with the specs (later duplicates win) plus one hardlink to the
/// first regular file.
fn make_tar(specs: &[Spec], prefix: &str) -> (Vec<u8>, BTreeMap<String, Spec>) {
    let mut tar = Vec::new();
    let mut model: BTreeMap<String, Spec> = BTreeMap::new();
    for s in specs {
        tar.extend(tar::encode_header(&entry_of(s, prefix)));
        tar.extend_from_slice(&s.data);
        tar.resize(tar.len() + tar::padding(s.data.len() as u64), 0);
        model.insert(s.path.clone(), s.clone());
    }
    if let Some(target) = model.values().find(|s| s.kind == EntryType::Reg).cloned() {
        let link = Spec {
            path: "hardlink-to-first".into(),
            kind: EntryType::Hardlink,
            data: Vec::new(),
            link: format!("{prefix}{}", target.path),
            mode: 0o644,
            uid: 0,
            dev: (0, 0),
            xattrs: Vec::new(),
        };
        tar.extend(tar::encode_header(&entry_of(&link, prefix)));
        model.insert(
            link.path.clone(),
            Spec {
                link: target.path,
                ..link
            },
        );
    }
    tar.extend_from_slice(&[0u8; 1024]);
    (tar, model)
}

fn check(model: &BTreeMap<String, Spec>, records: &[Record]) -> Result<(), TestCaseError> {
    let by_name: BTreeMap<&str, &Record> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    for (path, s) in model {
        let r = by_name
            .get(path.as_str())
            .ok_or_else(|| TestCaseError::fail(format!("missing {path}")))?;
        prop_assert_eq!(r.kind, s.kind.toc_name(), "{}", path);
        prop_assert_eq!(r.mode, s.mode, "{}", path);
        prop_assert_eq!(r.uid, s.uid, "{}", path);
        prop_assert_eq!(r.gid, s.uid / 2, "{}", path);
        prop_assert_eq!(r.mtime, 1_700_000_000, "{}", path);
        match s.kind {
            EntryType::Reg => {
                prop_assert_eq!(r.size, Some(s.data.len() as u64));
                prop_assert_eq!(
                    r.sha256.clone(),
                    Some(Digest::of(&s.data).hex()),
                    "{} {:?}",
                    path,
                    r.error
                );
            }
            EntryType::Symlink | EntryType::Hardlink => {
                prop_assert_eq!(r.link.as_deref(), Some(s.link.as_str()))
            }
            EntryType::Char | EntryType::Block => {
                prop_assert_eq!((r.major, r.minor), (Some(s.dev.0), Some(s.dev.1)));
            }
            _ => {}
        }
        let want: BTreeMap<String, String> = s
            .xattrs
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(v),
                )
            })
            .collect();
        prop_assert_eq!(&r.xattrs, &want, "{}", path);
        if s.uid == 1000 {
            prop_assert_eq!(r.uname.as_deref(), Some("user"));
        }
    }
    Ok(())
}

fn reference_check(blob: &[u8], toc_digest: Digest) {
    let Some(tool) = std::env::var_os("ESGZ_CHECK") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set ESGZ_CHECK to the reference reader (shared/tools/build-esgz-check.sh)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layer.esgz");
    std::fs::write(&path, blob).unwrap();
    let out = Command::new(tool)
        .arg(&path)
        .arg(toc_digest.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "reference reader failed: {text}");
    for bad in ["OPEN-ERROR", "VERIFY-ERROR", "READ-ERROR"] {
        assert!(!text.contains(bad), "reference reader: {text}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn writer_then_reader(
        specs in prop::collection::vec(spec(), 1..24),
        chunk_size in prop_oneof![1u64..64, 64u64..2000, Just(4u64 << 20)],
        level in 0i32..=12,
        prefix in prop_oneof![Just(""), Just("./"), Just("/")],
    ) {
        let (tar, model) = make_tar(&specs, prefix);
        let opts = WriterOptions { chunk_size, compression_level: level, ..WriterOptions::default() };
        let (blob, built) = writer::build_to_vec(&tar[..], &opts).unwrap();
        prop_assert_eq!(built.blob_size, blob.len() as u64);
        prop_assert_eq!(built.blob_digest, Digest::of(&blob));
        // DiffID: the whole blob decompressed.
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut all).unwrap();
        prop_assert_eq!(built.diff_id, Digest::of(&all));
        let open = OpenOptions { toc_digest: Some(built.toc_digest), ..OpenOptions::default() };
        let layer = Layer::open(&blob[..], blob.len() as u64, &open).unwrap();
        prop_assert!(layer.tree.has_no_prefetch_landmark());
        check(&model, &inspect::inspect(&layer, &blob[..]))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// zstd:chunked: our reader reads back every entry (TOC digest
    /// checked), a plain zstd decoder skips the TOC and footer frames and
    /// gives the tar the DiffID names, and the annotations locate the TOC.
    #[test]
    fn zstd_chunked_writer_then_reader(
        specs in prop::collection::vec(spec(), 1..24),
        chunk_size in prop_oneof![1u64..64, 64u64..2000, Just(4u64 << 20)],
        level in 1i32..=9,
    ) {
        let (tar, model) = make_tar(&specs, "");
        let opts = WriterOptions {
            chunk_size,
            format: OutputFormat::ZstdChunked,
            compression_level: level,
            ..WriterOptions::default()
        };
        let (blob, built) = writer::build_to_vec(&tar[..], &opts).unwrap();
        prop_assert_eq!(built.blob_digest, Digest::of(&blob));
        let all = zstd::decode_all(&blob[..]).unwrap();
        prop_assert_eq!(built.diff_id, Digest::of(&all));
        prop_assert_eq!(built.uncompressed_size, all.len() as u64);
        let manifest = built.zstd_chunked.clone().expect("zstd:chunked annotations");
        let pos: Vec<u64> = manifest.position.split(':').map(|n| n.parse().unwrap()).collect();
        let frame = &blob[pos[0] as usize..(pos[0] + pos[1]) as usize];
        prop_assert_eq!(manifest.checksum, Digest::of(frame));
        prop_assert_eq!(Digest::of(&zstd::decode_all(frame).unwrap()), built.toc_digest);
        prop_assert_eq!(pos[3], 1);
        let open = OpenOptions { toc_digest: Some(built.toc_digest), ..OpenOptions::default() };
        let layer = Layer::open(&blob[..], blob.len() as u64, &open).unwrap();
        check(&model, &inspect::inspect(&layer, &blob[..]))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// External TOC: the blob alone is recognised as such (not served);
    /// with its TOC blob every entry reads back, the TOC digest checked;
    /// the blob decompresses to the tar the DiffID names.
    #[test]
    fn external_toc_writer_then_reader(
        specs in prop::collection::vec(spec(), 1..24),
        chunk_size in prop_oneof![1u64..64, Just(4u64 << 20)],
    ) {
        let (tar, model) = make_tar(&specs, "");
        let opts = WriterOptions {
            chunk_size,
            format: OutputFormat::ExternalToc,
            ..WriterOptions::default()
        };
        let (blob, built) = writer::build_to_vec(&tar[..], &opts).unwrap();
        let toc_blob = built.external_toc.clone().expect("a TOC blob");
        let mut all = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut all).unwrap();
        prop_assert_eq!(built.diff_id, Digest::of(&all));
        let open = OpenOptions { toc_digest: Some(built.toc_digest), ..OpenOptions::default() };
        let alone = Layer::open(&blob[..], blob.len() as u64, &open);
        prop_assert!(matches!(alone, Err(ringstar_core::Error::ExternalToc)));
        let layer = Layer::open_external_toc(blob.len() as u64, &toc_blob, &open).unwrap();
        check(&model, &inspect::inspect(&layer, &blob[..]))?;
        let wrong = OpenOptions { toc_digest: Some(Digest::of(b"another")), ..OpenOptions::default() };
        prop_assert!(Layer::open_external_toc(blob.len() as u64, &toc_blob, &wrong).is_err());
    }
}

#[test]
fn reference_reader_opens_our_zstd_chunked_layers() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..6 {
        let specs = prop::collection::vec(spec(), 1..16)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (tar, _) = make_tar(&specs, "./");
        for chunk_size in [7, 4 << 20] {
            let opts = WriterOptions {
                chunk_size,
                format: OutputFormat::ZstdChunked,
                compression_level: 3,
                prioritized: vec![specs[0].path.clone()],
                ..WriterOptions::default()
            };
            let (blob, built) = writer::build_to_vec(&tar[..], &opts).unwrap();
            reference_check(&blob, built.toc_digest);
        }
    }
}

#[test]
fn reference_reader_opens_our_layers() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..8 {
        let specs = prop::collection::vec(spec(), 1..16)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (tar, _) = make_tar(&specs, "./");
        for chunk_size in [7, 4 << 20] {
            let opts = WriterOptions {
                chunk_size,
                prioritized: vec![specs[0].path.clone()],
                ..WriterOptions::default()
            };
            let (blob, built) = writer::build_to_vec(&tar[..], &opts).unwrap();
            reference_check(&blob, built.toc_digest);
        }
    }
}

#[test]
fn gzip_and_zstd_inputs_give_the_same_layer() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let specs = prop::collection::vec(spec(), 5..10)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let (tar, _) = make_tar(&specs, "");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    let opts = WriterOptions::default();
    let plain = writer::build_to_vec(&tar[..], &opts).unwrap();
    assert_eq!(writer::build_to_vec(&gz[..], &opts).unwrap(), plain);
    assert_eq!(writer::build_to_vec(&zst[..], &opts).unwrap(), plain);
}
