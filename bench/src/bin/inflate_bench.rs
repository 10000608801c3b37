//! Chunk inflate speed: libdeflate (ringstar's ChunkReader, with its
//! bound and copy) against flate2 on the zlib-rs backend, on the same
//! chunks in one run, interleaved so load on the machine hits both alike.
//!
//!     cargo run --release -p ringstar-bench --bin inflate-bench [ROUNDS]

use std::io::Read;
use std::time::Instant;

use ringstar_bench::{Rng, report, texty_bytes};
use ringstar_core::inflate::ChunkReader;
use ringstar_core::layer::Compression;
use ringstar_core::tar::{self, Entry, EntryType};
use ringstar_core::tree::Chunk;
use ringstar_core::writer::{self, WriterOptions};
use ringstar_core::{Layer, OpenOptions};

/// A layer of `files` files of `size` text-like bytes each, and every chunk
/// in it with its compressed bytes.
fn layer_chunks(
    files: usize,
    size: usize,
    chunk_size: u64,
) -> anyhow::Result<Vec<(Chunk, Vec<u8>)>> {
    let mut rng = Rng::new(11);
    let mut tar = Vec::new();
    for i in 0..files {
        let data = texty_bytes(size, &mut rng);
        let e = Entry {
            name: format!("f{i:05}"),
            entry_type: Some(EntryType::Reg),
            mode: 0o644,
            size: data.len() as u64,
            ..Entry::default()
        };
        tar.extend(tar::encode_header(&e));
        tar.extend_from_slice(&data);
        tar.resize(tar.len() + tar::padding(data.len() as u64), 0);
    }
    let opts = WriterOptions {
        chunk_size,
        ..WriterOptions::default()
    };
    let (blob, _) = writer::build_to_vec(&tar[..], &opts)?;
    let layer = Layer::open(&blob[..], blob.len() as u64, &OpenOptions::default())?;
    Ok(layer
        .tree
        .walk()
        .into_iter()
        .flat_map(|(_, id)| layer.tree.chunks(id).to_vec())
        .filter(|c| c.size > 1)
        .map(|c| (c, blob[c.offset as usize..c.next_offset as usize].to_vec()))
        .collect())
}

fn run(label: &str, chunks: &[(Chunk, Vec<u8>)], rounds: usize) {
    let total: u64 = chunks.iter().map(|(c, _)| c.size).sum();
    let compressed: usize = chunks.iter().map(|(_, z)| z.len()).sum();
    let mut reader = ChunkReader::new();
    let mut out = Vec::new();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        for (c, z) in chunks {
            out.resize(c.size as usize, 0);
            reader
                .inflate(Compression::Gzip, c, z, &mut out)
                .expect("inflates");
        }
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for (c, z) in chunks {
            out.resize(c.size as usize, 0);
            let mut d = flate2::read::GzDecoder::new(&z[..]);
            std::io::copy(&mut (&mut d).take(c.inner_offset), &mut std::io::sink()).expect("skips");
            d.read_exact(&mut out).expect("inflates");
        }
        theirs.push(t.elapsed().as_secs_f64());
    }
    ours.sort_by(f64::total_cmp);
    theirs.sort_by(f64::total_cmp);
    let (a, b) = (ours[rounds / 2], theirs[rounds / 2]);
    report(
        "inflate",
        serde_json::json!({
            "input": label,
            "chunks": chunks.len(),
            "uncompressed_mb": total as f64 / 1e6,
            "compression_ratio": (total as f64 / compressed as f64 * 100.0).round() / 100.0,
            "libdeflate_mb_per_s": (total as f64 / a / 1e6).round(),
            "flate2_zlib_rs_mb_per_s": (total as f64 / b / 1e6).round(),
            "speedup_libdeflate_over_flate2": (b / a * 100.0).round() / 100.0,
        }),
    );
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(9), |s| s.parse())?;
    run("4MiB-chunks", &layer_chunks(6, 8 << 20, 4 << 20)?, rounds);
    run(
        "small-files-4KiB",
        &layer_chunks(4000, 4096, 4 << 20)?,
        rounds,
    );
    Ok(())
}
