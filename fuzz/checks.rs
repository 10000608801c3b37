// The checks each fuzz target runs, shared (by `include!`) with
// core/tests/fuzz_regressions.rs so every input a fuzzer ever found stays a
// test. Each function takes raw bytes and must not panic except on a real
// invariant violation.

use ringstar_core::footer::Footer;
use ringstar_core::inflate::{self, ChunkReader};
use ringstar_core::layer::Compression;
use ringstar_core::limits::MAX_CHUNK_SPAN;
use ringstar_core::tar::{self, Entry, EntryType, Scanner};
use ringstar_core::toc::{self, Limits};
use ringstar_core::tree::{Chunk, FileKind, LayerTree, NodeId};
use ringstar_core::{Digest, Layer, OpenOptions, inspect, whiteout};

/// Footer parsing from the last bytes of an untrusted blob.
pub fn footer(data: &[u8]) {
    if let Some(f) = Footer::find(data)
        && f != Footer::ExternalToc
    {
        // Whatever parses re-encodes to a footer that parses the same.
        assert_eq!(Footer::find(&f.encode()), Some(f));
    }
}

/// TOC JSON into the layer tree, in memory and streamed: both agree, and
/// every tree that builds is consistent.
pub fn toc(data: &[u8]) {
    let data_end = 1 << 20;
    let tree = toc::parse(data, data_end, Compression::Gzip, Limits::default());
    let streamed = toc::parse_reader(data, data_end, Compression::Gzip, Limits::default());
    let tree = match (tree, streamed) {
        (Ok(a), Ok(b)) => {
            assert_eq!((a.len(), a.toc_entries()), (b.len(), b.toc_entries()));
            assert_eq!(a.all_chunks(), b.all_chunks());
            a
        }
        (Err(a), Err(b)) => {
            // The same error; serde_json's reader counts columns one off
            // from its slice parser.
            let what = |e: &ringstar_core::Error| {
                let s = e.to_string();
                s.split(" at line ").next().unwrap_or_default().to_string()
            };
            assert_eq!(what(&a), what(&b));
            return;
        }
        (a, b) => panic!("in-memory and streamed parses disagree: {a:?} / {b:?}"),
    };
    check_tree(&tree, data_end, Compression::Gzip);
}

/// What every tree promises, whatever TOC built it.
fn check_tree(tree: &LayerTree, data_end: u64, compression: Compression) {
    // Every node, without building paths (a deep tree's paths are
    // quadratic in its depth; the tree itself is not).
    for id in (0..tree.len() as u32).map(NodeId) {
        let node = tree.node(id);
        if node.kind() == FileKind::Reg {
            let covered: u64 = tree.chunks(id).iter().map(|c| c.size).sum();
            assert_eq!(covered, node.size());
            for c in tree.chunks(id) {
                assert!(c.offset < c.next_offset && c.next_offset <= data_end);
                assert!(c.compressed_len() <= MAX_CHUNK_SPAN);
                inflate::check_geometry(compression, c).unwrap();
            }
        }
        for (name, _) in tree.xattrs(id) {
            assert!(!toc::is_overlay_xattr(name) && !name.is_empty() && !name.contains('\0'));
        }
        for (name, child) in tree.children(id) {
            assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..");
            assert!(!name.contains('\0') && !matches!(name, ".wh." | ".wh.." | ".wh..."));
            assert_eq!(tree.lookup(id, name), Some(child));
            assert_ne!(tree.node(child).kind(), FileKind::Hardlink);
        }
        if node.kind() == FileKind::Dir {
            for (_, e) in whiteout::entries_from(tree, id, 0) {
                assert!(!e.name.is_empty() && e.name != "." && e.name != "..");
                for (k, v) in whiteout::xattrs(tree, e) {
                    if toc::is_overlay_xattr(k) {
                        assert_eq!((k, v), (whiteout::OPAQUE_XATTR, &b"y"[..]));
                    }
                }
            }
        }
    }
    assert_eq!(tree.lookup_path(""), Some(NodeId::ROOT));
}

