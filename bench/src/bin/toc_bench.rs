//! TOC parse speed and memory: the `many-files` conformance layer and a
//! generated 100 000-entry TOC, against a baseline measured in the same
//! run (serde_json's generic `Value` DOM: one heap object per field, what
//! a naive reader holds).
//!
//!     cargo run --release -p ringstar-bench --bin toc-bench [RUNS]

use peak_alloc::PeakAlloc;
use ringstar_bench::{Rng, median_time, report, testdata, toc_json_of};
use ringstar_core::Digest;
use ringstar_core::toc::{self, Limits, TocDocument, TocEntry};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// A TOC shaped like a real image's: directories of small files, a few
/// symlinks, each file with its digest and chunk digest.
fn generated_toc(entries: usize) -> Vec<u8> {
    let mut rng = Rng::new(7);
    let mut out = Vec::with_capacity(entries);
    let mut offset = 100i64;
    let mut dir = 0;
    while out.len() < entries {
        let dir_name = format!("./usr/lib/python3/dist-packages/pkg{dir:04}/");
        out.push(TocEntry {
            name: dir_name.clone().into(),
            kind: "dir".into(),
            mode: 0o755,
            mod_time: Some("2024-01-02T03:04:05Z".into()),
            ..TocEntry::default()
        });
        for f in 0..99 {
            if out.len() >= entries {
                break;
            }
            let name = format!("{dir_name}module_{f:03}_{}.py", rng.below(1000));
            if f % 20 == 19 {
                out.push(TocEntry {
                    name: name.into(),
                    kind: "symlink".into(),
                    link_name: Some("module_000.py".into()),
                    mode: 0o777,
                    ..TocEntry::default()
                });
                continue;
            }
            let size = 200 + rng.below(20_000) as i64;
            let digest = Digest::of(name.as_bytes()).to_string();
            out.push(TocEntry {
                name: name.into(),
                kind: "reg".into(),
                size,
                mod_time: Some("2024-01-02T03:04:05Z".into()),
                mode: 0o644,
                offset,
                digest: Some(digest.clone().into()),
                chunk_digest: Some(digest.into()),
                ..TocEntry::default()
            });
            offset += size / 3 + 100;
        }
        dir += 1;
    }
    TocDocument {
        version: 1,
        entries: out,
    }
    .to_json()
}

fn bench(label: &str, json: &[u8], runs: usize) {
    let data_end = u64::MAX / 2;
    let limits = Limits::default();
    let parse_time = median_time(runs, || {
        toc::parse(json, data_end, limits).expect("TOC parses");
    });
    let dom_time = median_time(runs, || {
        serde_json::from_slice::<serde_json::Value>(json).expect("JSON parses");
    });
    // Memory: retained tree, and the peak while building it.
    let base = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let tree = toc::parse(json, data_end, limits).expect("TOC parses");
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

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args().nth(1).map_or(Ok(7), |s| s.parse())?;
    let blob = std::fs::read(testdata().join("many-files.blob"))?;
    bench("many-files", &toc_json_of(&blob)?, runs);
    bench("generated-100k", &generated_toc(100_000), runs);
    Ok(())
}
