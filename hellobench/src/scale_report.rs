//! The many-containers report: every sample as JSON and CSV, then per
//! (group, N) the medians of each snapshotter, ringstar's ratios over the
//! peer and overlayfs, and the FUSE latency per operation pooled over the
//! repetitions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::fusetrace::{Latencies, percentiles};
use crate::report::median;
use crate::scale::ScaleSample;

pub fn write_samples(dir: &Path, samples: &[ScaleSample]) -> anyhow::Result<()> {
    let mut csv = String::from(
        "date,net,group,n,snapshotter,variant,rep,pull_s,last_output_s,all_exited_s,failed,registry_requests,registry_mbytes,daemon_cpu_s,machine_cpu_s,trace_lost\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{},{},{:.2},{:.3},{:.3},{}",
            s.date,
            s.net,
            s.group,
            s.n,
            s.snapshotter,
            s.variant,
            s.rep,
            s.pull_s,
            s.last_output_s,
            s.all_exited_s,
            s.failed,
            s.registry_requests,
            s.registry_mbytes,
            s.daemon_cpu_s,
            s.machine_cpu_s,
            s.trace_lost
        );
    }
    std::fs::write(dir.join("scale-samples.csv"), csv)?;
    std::fs::write(
        dir.join("scale-samples.json"),
        serde_json::to_vec_pretty(samples)?,
    )?;
    Ok(())
}

/// (net, group, n, snapshotter, variant).
type Key = (String, String, usize, String, String);

/// Medians of one key's samples, and their pooled latencies.
#[derive(Debug, Default)]
struct Cell {
    wall: f64,
    exited: f64,
    pull: f64,
    cpu_ms_per_container: f64,
    machine_cpu_s: f64,
    rss: f64,
    anon: f64,
    requests: f64,
    mbytes: f64,
    failed: usize,
    reps: usize,
    latencies: Latencies,
}

fn cells(samples: &[ScaleSample]) -> BTreeMap<Key, Cell> {
    let mut groups: BTreeMap<Key, Vec<&ScaleSample>> = BTreeMap::new();
    for s in samples {
        let key = (
            s.net.clone(),
            s.group.clone(),
            s.n,
            s.snapshotter.clone(),
            s.variant.clone(),
        );
        groups.entry(key).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let m = |f: &dyn Fn(&ScaleSample) -> f64| median(v.iter().map(|s| f(s)).collect());
            let mut latencies = Latencies::default();
            for s in &v {
                latencies.merge(&s.latencies);
            }
            let cell = Cell {
                wall: m(&|s| s.last_output_s),
                exited: m(&|s| s.all_exited_s),
                pull: m(&|s| s.pull_s),
                cpu_ms_per_container: m(&|s| s.daemon_cpu_s * 1e3 / s.n as f64),
                machine_cpu_s: m(&|s| s.machine_cpu_s),
                rss: m(&|s| s.daemon_rss_mb),
                anon: m(&|s| s.daemon_rss_anon_mb),
                requests: m(&|s| s.registry_requests as f64),
                mbytes: m(&|s| s.registry_mbytes),
                failed: v.iter().map(|s| s.failed).sum(),
                reps: v.len(),
                latencies,
            };
            (k, cell)
        })
        .collect()
}

/// The markdown summary.
pub fn summary(samples: &[ScaleSample]) -> String {
    let cells = cells(samples);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| network | group | N | snapshotter | variant | **to last output** | all exited | pull | daemon CPU ms/container | machine CPU s | daemon RSS / anon MB | reqs | MB | failed | reps |"
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for ((net, group, n, snap, variant), c) in &cells {
        let _ = writeln!(
            out,
            "| {net} | {group} | {n} | {snap} | {variant} | **{:.2}** | {:.2} | {:.2} | {:.1} | {:.1} | {:.0} / {:.0} | {:.0} | {:.1} | {} | {} |",
            c.wall,
            c.exited,
            c.pull,
            c.cpu_ms_per_container,
            c.machine_cpu_s,
            c.rss,
            c.anon,
            c.requests,
            c.mbytes,
            c.failed,
            c.reps
        );
    }
    write_ratios(&mut out, &cells);
    write_latencies(&mut out, &cells);
    out
}

/// ringstar's median wall time over the peer's and overlayfs's.
fn write_ratios(out: &mut String, cells: &BTreeMap<Key, Cell>) {
    table_head(
        out,
        "To the last container's output, ringstar over the others (lower is better):",
        "| network | group | N | variant | ringstar/peer | ringstar/overlayfs |",
        "|---|---|---:|---|---:|---:|",
    );
    for ((net, group, n, snap, variant), c) in cells {
        if snap != "ringstar" {
            continue;
        }
        let other = |s: &str, v: &str| {
            cells
                .get(&(net.clone(), group.clone(), *n, s.into(), v.into()))
                .map_or("—".to_string(), |o| format!("{:.2}×", c.wall / o.wall))
        };
        let _ = writeln!(
            out,
            "| {net} | {group} | {n} | {variant} | {} | {} |",
            other("peer", variant),
            other("overlayfs", "org")
        );
    }
}

/// FUSE latency per operation, pooled over the repetitions of each key.
fn write_latencies(out: &mut String, cells: &BTreeMap<Key, Cell>) {
    table_head(
        out,
        "FUSE latency per operation (kernel tracepoints: queued to replied), pooled over the repetitions:",
        "| network | group | N | snapshotter | variant | operation | count/rep | p50 µs | p99 µs | max µs |",
        "|---|---|---:|---|---|---|---:|---:|---:|---:|",
    );
    for ((net, group, n, snap, variant), c) in cells {
        for (op, v) in &c.latencies.by_op {
            let p = percentiles(v);
            let _ = writeln!(
                out,
                "| {net} | {group} | {n} | {snap} | {variant} | {op} | {:.0} | {:.0} | {:.0} | {:.0} |",
                p.count as f64 / c.reps.max(1) as f64,
                p.p50_us,
                p.p99_us,
                p.max_us
            );
        }
        if c.latencies.lost > 0 {
            let _ = writeln!(
                out,
                "| {net} | {group} | {n} | {snap} | {variant} | (trace events lost) | {} | | | |",
                c.latencies.lost
            );
        }
    }
}

/// A table's introducing line, header and alignment row.
fn table_head(out: &mut String, intro: &str, header: &str, align: &str) {
    let _ = writeln!(out, "\n{intro}\n\n{header}\n{align}");
}
