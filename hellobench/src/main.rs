//! `hellobench`: how long a container takes to start from an image that
//! is not on the node, for overlayfs (a normal pull), ringstar and a peer
//! lazy snapshotter, back to back in one run (see docs/hellobench.md).
//!
//! ```text
//! hellobench [--quick] [--images minbase,python3,gcc,node]
//!            [--variants org,esgz-noopt,esgz,esgz-ctr] [--networks lo,wan]
//!            [--reps 3] [--peer /path/to/containerd-stargz-grpc]
//!            [--out DIR] [--cache DIR] [--seed N]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use ringstar_hellobench::fullread::{self, FullReadSample};
use ringstar_hellobench::images::{self, VARIANTS};
use ringstar_hellobench::report::{self, Sample};
use ringstar_hellobench::scale::{self, Group, ScaleSample};
use ringstar_hellobench::scale_report;
use ringstar_hellobench::world::{Net, Snap, World, check_lazy, which};

#[derive(Parser)]
#[command(
    name = "hellobench",
    about = "Container startup benchmark: ringstar vs a peer vs overlayfs"
)]
struct Args {
    /// CI mode: one tiny image (busybox), loopback only, one repetition.
    #[arg(long)]
    quick: bool,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "minbase,python3,gcc,node"
    )]
    images: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "org,esgz-noopt,esgz")]
    variants: Vec<String>,
    /// lo (loopback) and wan (40 ms RTT, 200 Mbit/s, one RTT per new
    /// connection, through hellobench's delay proxy).
    #[arg(long, value_delimiter = ',', default_value = "lo,wan")]
    networks: Vec<String>,
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// A peer lazy snapshotter with the reference daemon's command line
    /// (--address --root --config --log-level; TOML with noprefetch).
    #[arg(long)]
    peer: Option<PathBuf>,
    /// ringstar's daemon (default: ringstar-snapshotter beside hellobench).
    #[arg(long)]
    ringstar: Option<PathBuf>,
    /// ringstar's command, whose `image rpull` pulls for ringstar
    /// (default: ringstar beside hellobench; the peer pulls with
    /// ctr-remote).
    #[arg(long)]
    ringstar_cli: Option<PathBuf>,
    /// Where samples, the summary and the chart go.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Built root filesystems, registry storage and pushed images (kept
    /// between runs).
    #[arg(long, default_value = "/var/cache/ringstar-hellobench")]
    cache: PathBuf,
    /// Seed of the run order (default: the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// TOML appended to ringstar's config, e.g. '[ringstar]
    /// prefetch_wait = false' (for experiments; top-level keys first).
    #[arg(long, default_value = "")]
    ringstar_toml: String,
    /// Many containers at once instead: N containers started together
    /// after the pull, for each N given (e.g. 1,5,20,50).
    #[arg(long, value_delimiter = ',')]
    scale: Vec<usize>,
    /// With --scale: the image groups, each one image or several joined
    /// by '+' (containers go to a group's images in turn). Their images
    /// replace --images.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "python3,minbase+python3+gcc+node+busybox"
    )]
    groups: Vec<String>,
    /// With --scale: `perf record -a -g` of each sample's containers
    /// into the output directory.
    #[arg(long)]
    perf: bool,
    /// Whole-image reads instead: after the pull one container tars its
    /// whole root, then (caches dropped) a second one does it again; with
    /// the daemons' memory and disk (docs/hellobench.md).
    #[arg(long)]
    full_read: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hellobench: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.images = vec!["busybox".into()];
        args.networks = vec!["lo".into()];
        args.reps = 1;
    }
    if !args.scale.is_empty() {
        args.images = scale_images(&args.groups);
    }
    check_variants(&args.variants)?;
    let nets = args
        .networks
        .iter()
        .map(|n| Net::parse(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let specs = args
        .images
        .iter()
        .map(|i| images::spec(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    check_image_tools(&args.images)?;
    let ringstar = beside_hellobench(args.ringstar.clone(), "ringstar-snapshotter")?;
    let ringstar_cli = beside_hellobench(args.ringstar_cli.clone(), "ringstar")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("hellobench-results/{}", report::now_s())));
    std::fs::create_dir_all(&out)?;
    std::fs::create_dir_all(&args.cache)?;
    // containerd and the snapshotters get these paths in their configs:
    // absolute, whatever the caller's working directory.
    let out = std::fs::canonicalize(&out)?;
    args.cache = std::fs::canonicalize(&args.cache)?;
    let ringstar = std::fs::canonicalize(&ringstar)?;
    let peer = args.peer.as_ref().map(std::fs::canonicalize).transpose()?;
    let work = out.join("work");
    let ringstar_cli = std::fs::canonicalize(&ringstar_cli)?;
    let mut world = World::new(&work, &args.cache, ringstar, ringstar_cli, peer)?;
    world.ringstar_toml = args.ringstar_toml.replace("\\n", "\n");

    // Images, built and pushed once (cached).
    let mut pushed = Vec::new();
    for spec in &specs {
        let p = images::prepare(&mut world, &args.cache, spec, &args.variants)?;
        pushed.push(p);
    }
    if !args.scale.is_empty() {
        let groups = scale_groups(&args.groups, &specs, &pushed);
        let plan = ScalePlan {
            kinds: run_kinds(&args.variants, world.has_peer()),
            shuffle: Shuffle::new(args.seed),
            nets,
            groups: &groups,
            ns: &args.scale,
            reps: args.reps,
            out: &out,
            perf: args.perf,
        };
        let samples = plan.run(&mut world)?;
        world.stop();
        return write_scale_report(&out, &samples);
    }
    if args.full_read {
        let samples = full_read_run(&mut world, &args, &nets, &specs, &pushed, &out)?;
        world.stop();
        return write_full_read_report(&out, &samples);
    }
    let plan = Plan {
        kinds: run_kinds(&args.variants, world.has_peer()),
        shuffle: Shuffle::new(args.seed),
        nets,
        images: specs.iter().zip(&pushed).collect(),
        reps: args.reps,
        out: &out,
    };
    let samples = plan.run(&mut world)?;
    world.stop();
    write_report(&out, &samples)
}

/// Fails unless the tools that build the Debian images are there (when
/// any is asked for).
fn check_image_tools(images: &[String]) -> anyhow::Result<()> {
    if images.iter().any(|i| i != "busybox") && !which("debootstrap") {
        bail!("debootstrap is needed to build the images (apt-get install debootstrap)");
    }
    Ok(())
}

/// Fails unless every variant is one hellobench builds.
fn check_variants(variants: &[String]) -> anyhow::Result<()> {
    for v in variants {
        if !VARIANTS.contains(&v.as_str()) {
            bail!("no variant {v:?} ({})", VARIANTS.join(", "));
        }
    }
    Ok(())
}

/// A ringstar binary: `given`, or `name` beside hellobench.
fn beside_hellobench(given: Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .join(name),
    };
    anyhow::ensure!(
        path.exists(),
        "{} missing (cargo build --release --bin {name})",
        path.display()
    );
    Ok(path)
}

