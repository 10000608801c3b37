//! TOC parse speed and memory: the `many-files` conformance layer and a
//! generated 100 000-entry TOC, against a baseline measured in the same
//! run (serde_json's generic `Value` DOM: one heap object per field, what
//! a naive reader holds).
//!
//! Then whole-layer opens (footer, TOC gunzip, JSON, tree) of real blobs,
//! the same files also opened by the reference's `metadata/memory.NewReader`
//! (bench/build-reference-tocbench.sh) when `target/tools/tocbench` exists.
//!
//!     cargo run --release -p ringstar-bench --bin toc-bench [RUNS]

use std::path::{Path, PathBuf};
use std::process::Command;

use peak_alloc::PeakAlloc;
use ringstar_bench::{Rng, generated_toc, median_time, report, testdata, texty_bytes, toc_json_of};
use ringstar_core::layer::Compression;
use ringstar_core::tar::{self, Entry, EntryType};
use ringstar_core::toc::{self, Limits};
use ringstar_core::writer::{self, WriterOptions};
use ringstar_core::{Layer, OpenOptions};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

fn bench(label: &str, json: &[u8], runs: usize) {
    let data_end = ringstar_bench::toc_data_end(json);
    let limits = Limits::default();
    let parse_time = median_time(runs, || {
        toc::parse(json, data_end, Compression::Gzip, limits).expect("TOC parses");
    });
    let dom_time = median_time(runs, || {
        serde_json::from_slice::<serde_json::Value>(json).expect("JSON parses");
    });
    // Memory: retained tree, and the peak while building it.
    let base = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let tree = toc::parse(json, data_end, Compression::Gzip, limits).expect("TOC parses");
    let peak = HEAP.peak_usage() - base;
    let retained = HEAP.current_usage() - base;
    let entries = tree.toc_entries();
    let base = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let dom = serde_json::from_slice::<serde_json::Value>(json).expect("JSON parses");
    let dom_retained = HEAP.current_usage() - base;
    drop(dom);
    let secs = parse_time.as_secs_f64();
    report(
        "toc-parse",
        serde_json::json!({
            "input": label,
            "entries": entries,
            "nodes": tree.len(),
            "json_bytes": json.len(),
            "parse_ms": secs * 1e3,
            "entries_per_s": (entries as f64 / secs).round(),
            "mb_per_s": (json.len() as f64 / secs / 1e6 * 10.0).round() / 10.0,
            "tree_bytes_per_entry": (tree.memory_bytes() as f64 / entries as f64).round(),
            "retained_heap_per_entry": (retained as f64 / entries as f64).round(),
            "peak_heap_per_entry": (peak as f64 / entries as f64).round(),
            "baseline_dom_parse_ms": dom_time.as_secs_f64() * 1e3,
            "baseline_dom_heap_per_entry": (dom_retained as f64 / entries as f64).round(),
            "speed_ratio_vs_dom": (dom_time.as_secs_f64() / secs * 100.0).round() / 100.0,
            "memory_ratio_vs_dom": (dom_retained as f64 / retained as f64 * 100.0).round() / 100.0,
        }),
    );
}

/// A real layer of `files` small files in 1000 directories, written once
/// by our writer and kept under target/bench/.
fn generated_layer(files: usize) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/bench/files-{files}.esgz"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    let mut rng = Rng::new(3);
    let mut tar = Vec::new();
    for i in 0..files {
        let data = texty_bytes(rng.below(1500) as usize, &mut rng);
        let e = Entry {
            name: format!(
                "./usr/lib/python3/dist-packages/pkg{:04}/module_{i:06}.py",
                i % 1000
            ),
            entry_type: Some(EntryType::Reg),
            mode: 0o644,
            mtime: 1_700_000_000,
            size: data.len() as u64,
            ..Entry::default()
        };
        tar.extend(tar::encode_header(&e));
        tar.extend_from_slice(&data);
        tar.resize(tar.len() + tar::padding(data.len() as u64), 0);
    }
    let out = std::fs::File::create(&path)?;
    writer::build(&tar[..], out, &WriterOptions::default())?;
    Ok(path)
}

/// Runs the reference's tocbench on `blob`: (total open ms, live heap MB).
fn reference_open(tool: &Path, blob: &Path, runs: usize) -> anyhow::Result<(f64, f64)> {
    let out = Command::new(tool)
        .arg("-n")
        .arg(runs.to_string())
        .arg(blob)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tocbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let row = text.lines().last().unwrap_or_default();
    let cols: Vec<&str> = row.split('|').map(str::trim).collect();
    // | blob | total ms | footer | TOC read | decode | rest | alloc MB | live MB |
    anyhow::ensure!(cols.len() >= 9, "unexpected tocbench output: {text}");
    Ok((cols[2].parse()?, cols[8].parse()?))
}

fn bench_open(
    label: &str,
    path: &Path,
    runs: usize,
    reference: Option<&Path>,
) -> anyhow::Result<()> {
    let blob = std::fs::read(path)?;
    let opts = OpenOptions::default();
    let t = median_time(runs, || {
        Layer::open(&blob[..], blob.len() as u64, &opts).expect("opens");
    });
    let base = HEAP.current_usage();
    let layer = Layer::open(&blob[..], blob.len() as u64, &opts)?;
    let live = HEAP.current_usage() - base;
    let ms = t.as_secs_f64() * 1e3;
    let mut fields = serde_json::json!({
        "input": label,
        "entries": layer.tree.toc_entries(),
        "open_ms": (ms * 100.0).round() / 100.0,
        "live_heap_mb": (live as f64 / 1e6 * 100.0).round() / 100.0,
    });
    if let Some(tool) = reference {
        let (ref_ms, ref_mb) = reference_open(tool, path, runs)?;
        let o = fields.as_object_mut().expect("object");
        o.insert("reference_open_ms".into(), ref_ms.into());
        o.insert("reference_live_heap_mb".into(), ref_mb.into());
        o.insert(
            "open_speedup_vs_reference".into(),
            ((ref_ms / ms * 100.0).round() / 100.0).into(),
        );
        o.insert(
            "heap_ratio_reference_over_ours".into(),
            ((ref_mb / (live as f64 / 1e6) * 10.0).round() / 10.0).into(),
        );
    }
    report("layer-open", fields);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(7), |s| s.parse())?;
    let many = testdata().join("many-files.blob");
    bench("many-files", &toc_json_of(&std::fs::read(&many)?)?, runs);
    bench("generated-100k", &generated_toc(100_000), runs);
    let tool = std::env::var_os("TOCBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/tocbench")
        });
    let reference = tool.exists().then_some(tool.as_path());
    if reference.is_none() {
        eprintln!("no reference tocbench (bench/build-reference-tocbench.sh): reporting ours only");
    }
    bench_open("many-files", &many, runs, reference)?;
    bench_open("files-100k", &generated_layer(100_000)?, runs, reference)?;
    Ok(())
}
