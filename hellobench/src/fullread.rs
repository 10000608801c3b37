//! Whole-image reads (#18): a data-heavy container (a JVM, a model
//! server, a backup agent) reads most of its image right away. A sample:
//! fresh containerd and snapshotter with its default config, pull, then
//! one container that reads its whole root filesystem (`tar -cf - . | wc
//! -c`, the virtual filesystems left out); then, the page cache dropped, a
//! second container of the same image reads it all again, from whatever
//! the snapshotter kept (ringstar's once it has unpacked the stored
//! layers: the time that takes is reported). Beside the times: the registry's requests and
//! bytes, the lazy daemon's memory (peak RSS over the sample, and RSS,
//! anonymous and file-backed, after the first read) and what it keeps on
//! disk.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::fusetrace::{FuseTrace, OpLatency, fuse_connections_below};
use crate::images::{Pushed, Spec};
use crate::report::median;
use crate::world::{Net, Snap, World, check_lazy, memory};

/// What the container runs: every file of its root, through tar.
/// The state directory is left out as well: not the image's content, a
/// FUSE layer hides it from listings, an unpacked one lists it.
const READ_ALL: &str = "cd / && tar -cf - --exclude=./proc --exclude=./sys --exclude=./dev \
     --exclude=./.stargz-snapshotter . | wc -c";

/// How long the re-read waits for ringstar to unpack the image's layers.
const UNPACK_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct FullReadSample {
    pub date: String,
    pub net: String,
    pub image: String,
    pub snapshotter: String,
    pub variant: String,
    pub rep: u32,
    pub pull_s: f64,
    /// Pull, then the first container's whole read (to its exit).
    pub cold_s: f64,
    /// A second container's whole read, page cache dropped first.
    pub reread_s: f64,
    /// ringstar: seconds from the end of the first read until every
    /// layer was unpacked (the re-read waits for it: a container started
    /// after an image is stored); `None` for the others, or when it did
    /// not happen within [`UNPACK_WAIT`].
    pub unpacked_after_s: Option<f64>,
    /// Bytes tar wrote (the same for every snapshotter, or a bug).
    pub tar_bytes: u64,
    pub registry_requests: usize,
    pub registry_mbytes: f64,
    /// The lazy daemon's VmHWM at the end of the sample.
    pub peak_rss_mb: f64,
    pub rss_mb: f64,
    pub rss_anon_mb: f64,
    pub rss_file_mb: f64,
    /// What the daemon's root holds on disk (its own mounts left out).
    pub disk_mb: f64,
    /// FUSE requests of the re-read, per operation (kernel tracepoints).
    pub reread_ops: BTreeMap<String, OpLatency>,
}

/// One sample of `spec`'s image through `snap`.
pub fn sample(
    world: &mut World,
    net: Net,
    (spec, pushed): (&Spec, &Pushed),
    snap: Snap,
    variant: &str,
    rep: u32,
) -> anyhow::Result<FullReadSample> {
    let what = format!("{} {} {variant} full read", spec.name, snap.label());
    // The daemons' default configs: prefetch on.
    world.reset(snap, false)?;
    let reference = format!("{}/bench/{}:{variant}", world.host(), spec.name);
    let log_start = world.registry_log_end();
    let t0 = Instant::now();
    world
        .pull(snap, &reference)
        .with_context(|| format!("{what}: pull"))?;
    let pull_s = t0.elapsed().as_secs_f64();
    let tar_bytes = read_all(world, snap, &reference, "fullread-1")
        .with_context(|| format!("{what}: first read"))?;
    let cold_s = t0.elapsed().as_secs_f64();
    let mem = world.snapshotter_pid().map(memory).unwrap_or_default();
    let unpacked_after_s = (snap == Snap::Ringstar)
        .then(|| wait_unpacked(world, snap))
        .flatten();
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")?;
    // Traced for every snapshotter alike (overlayfs has no FUSE request
    // to record), so whatever tracing costs, each re-read pays it.
    let trace = FuseTrace::start()?;
    let t1 = Instant::now();
    let again = read_all(world, snap, &reference, "fullread-2")
        .with_context(|| format!("{what}: second read"))?;
    let reread_s = t1.elapsed().as_secs_f64();
    let reread_ops = trace
        .finish(&fuse_connections_below(&world.snap_root(snap)))?
        .summary();
    if again != tar_bytes {
        bail!("{what}: the second read gave {again} bytes, the first {tar_bytes}");
    }
    let peak = world.snapshotter_pid().map_or(0.0, |p| memory(p).peak_mb);
    let log = world.registry_log(log_start);
    if snap != Snap::Legacy {
        let digests = pushed.digests.get(variant).cloned().unwrap_or_default();
        check_lazy(
            &what,
            &log,
            &digests,
            world.lazy_layers(snap),
            pushed.layers,
        )?;
    }
    Ok(FullReadSample {
        date: crate::report::now_s(),
        net: net.label().into(),
        image: spec.name.into(),
        snapshotter: snap.label().into(),
        variant: variant.into(),
        rep,
        pull_s,
        cold_s,
        reread_s,
        unpacked_after_s,
        tar_bytes,
        registry_requests: log.len(),
        registry_mbytes: log.iter().map(|r| r.bytes).sum::<u64>() as f64 / 1e6,
        peak_rss_mb: peak,
        rss_mb: mem.rss_mb,
        rss_anon_mb: mem.anon_mb,
        rss_file_mb: mem.file_mb,
        disk_mb: disk_bytes(&world.snap_root(snap)) as f64 / 1e6,
        reread_ops,
    })
}

