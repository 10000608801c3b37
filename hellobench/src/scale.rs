//! Many containers at once: a node scaling out (a Deployment scaled up, a
//! batch of Jobs) starts N containers together right after the pull, from
//! one image or from several. A sample is: fresh containerd and
//! snapshotter, pull every image of the group, then N `ctr run --rm` at
//! the same moment; the wall time runs to the last container's output.
//! Beside it: every container's exit, the FUSE latency of each operation
//! as the kernel saw it ([`crate::fusetrace`]), the registry's requests
//! and bytes, and the snapshotter's CPU seconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use crate::fusetrace::{FuseTrace, Latencies, OpLatency, fuse_connections_below};
use crate::images::{Pushed, Spec};
use crate::world::{Net, Snap, World, check_lazy, memory};

/// How long N containers may take before the stragglers count as failed.
const SAMPLE_LIMIT: Duration = Duration::from_secs(300);
/// How often the output files are looked at.
const POLL: Duration = Duration::from_millis(10);

/// Images started together: one image (`python3`) or several
/// (`minbase+python3+gcc+node+busybox`), containers given to them in turn.
#[derive(Debug)]
pub struct Group<'a> {
    pub label: String,
    pub images: Vec<(&'a Spec, &'a Pushed)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleSample {
    pub date: String,
    pub net: String,
    pub group: String,
    pub n: usize,
    pub snapshotter: String,
    pub variant: String,
    pub rep: u32,
    pub pull_s: f64,
    /// From the N starts to the last container's output.
    pub last_output_s: f64,
    /// From the N starts to the last `ctr run --rm` exiting.
    pub all_exited_s: f64,
    /// Containers that printed nothing or exited with an error.
    pub failed: usize,
    pub registry_requests: usize,
    pub registry_mbytes: f64,
    /// The lazy snapshotter's CPU seconds while the containers ran.
    pub daemon_cpu_s: f64,
    /// Every CPU's busy seconds meanwhile (the machine's, all processes
    /// and the kernel): near cores x wall time means CPU-bound.
    pub machine_cpu_s: f64,
    /// The lazy daemon's memory once every container ran: peak (VmHWM),
    /// resident, anonymous, file-backed (MB).
    pub daemon_peak_rss_mb: f64,
    pub daemon_rss_mb: f64,
    pub daemon_rss_anon_mb: f64,
    pub daemon_rss_file_mb: f64,
    pub ops: BTreeMap<String, OpLatency>,
    pub trace_lost: u64,
    #[serde(skip)]
    pub latencies: Latencies,
}

/// What a sample is of.
#[derive(Debug)]
pub struct Kind<'a> {
    pub net: Net,
    pub group: &'a Group<'a>,
    pub n: usize,
    pub snap: Snap,
    pub variant: &'a str,
    pub rep: u32,
    /// `--perf`: where `perf record -a` of the containers' run goes.
    pub perf_dir: Option<&'a Path>,
}

/// One sample: reset, pull the group's images, start `n` containers.
pub fn sample(world: &mut World, k: &Kind) -> anyhow::Result<ScaleSample> {
    let what = format!(
        "{} x{} {} {} ({})",
        k.group.label,
        k.n,
        k.snap.label(),
        k.variant,
        k.net.label()
    );
    world.reset(k.snap, k.variant == "esgz-noopt")?;
    let log_start = world.registry_log_end();
    let t0 = Instant::now();
    let mut refs = Vec::new();
    for (spec, _) in &k.group.images {
        let reference = format!("{}/bench/{}:{}", world.host(), spec.name, k.variant);
        world
            .pull(k.snap, &reference)
            .with_context(|| format!("{what}: pull {reference}"))?;
        refs.push(reference);
    }
    let pull_s = t0.elapsed().as_secs_f64();
    let trace = (k.snap != Snap::Legacy)
        .then(FuseTrace::start)
        .transpose()?;
    let perf = k.perf_dir.map(|d| start_perf(d, k)).transpose()?;
    let cpu0 = world.snapshotter_pid().map_or(0.0, cpu_seconds);
    let busy0 = machine_busy_seconds();
    let runs = start_all(world, k, &refs)?;
    let done = wait_all(world, k, runs);
    let cpu1 = world.snapshotter_pid().map_or(0.0, cpu_seconds);
    let busy1 = machine_busy_seconds();
    let mem = world.snapshotter_pid().map(memory).unwrap_or_default();
    if let Some(p) = perf {
        stop_perf(p);
    }
    let latencies = match trace {
        Some(t) => t.finish(&fuse_connections_below(&world.snap_root(k.snap)))?,
        None => Latencies::default(),
    };
    let log = world.registry_log(log_start);
    if k.snap != Snap::Legacy {
        check_group_lazy(world, k, &what, &log)?;
    }
    Ok(ScaleSample {
        date: crate::report::now_s(),
        net: k.net.label().into(),
        group: k.group.label.clone(),
        n: k.n,
        snapshotter: k.snap.label().into(),
        variant: k.variant.into(),
        rep: k.rep,
        pull_s,
        last_output_s: done.last_output_s,
        all_exited_s: done.all_exited_s,
        failed: done.failed,
        registry_requests: log.len(),
        registry_mbytes: log.iter().map(|r| r.bytes).sum::<u64>() as f64 / 1e6,
        daemon_cpu_s: cpu1 - cpu0,
        machine_cpu_s: busy1 - busy0,
        daemon_peak_rss_mb: mem.peak_mb,
        daemon_rss_mb: mem.rss_mb,
        daemon_rss_anon_mb: mem.anon_mb,
        daemon_rss_file_mb: mem.file_mb,
        ops: latencies.summary(),
        trace_lost: latencies.lost,
        latencies,
    })
}

