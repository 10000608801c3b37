// The checks each fuzz target runs, shared (by `include!`) with
// core/tests/fuzz_regressions.rs so every input a fuzzer ever found stays a
// test. Each function takes raw bytes and must not panic except on a real
// invariant violation.

use ringstar_core::footer::Footer;
use ringstar_core::inflate::ChunkReader;
use ringstar_core::layer::Compression;
use ringstar_core::tar::{self, Scanner};
use ringstar_core::toc::{self, Limits};
use ringstar_core::tree::{Chunk, FileKind, NodeId};
use ringstar_core::{Digest, Layer, OpenOptions};

/// Footer parsing from the last bytes of an untrusted blob.
pub fn footer(data: &[u8]) {
    if let Some(f) = Footer::find(data)
        && f != Footer::ExternalToc
    {
        // Whatever parses re-encodes to a footer that parses the same.
        assert_eq!(Footer::find(&f.encode()), Some(f));
    }
}

/// TOC JSON into the layer tree: every tree that builds is consistent.
pub fn toc(data: &[u8]) {
    let Ok(tree) = toc::parse(data, 1 << 20, Limits { max_entries: 10_000 }) else {
        return;
    };
    // Every node, without building paths (a deep tree's paths are
    // quadratic in its depth; the tree itself is not).
    for id in (0..tree.len() as u32).map(NodeId) {
        let node = tree.node(id);
        if node.kind() == FileKind::Reg {
            let covered: u64 = tree.chunks(id).iter().map(|c| c.size).sum();
            assert_eq!(covered, node.size());
            for c in tree.chunks(id) {
                assert!(c.offset < c.next_offset && c.next_offset <= 1 << 20);
            }
        }
        for (name, child) in tree.children(id) {
            assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..");
            assert_eq!(tree.lookup(id, name), Some(child));
            assert_ne!(tree.node(child).kind(), FileKind::Hardlink);
        }
    }
    assert_eq!(tree.lookup_path(""), Some(NodeId::ROOT));
}

/// Tar headers, PAX records and GNU long names.
pub fn tar_header(data: &[u8]) {
    if data.len() >= tar::BLOCK {
        let _ = tar::parse_header(&data[..tar::BLOCK], 0);
    }
    let _ = tar::parse_pax(data);
    let mut s = Scanner::new(data, data.len() as u64);
    for _ in 0..1000 {
        let Ok(Some(e)) = s.next_entry() else { break };
        assert!(e.data_offset + e.entry.size <= data.len() as u64);
        // What we read we can write, and read back the same.
        let h = tar::encode_header(&e.entry);
        if e.entry.size == 0 {
            let back = Scanner::new(&h[..], h.len() as u64).next_entry().unwrap().unwrap();
            assert_eq!(back.entry, e.entry);
        }
    }
}

/// A whole blob: footer, TOC member, TOC tar, JSON, tree.
pub fn layer_open(data: &[u8]) {
    let opts = OpenOptions {
        max_toc_bytes: 4 << 20,
        ..OpenOptions::default()
    };
    if let Ok(layer) = Layer::open(data, data.len() as u64, &opts) {
        for c in layer.tree.all_chunks() {
            assert!(c.next_offset <= layer.data_end);
        }
    }
}

/// Bounded inflate. Input: 2 bytes size, 2 bytes inner offset, 1 byte
/// compression, then the compressed bytes. The output never exceeds the
/// chunk and a verified read is what was asked for.
pub fn chunk_inflate(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let size = u16::from_le_bytes([data[0], data[1]]);
    let inner = u16::from_le_bytes([data[2], data[3]]);
    let compression = if data[4] & 1 == 1 { Compression::Zstd } else { Compression::Gzip };
    let body = &data[5..];
    let chunk = Chunk::new(1, 2 + body.len() as u64, u64::from(inner), 0, u64::from(size));
    let mut out = vec![0u8; usize::from(size)];
    let mut reader = ChunkReader::new();
    if reader.inflate(compression, &chunk, body, &mut out).is_ok() {
        let expected = Digest::of(&out);
        let mut again = vec![0u8; usize::from(size)];
        reader.read(compression, &chunk, Some(expected), body, &mut again).unwrap();
        assert_eq!(again, out);
    }
}