/// The runs of one repetition: overlayfs on org, each lazy snapshotter
/// on each eStargz variant.
fn run_kinds(variants: &[String], has_peer: bool) -> Vec<(Snap, String)> {
    let mut kinds: Vec<(Snap, String)> = Vec::new();
    for v in variants {
        if v == "org" {
            kinds.push((Snap::Legacy, v.clone()));
        } else {
            kinds.push((Snap::Ringstar, v.clone()));
            if has_peer {
                kinds.push((Snap::Peer, v.clone()));
            }
        }
    }
    kinds
}

/// The random run order of each repetition (xorshift, seeded by `--seed`
/// or the clock).
struct Shuffle(u64);

impl Shuffle {
    fn new(seed: Option<u64>) -> Shuffle {
        Shuffle(
            seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            }) | 1,
        )
    }

    fn shuffle(&mut self, v: &mut [(Snap, String)]) {
        let rng = &mut self.0;
        for i in (1..v.len()).rev() {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            v.swap(i, (*rng % (i as u64 + 1)) as usize);
        }
    }
}

/// Every sample of the run: per network, image and repetition, each kind
/// of run in random order.
struct Plan<'a> {
    kinds: Vec<(Snap, String)>,
    shuffle: Shuffle,
    nets: Vec<Net>,
    images: Vec<(&'a images::Spec, &'a images::Pushed)>,
    reps: u32,
    /// Where the samples are written after each one.
    out: &'a Path,
}

impl Plan<'_> {
    fn run(mut self, world: &mut World) -> anyhow::Result<Vec<Sample>> {
        let total_runs =
            self.nets.len() * self.images.len() * self.reps as usize * self.kinds.len();
        let mut samples = Vec::new();
        let started = Instant::now();
        for &net in &self.nets {
            world.set_net(net);
            for &(spec, p) in &self.images {
                for rep in 1..=self.reps {
                    let mut order = self.kinds.clone();
                    self.shuffle.shuffle(&mut order);
                    for (snap, variant) in order {
                        let s = sample(world, net, spec, p, snap, &variant, rep)?;
                        eprintln!(
                            "[{}/{total_runs} {:>4.0}s] {}",
                            samples.len() + 1,
                            started.elapsed().as_secs_f64(),
                            progress_line(&s)
                        );
                        samples.push(s);
                        report::write_samples(self.out, &samples)?;
                    }
                }
            }
        }
        Ok(samples)
    }
}