/// Every distinct layer of the group (its images share their base) is
/// served by the snapshotter, and none was downloaded whole.
fn check_group_lazy(
    world: &World,
    k: &Kind,
    what: &str,
    log: &[ringstar_testkit::AccessLogEntry],
) -> anyhow::Result<()> {
    let mut digests: Vec<String> = k
        .group
        .images
        .iter()
        .flat_map(|(_, p)| p.digests.get(k.variant).cloned().unwrap_or_default())
        .collect();
    digests.sort();
    digests.dedup();
    check_lazy(
        what,
        log,
        &digests,
        world.lazy_layers(k.snap),
        digests.len(),
    )
}

/// One container being started.
struct Run {
    id: String,
    expect: &'static str,
    child: Child,
    started: Instant,
}

/// `ctr run --rm` of container i on image `i % images`, all spawned
/// before any is waited for.
fn start_all(world: &World, k: &Kind, refs: &[String]) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::with_capacity(k.n);
    for i in 0..k.n {
        let id = format!("scale-{i}");
        let out = world.output_path(&id);
        let _ = std::fs::remove_file(&out);
        let err = std::fs::File::create(out.with_extension("err"))?;
        let mut cmd = world.ctr_cmd("ctr");
        cmd.args(["run", "--rm", "--net-host"]);
        if k.snap != Snap::Legacy {
            cmd.arg(format!("--snapshotter={}", k.snap.plugin()));
        }
        cmd.arg("--log-uri")
            .arg(format!("file://{}", out.display()))
            .arg(&refs[i % refs.len()])
            .arg(&id)
            .stdout(Stdio::null())
            .stderr(err);
        runs.push(Run {
            id,
            expect: k.group.images[i % refs.len()].0.expect,
            child: cmd.spawn().context("spawning ctr run")?,
            started: Instant::now(),
        });
    }
    Ok(runs)
}

struct Done {
    last_output_s: f64,
    all_exited_s: f64,
    failed: usize,
}

/// Waits for every run: when its output appeared, when it exited, and
/// whether it printed what it should and exited 0.
fn wait_all(world: &World, k: &Kind, mut runs: Vec<Run>) -> Done {
    let t0 = runs.first().map_or_else(Instant::now, |r| r.started);
    let mut output_at: Vec<Option<f64>> = vec![None; runs.len()];
    let mut exit: Vec<Option<bool>> = vec![None; runs.len()];
    let mut all_exited_s = 0.0;
    while exit.iter().any(Option::is_none) && t0.elapsed() < SAMPLE_LIMIT {
        for (i, r) in runs.iter_mut().enumerate() {
            if output_at[i].is_none() && printed(&world.output_path(&r.id), r.expect) {
                output_at[i] = Some(t0.elapsed().as_secs_f64());
            }
            if exit[i].is_none()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                exit[i] = Some(status.success());
                all_exited_s = t0.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(POLL);
    }
    for (i, r) in runs.iter_mut().enumerate() {
        if output_at[i].is_none() && printed(&world.output_path(&r.id), r.expect) {
            output_at[i] = Some(t0.elapsed().as_secs_f64());
        }
        if exit[i].is_none() {
            let _ = r.child.kill();
            let _ = r.child.wait();
            eprintln!("hellobench: {} x{}: {} timed out", k.group.label, k.n, r.id);
        }
    }
    let failed = (0..runs.len())
        .filter(|&i| output_at[i].is_none() || exit[i] != Some(true))
        .count();
    for (i, r) in runs.iter().enumerate() {
        if output_at[i].is_none() || exit[i] != Some(true) {
            let err = std::fs::read_to_string(world.output_path(&r.id).with_extension("err"))
                .unwrap_or_default();
            eprintln!("hellobench: {} failed: {}", r.id, err.trim());
        }
    }
    Done {
        last_output_s: output_at.iter().flatten().fold(0.0, |a, &b| f64::max(a, b)),
        all_exited_s,
        failed,
    }
}

/// `perf record -a` (499 Hz per CPU, with call graphs) into
/// `dir/perf-<group>-<n>-<snapshotter>-<rep>.data`.
fn start_perf(dir: &Path, k: &Kind) -> anyhow::Result<Child> {
    let out = dir.join(format!(
        "perf-{}-{}-{}-{}.data",
        k.group.label.replace('+', "_"),
        k.n,
        k.snap.label(),
        k.rep
    ));
    let child = std::process::Command::new("perf")
        .args(["record", "-a", "-g", "-F", "499", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record")?;
    // perf needs a moment before it records.
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

fn stop_perf(mut p: Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &p.id().to_string()])
        .status();
    let _ = p.wait();
}

/// Whether the output at `path` says `expect` (a stat first: most polls
/// find nothing, and the poller shares the CPUs it measures).
fn printed(path: &Path, expect: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() >= expect.len() as u64)
        && std::fs::read_to_string(path).is_ok_and(|s| s.contains(expect))
}

/// Busy seconds of all CPUs so far: /proc/stat's first line, all but
/// idle and iowait.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time is in
    // user's already.
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy / (rustix::param::clock_ticks_per_second() as f64).max(1.0)
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After "(comm)": state is field 3, utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = rustix::param::clock_ticks_per_second() as f64;
    (ticks(14) + ticks(15)) / hz.max(1.0)
}