/// Waits until ringstar has unpacked every layer in its mount; how long
/// that took, if it did.
fn wait_unpacked(world: &World, snap: Snap) -> Option<f64> {
    let root = world.snap_root(snap);
    let count = |d: &str| std::fs::read_dir(root.join(d)).map_or(0, |d| d.count());
    let t = Instant::now();
    while t.elapsed() < UNPACK_WAIT {
        if count("unpacked") >= count("fuse") {
            return Some(t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Runs a container of `reference` that tars its whole root; the bytes
/// it counted.
fn read_all(world: &World, snap: Snap, reference: &str, id: &str) -> anyhow::Result<u64> {
    let out = world.output_path(id);
    let _ = std::fs::remove_file(&out);
    let mut cmd = world.ctr_cmd("ctr");
    cmd.args(["run", "--rm", "--net-host"]);
    if snap != Snap::Legacy {
        cmd.arg(format!("--snapshotter={}", snap.plugin()));
    }
    cmd.arg("--log-uri")
        .arg(format!("file://{}", out.display()))
        .args([reference, id, "sh", "-c", READ_ALL])
        .stdout(Stdio::null());
    crate::rootfs::sh(&mut cmd)?;
    let text = std::fs::read_to_string(&out)?;
    text.trim()
        .parse()
        .with_context(|| format!("the container printed {text:?}, not a byte count"))
}

/// Bytes allocated on disk below `root` (blocks, not apparent sizes: a
/// small file takes a whole block), not crossing into other filesystems
/// (the daemon's own FUSE mounts).
fn disk_bytes(root: &Path) -> u64 {
    std::process::Command::new("du")
        .args(["-sx", "--block-size=1"])
        .arg(root)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn write_samples(dir: &Path, samples: &[FullReadSample]) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("fullread-samples.json"),
        serde_json::to_vec_pretty(samples)?,
    )?;
    Ok(())
}

/// Medians per (net, image, snapshotter, variant), then each lazy
/// snapshotter over overlayfs.
pub fn summary(samples: &[FullReadSample]) -> String {
    type Key = (String, String, String, String);
    let mut groups: BTreeMap<Key, Vec<&FullReadSample>> = BTreeMap::new();
    for s in samples {
        let key = (
            s.net.clone(),
            s.image.clone(),
            s.snapshotter.clone(),
            s.variant.clone(),
        );
        groups.entry(key).or_default().push(s);
    }
    let mut out = String::from(
        "| network | image | snapshotter | variant | **cold pull + full read** | unpacked after | re-read (caches dropped) | reqs | MB | peak RSS MB | RSS MB | RssAnon MB | RssFile MB | disk MB | reps |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut cold: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut reread: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for ((net, image, snap, variant), v) in &groups {
        let m = |f: &dyn Fn(&FullReadSample) -> f64| median(v.iter().map(|s| f(s)).collect());
        let (c, r) = (m(&|s| s.cold_s), m(&|s| s.reread_s));
        cold.insert((net.clone(), image.clone(), snap.clone()), c);
        reread.insert((net.clone(), image.clone(), snap.clone()), r);
        let _ = writeln!(
            out,
            "| {net} | {image} | {snap} | {variant} | **{c:.2}** | {} | {r:.2} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            if v.iter().any(|s| s.unpacked_after_s.is_some()) {
                let got: Vec<f64> = v.iter().filter_map(|s| s.unpacked_after_s).collect();
                format!("{:.2} s ({}/{})", median(got.clone()), got.len(), v.len())
            } else {
                "—".into()
            },
            m(&|s| s.registry_requests as f64),
            m(&|s| s.registry_mbytes),
            m(&|s| s.peak_rss_mb),
            m(&|s| s.rss_mb),
            m(&|s| s.rss_anon_mb),
            m(&|s| s.rss_file_mb),
            m(&|s| s.disk_mb),
            v.len()
        );
    }
    let _ = writeln!(
        out,
        "\nFUSE requests of the re-read (first repetition), per operation: count, p50 µs:\n"
    );
    for ((net, image, snap, variant), v) in &groups {
        if let Some(s) = v.first().filter(|s| !s.reread_ops.is_empty()) {
            let ops: Vec<String> = s
                .reread_ops
                .iter()
                .map(|(op, l)| format!("{op} {} ({:.0})", l.count, l.p50_us))
                .collect();
            let _ = writeln!(out, "- {net} {image} {snap} {variant}: {}", ops.join(", "));
        }
    }
    let _ = writeln!(
        out,
        "\nOver overlayfs (lower is better):\n\n| network | image | snapshotter | cold/overlayfs | re-read/overlayfs |\n|---|---|---|---:|---:|"
    );
    for ((net, image, snap), c) in &cold {
        if snap == "overlayfs" {
            continue;
        }
        let base = (net.clone(), image.clone(), "overlayfs".to_string());
        if let (Some(bc), Some(br), Some(r)) = (
            cold.get(&base),
            reread.get(&base),
            reread.get(&(net.clone(), image.clone(), snap.clone())),
        ) {
            let _ = writeln!(
                out,
                "| {net} | {image} | {snap} | {:.2}× | {:.2}× |",
                c / bc,
                r / br
            );
        }
    }
    out
}