/// Every whole-image read sample: per network, image and repetition,
/// each kind of run in random order.
fn full_read_run(
    world: &mut World,
    args: &Args,
    nets: &[Net],
    specs: &[images::Spec],
    pushed: &[images::Pushed],
    out: &Path,
) -> anyhow::Result<Vec<FullReadSample>> {
    let kinds = run_kinds(&args.variants, world.has_peer());
    let mut shuffle = Shuffle::new(args.seed);
    let mut samples = Vec::new();
    for &net in nets {
        world.set_net(net);
        for image in specs.iter().zip(pushed) {
            for rep in 1..=args.reps {
                let mut order = kinds.clone();
                shuffle.shuffle(&mut order);
                for (snap, variant) in order {
                    let s = fullread::sample(world, net, image, snap, &variant, rep)?;
                    eprintln!(
                        "[{}] {} {} {} {}: cold {:.2} s, re-read {:.2} s, {} reqs, peak RSS {:.0} MB, disk {:.0} MB",
                        samples.len() + 1,
                        s.net,
                        s.image,
                        s.snapshotter,
                        s.variant,
                        s.cold_s,
                        s.reread_s,
                        s.registry_requests,
                        s.peak_rss_mb,
                        s.disk_mb
                    );
                    samples.push(s);
                    fullread::write_samples(out, &samples)?;
                }
            }
        }
    }
    Ok(samples)
}

/// The images of `--groups`, each once.
fn scale_images(groups: &[String]) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for i in groups.iter().flat_map(|g| g.split('+')) {
        if !images.iter().any(|x| x == i) {
            images.push(i.to_string());
        }
    }
    images
}

fn scale_groups<'a>(
    groups: &[String],
    specs: &'a [images::Spec],
    pushed: &'a [images::Pushed],
) -> Vec<Group<'a>> {
    groups
        .iter()
        .map(|g| Group {
            label: g.clone(),
            images: g
                .split('+')
                .filter_map(|name| specs.iter().position(|s| s.name == name))
                .map(|i| (&specs[i], &pushed[i]))
                .collect(),
        })
        .collect()
}

/// Every many-containers sample: per network, group, N and repetition,
/// each kind of run in random order.
struct ScalePlan<'a> {
    kinds: Vec<(Snap, String)>,
    shuffle: Shuffle,
    nets: Vec<Net>,
    groups: &'a [Group<'a>],
    ns: &'a [usize],
    reps: u32,
    out: &'a Path,
    perf: bool,
}

impl ScalePlan<'_> {
    fn run(mut self, world: &mut World) -> anyhow::Result<Vec<ScaleSample>> {
        let total = self.nets.len()
            * self.groups.len()
            * self.ns.len()
            * self.reps as usize
            * self.kinds.len();
        let mut samples = Vec::new();
        let started = Instant::now();
        for &net in &self.nets {
            world.set_net(net);
            for group in self.groups {
                for &n in self.ns {
                    for rep in 1..=self.reps {
                        let mut order = self.kinds.clone();
                        self.shuffle.shuffle(&mut order);
                        for (snap, variant) in order {
                            let kind = scale::Kind {
                                net,
                                group,
                                n,
                                snap,
                                variant: &variant,
                                rep,
                                perf_dir: self.perf.then_some(self.out),
                            };
                            let s = scale::sample(world, &kind)?;
                            eprintln!(
                                "[{}/{total} {:>4.0}s] {} {} x{n} {} {}: last output {:.2} s, exited {:.2} s, cpu {:.2} s, {} reqs, {} failed",
                                samples.len() + 1,
                                started.elapsed().as_secs_f64(),
                                s.net,
                                s.group,
                                s.snapshotter,
                                s.variant,
                                s.last_output_s,
                                s.all_exited_s,
                                s.daemon_cpu_s,
                                s.registry_requests,
                                s.failed
                            );
                            samples.push(s);
                            scale_report::write_samples(self.out, &samples)?;
                        }
                    }
                }
            }
        }
        Ok(samples)
    }
}

/// A sample as the progress line shows it.
fn progress_line(s: &Sample) -> String {
    format!(
        "{:<16} {:<8} {:<10} {:<10} pull {:>6.2}  create {:>6.2}  run {:>6.2}  total {:>6.2}  ({} reqs, {:.1} MB)",
        s.net,
        s.image,
        s.snapshotter,
        s.variant,
        s.pull_s,
        s.create_s,
        s.run_s,
        s.total_s,
        s.registry_requests,
        s.registry_mbytes
    )
}