/// Tar headers, PAX records and GNU long names; the archive walked held
/// whole (`Scanner`) and as a stream (`TarStream`, the converter's), which
/// must agree entry by entry and payload by payload until either stops.
pub fn tar_header(data: &[u8]) {
    tar_stream_agrees(data);
    if data.len() >= tar::BLOCK {
        let _ = tar::parse_header(&data[..tar::BLOCK], 0);
    }
    let _ = tar::parse_pax(data);
    let mut s = Scanner::new(data, data.len() as u64);
    // Until the scanner stops: one that does not advance is a hang, which
    // the fuzzer reports.
    while let Ok(Some(e)) = s.next_entry() {
        assert!(e.data_offset + e.entry.size <= data.len() as u64);
        // What we read we can write, and read back the same.
        let h = tar::encode_header(&e.entry);
        if e.entry.size == 0 {
            let back = Scanner::new(&h[..], h.len() as u64).next_entry().unwrap().unwrap();
            assert_eq!(back.entry, e.entry);
        }
    }
}

fn tar_stream_agrees(data: &[u8]) {
    let mut scan = Scanner::new(data, data.len() as u64);
    let mut stream = tar::TarStream::new(data);
    while let (Ok(Some(held)), Ok(Some(streamed))) = (scan.next_entry(), stream.next_entry()) {
        assert_eq!(held.entry, streamed);
        // Payload sizes are the input's (untrusted): read in bounded steps.
        let mut at = held.data_offset;
        let mut left = streamed.size;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            if stream.read_payload(&mut buf[..n]).is_err() {
                return;
            }
            assert_eq!(&buf[..n], &data[at as usize..at as usize + n]);
            at += n as u64;
            left -= n as u64;
        }
    }
}

/// A whole blob: footer, TOC member, TOC tar, JSON, tree.
pub fn layer_open(data: &[u8]) {
    if let Ok(layer) = Layer::open(data, data.len() as u64, &OpenOptions::default()) {
        check_tree(&layer.tree, layer.data_end, layer.compression);
    }
}

/// Bounded inflate. Input: 8 bytes size, 8 bytes inner offset, 1 byte
/// compression, then the compressed bytes (the chunk's whole span). No
/// number is clamped: the streaming read must refuse or survive any, and
/// never emit more than the chunk; what it emits, the buffer read and a
/// verified read reproduce.
pub fn chunk_inflate(data: &[u8]) {
    if data.len() < 17 {
        return;
    }
    let size = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let inner = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let compression = if data[16] & 1 == 1 { Compression::Zstd } else { Compression::Gzip };
    let body = &data[17..];
    let chunk = Chunk::new(1, 1 + body.len() as u64, inner, 0, size);
    let mut reader = ChunkReader::new();
    let mut h = ringstar_core::digest::Hasher::new();
    let mut emitted = 0u64;
    // The digest of nothing: only an empty chunk verifies, but every
    // chunk streams all it has before the check.
    let r = reader.stream(compression, &chunk, body, Some(Digest::empty()), |p| {
        emitted += p.len() as u64;
        assert!(emitted <= size);
        h.update(p);
    });
    let complete = match r {
        Ok(()) => true,
        Err(ringstar_core::ChunkError::DigestMismatch { .. }) => true,
        Err(_) => false,
    };
    if !complete {
        return;
    }
    assert_eq!(emitted, size);
    let expected = h.finish();
    // The buffer is as long as what really inflated (the stream emitted
    // it all), not a number the input merely claims. The buffered read
    // reproduces the streamed bytes: it verifies against their digest.
    let mut out = vec![0u8; emitted as usize];
    reader.read(compression, &chunk, Some(expected), body, &mut out).unwrap();
    reader.stream(compression, &chunk, body, Some(expected), |_| {}).unwrap();
}

