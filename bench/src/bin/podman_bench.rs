//! Podman's cold start over a WAN, with and without `ringstar-store`:
//! one image (Debian minbase by debootstrap, `scripts/bench-images.sh`,
//! the layout `RINGSTAR_BENCH_OCI/minbase`) in Debian's docker-registry
//! behind the delay proxy (40 ms RTT, 200 Mbit/s shared link), pulled
//! and run by Debian's podman 4.3 with runc. In one run, alternating, each
//! repetition cold (fresh podman storage, fresh store root):
//! - `podman`: podman alone pulls `:org` (plain gzip) and runs it;
//! - `podman-esgz`: podman alone pulls `:esgz` (whole layers: eStargz is
//!   gzip to a plain pull) and runs it;
//! - `ringstar-store`: podman with the store pulls `:esgz` and runs it
//!   (the layers served lazily).
//!
//! Medians of the repetitions, and each against `podman` of the same run.
//! Needs root, podman, runc and docker-registry.
//!
//!     cargo run --release -p ringstar-bench --bin podman-bench -- \
//!         OCI_LAYOUT STORE_BIN [REPS]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringstar_bench::median;
use ringstar_image::convert::{ConvertOptions, convert, progress::Silent};
use ringstar_image::layout::Layout;
use ringstar_image::platform::{host_platform, manifest_for};
use ringstar_image::{ImageStore, RootRef};
use ringstar_testkit::podman::{Podman, StoreProcess};
use ringstar_testkit::{DelayProxy, Registry, access_log_entries};

/// What the container runs: a shell, dpkg reading its database, and
/// their libraries.
const WORKLOAD: &[&str] = &["sh", "-c", "dpkg -l | wc -l"];

const VARIANTS: &[&str] = &["podman", "podman-esgz", "ringstar-store"];

struct Sample {
    pull: Duration,
    run: Duration,
    requests: usize,
    bytes: u64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (layout, store_bin) = match (args.first(), args.get(1)) {
        (Some(l), Some(b)) => (PathBuf::from(l), PathBuf::from(b)),
        _ => anyhow::bail!("usage: podman-bench OCI_LAYOUT STORE_BIN [REPS]"),
    };
    let reps: usize = args.get(2).map_or(Ok(3), |r| r.parse())?;
    let dir = tempfile::tempdir()?;
    let registry = Registry::start_logged(&dir.path().join("access.log"));
    push_images(&layout, &registry.addr)?;
    let proxy = DelayProxy::start_wan(
        registry.addr.clone(),
        Duration::from_millis(40),
        200_000_000,
        true,
    );
    std::fs::write(dir.path().join("store.toml"), "")?;
    let mut samples: Vec<Vec<Sample>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for rep in 0..reps {
        for k in 0..VARIANTS.len() {
            // A different variant goes first in each repetition.
            let v = (k + rep) % VARIANTS.len();
            let s = cold_start(
                dir.path(),
                &registry,
                &proxy.addr,
                VARIANTS[v],
                &store_bin,
                rep,
            )
            .with_context(|| format!("{} rep {rep}", VARIANTS[v]))?;
            eprintln!(
                "podman-bench: rep {rep} {:<15} pull {:>6.2} s  run {:>6.2} s  {} requests {:.1} MB",
                VARIANTS[v],
                s.pull.as_secs_f64(),
                s.run.as_secs_f64(),
                s.requests,
                s.bytes as f64 / 1e6
            );
            samples[v].push(s);
        }
    }
    print_table(&samples, reps);
    Ok(())
}

/// `:org` as the layout has it, and `:esgz` converted by ringstar's
/// writer, in `registry`'s `bench/minbase`.
fn push_images(layout: &Path, registry: &str) -> anyhow::Result<()> {
    let fetcher = ringstar_fetcher::Fetcher::new(Default::default())?;
    let src = ImageStore::Layout(Layout::open(layout)?);
    let dst = ImageStore::repository(&fetcher, registry, "bench/minbase");
    let root = src.root(&RootRef::Tag("org".into()))?;
    let manifest = manifest_for(&src, &root, &host_platform())?;
    let m: serde_json::Value = serde_json::from_slice(&manifest.bytes)?;
    let config = m["config"]["digest"].as_str().context("config")?.parse()?;
    dst.copy_blob(&src, &config)?;
    for l in m["layers"].as_array().context("layers")? {
        dst.copy_blob(&src, &l["digest"].as_str().context("digest")?.parse()?)?;
    }
    dst.put_document(&manifest.bytes, &manifest.media_type, Some("org"))?;
    let opts = ConvertOptions {
        writer: Default::default(),
        jobs: 2,
        cache: None,
    };
    convert(
        &src,
        &RootRef::Tag("org".into()),
        &dst,
        Some("esgz"),
        &opts,
        &Silent,
    )?;
    Ok(())
}

/// One cold pull and run of `variant` through the proxy at `via`.
fn cold_start(
    dir: &Path,
    registry: &Registry,
    via: &str,
    variant: &str,
    store_bin: &Path,
    rep: usize,
) -> anyhow::Result<Sample> {
    let work = dir.join(format!("{variant}-{rep}"));
    let mountpoint = work.join("store");
    let store = (variant == "ringstar-store").then(|| {
        StoreProcess::start(
            store_bin,
            &work.join("store-root"),
            &mountpoint,
            &dir.join("store.toml"),
            &work.join("store.log"),
        )
    });
    let podman = Podman::configure(
        &work.join("podman"),
        store.as_ref().map(|_| mountpoint.as_path()),
        &[via],
    );
    let tag = if variant == "podman" { "org" } else { "esgz" };
    let image = format!("{via}/bench/minbase:{tag}");
    let before = access_log_entries(&std::fs::read_to_string(
        registry.access_log.as_ref().context("log")?,
    )?)
    .len();
    let t = Instant::now();
    let (ok, _, err) = podman.try_run(&["pull", "-q", &image]);
    anyhow::ensure!(ok, "pull: {err}");
    let pull = t.elapsed();
    let mut run_args = vec!["run", "--rm", image.as_str()];
    run_args.extend_from_slice(WORKLOAD);
    let t = Instant::now();
    let (ok, out, err) = podman.try_run(&run_args);
    anyhow::ensure!(ok && out.trim().parse::<u32>().is_ok(), "run: {out}{err}");
    let run = t.elapsed();
    let log = std::fs::read_to_string(registry.access_log.as_ref().context("log")?)?;
    let entries = access_log_entries(&log);
    let new = &entries[before..];
    podman.clean();
    drop(store);
    let _ = std::fs::remove_dir_all(&work);
    Ok(Sample {
        pull,
        run,
        requests: new.len(),
        bytes: new.iter().map(|e| e.bytes).sum(),
    })
}

fn print_table(samples: &[Vec<Sample>], reps: usize) {
    let total = |s: &Sample| (s.pull + s.run).as_secs_f64();
    let base = median(samples[0].iter().map(total).collect());
    println!(
        "| podman, minbase, WAN (medians of {reps}) | pull s | run s | total s | vs podman | requests | MB fetched |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, s) in VARIANTS.iter().zip(samples) {
        let t = median(s.iter().map(total).collect());
        println!(
            "| {name} | {:.2} | {:.2} | {t:.2} | {:.2}× | {} | {:.1} |",
            median(s.iter().map(|x| x.pull.as_secs_f64()).collect()),
            median(s.iter().map(|x| x.run.as_secs_f64()).collect()),
            t / base,
            median(s.iter().map(|x| x.requests as f64).collect()),
            median(s.iter().map(|x| x.bytes as f64).collect()) / 1e6,
        );
    }
}