/// The whole-image read summary, written to `out` and printed.
fn write_full_read_report(out: &Path, samples: &[FullReadSample]) -> anyhow::Result<()> {
    let summary = fullread::summary(samples);
    std::fs::write(out.join("fullread-summary.md"), &summary)?;
    println!("{summary}");
    Ok(())
}

/// The many-containers summary, written to `out` and printed.
fn write_scale_report(out: &Path, samples: &[ScaleSample]) -> anyhow::Result<()> {
    let summary = scale_report::summary(samples);
    std::fs::write(out.join("scale-summary.md"), &summary)?;
    println!("{summary}");
    Ok(())
}

/// The summary and chart, written to `out` and the summary printed.
fn write_report(out: &Path, samples: &[Sample]) -> anyhow::Result<()> {
    let summary = report::summary(samples);
    std::fs::write(out.join("summary.md"), &summary)?;
    std::fs::write(out.join("chart.svg"), report::svg(samples))?;
    println!("{summary}");
    println!(
        "samples: {0}/samples.csv, {0}/samples.json; chart: {0}/chart.svg",
        out.display()
    );
    Ok(())
}

/// One container start from `spec`'s image (`variant`) through `snap`:
/// pull, create, run, timed, then checked to have been lazy.
fn sample(
    world: &mut World,
    net: Net,
    spec: &images::Spec,
    pushed: &images::Pushed,
    snap: Snap,
    variant: &str,
    rep: u32,
) -> anyhow::Result<Sample> {
    let what = format!("{} {} {variant} ({})", spec.name, snap.label(), net.label());
    // Upstream hello-bench: no prefetch for esgz-noopt, prefetch for esgz.
    world.reset(snap, variant == "esgz-noopt")?;
    let reference = format!("{}/bench/{}:{variant}", world.host(), spec.name);
    let log_start = world.registry_log_end();
    let id = format!("hb-{}-{rep}", spec.name);
    let t0 = Instant::now();
    world
        .pull(snap, &reference)
        .with_context(|| format!("{what}: pull"))?;
    let pull = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    create(world, snap, &reference, &id).with_context(|| format!("{what}: create"))?;
    let create_s = t1.elapsed().as_secs_f64();
    let (run_s, output) = start(world, &id, &what)?;
    if !output.contains(spec.expect) {
        bail!(
            "{what}: the workload printed {output:?}, not {:?}",
            spec.expect
        );
    }
    let log = world.registry_log(log_start);
    let lazy = world.lazy_layers(snap);
    if snap != Snap::Legacy {
        let digests = pushed.digests.get(variant).cloned().unwrap_or_default();
        check_lazy(&what, &log, &digests, lazy, pushed.layers)?;
    }
    let _ = world.ctr(&["task", "rm", "-f", &id]);
    let _ = world.ctr(&["container", "rm", &id]);
    Ok(Sample {
        date: report::now_s(),
        net: net.label().into(),
        image: spec.name.into(),
        variant: variant.into(),
        snapshotter: snap.label().into(),
        rep,
        pull_s: pull,
        create_s,
        run_s,
        total_s: pull + create_s + run_s,
        registry_requests: log.len(),
        registry_mbytes: log.iter().map(|r| r.bytes).sum::<u64>() as f64 / 1e6,
        lazy_layers: lazy,
        layers: pushed.layers,
        image_mbytes: pushed.sizes.get(variant).copied().unwrap_or(0) as f64 / 1e6,
    })
}

/// Creates container `id` from `reference` on `snap`'s snapshotter.
fn create(world: &World, snap: Snap, reference: &str, id: &str) -> anyhow::Result<String> {
    let mut create = vec!["container", "create", "--net-host"];
    let sn;
    if snap != Snap::Legacy {
        sn = format!("--snapshotter={}", snap.plugin());
        create.push(&sn);
    }
    create.extend([reference, id]);
    world.ctr(&create)
}

/// Starts container `id`'s task and waits for it: the seconds that took,
/// and the task's output.
fn start(world: &World, id: &str, what: &str) -> anyhow::Result<(f64, String)> {
    // The shim writes the output to a file itself: with ctr's own FIFOs,
    // a task that exits before ctr has opened them (a short workload on a
    // loaded machine) loses its output, as containerd 1.6 cancels the
    // open at delete.
    let out_path = world.output_path(id);
    let _ = std::fs::remove_file(&out_path);
    let log_uri = format!("file://{}", out_path.display());
    let t = Instant::now();
    world
        .ctr(&["task", "start", "--log-uri", &log_uri, id])
        .with_context(|| format!("{what}: run"))?;
    let run_s = t.elapsed().as_secs_f64();
    let output = std::fs::read_to_string(&out_path)
        .with_context(|| format!("{what}: reading the output at {}", out_path.display()))?;
    Ok((run_s, output))
}