/// A TOC as a real blob carries it, over a real payload, then every file
/// read back. Input: 1 byte flags (bit 0: zstd:chunked), 4 bytes LE JSON
/// length, the JSON, then the payload (the blob's bytes before the TOC,
/// used as they are). The harness only does the framing a fuzzer cannot
/// guess (tar checksum, gzip CRC, footer); nothing is clamped.
pub fn layer_toc(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    // The TOC in a zstd:chunked frame, in the blob's gzip member, or in
    // a TOC blob of its own (external TOC).
    let (zstd, external) = (data[0] & 3 == 1, data[0] & 3 == 2);
    let json_len = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
    let rest = &data[5..];
    let (json, payload) = rest.split_at(json_len.min(rest.len()));
    let mut blob = payload.to_vec();
    let mut toc_blob = None;
    if zstd {
        let frame = zstd_raw_frame(json);
        blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
        blob.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        let toc_offset = blob.len() as u64;
        blob.extend_from_slice(&frame);
        blob.extend_from_slice(
            &Footer::ZstdChunked {
                toc_offset,
                toc_compressed_len: frame.len() as u64,
                toc_uncompressed_len: json.len() as u64,
            }
            .encode(),
        );
    } else {
        let mut tar = tar::encode_header(&Entry {
            name: "stargz.index.json".into(),
            entry_type: Some(EntryType::Reg),
            size: json.len() as u64,
            ..Entry::default()
        });
        tar.extend_from_slice(json);
        tar.resize(tar.len() + tar::padding(json.len() as u64) + 1024, 0);
        if external {
            toc_blob = Some(gzip_stored(&tar));
            blob.extend_from_slice(&Footer::ExternalToc.encode());
        } else {
            let toc_offset = blob.len() as u64;
            blob.extend_from_slice(&gzip_stored(&tar));
            blob.extend_from_slice(&Footer::Estargz { toc_offset }.encode());
        }
    }
    let opts = OpenOptions {
        toc_digest: Some(Digest::of(json)),
        ..OpenOptions::default()
    };
    let opened = match &toc_blob {
        Some(toc) => Layer::open_external_toc(blob.len() as u64, toc, &opts),
        None => Layer::open(&blob[..], blob.len() as u64, &opts),
    };
    let Ok(layer) = opened else {
        return;
    };
    check_tree(&layer.tree, layer.data_end, layer.compression);
    for r in inspect::inspect(&layer, &blob[..]) {
        // A file reads back whole and matching its digest, or not at all.
        assert!(r.sha256.is_none() || r.error.is_none());
    }
}

/// `data` as one gzip member of stored deflate blocks.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    out.extend_from_slice(&(!crc).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// `data` as one zstd frame of raw blocks (no checksum).
fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
    // Magic, then a descriptor with an 8-byte content size and no window
    // (single segment).
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut blocks = data.chunks(128 * 1024).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(b) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = last | ((b.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(b);
    }
    out
}

/// What executing a file opens next (core::exec), from a file's bytes as
/// a lazy pull holds them: whole, then with a hole the input places.
/// With every byte held the answer is never "incomplete"; with a hole,
/// the byte asked for lies in it; every range named lies in the file.
pub fn exec_file(data: &[u8]) {
    use ringstar_core::exec::{self, FilePieces, MAX_NAME, MAX_NEEDED, Parsed};
    let Some((&cut, file)) = data.split_first() else {
        return;
    };
    let size = file.len() as u64;
    let check_done = |parsed: &Parsed| {
        if let Parsed::Done(d) = parsed {
            assert!(d.needed.len() <= MAX_NEEDED);
            assert!(d.needed.iter().chain(&d.interpreter).all(|n| !n.is_empty() && n.len() <= MAX_NAME));
            assert!(d.hot.iter().all(|r| r.start < r.end && r.end <= size));
        }
    };
    let mut whole = FilePieces::new(size);
    whole.add(0, file);
    if let Ok(p) = exec::parse_elf(&whole) {
        assert!(!matches!(p, Parsed::Incomplete { .. }), "incomplete with every byte held");
        check_done(&p);
    }
    let hole_start = file.len() * usize::from(cut) / 256;
    let hole_end = hole_start + (file.len() - hole_start) / 2;
    let mut holed = FilePieces::new(size);
    holed.add(0, &file[..hole_start]);
    holed.add(hole_end as u64, &file[hole_end..]);
    match exec::parse_elf(&holed) {
        Ok(Parsed::Incomplete { missing, hot }) => {
            assert!((hole_start as u64..hole_end as u64).contains(&missing), "asked for held byte {missing}");
            assert!(hot.iter().all(|r| r.start < r.end && r.end <= size));
        }
        Ok(p) => check_done(&p),
        Err(_) => {}
    }
    let _ = exec::shebang(file);
}
