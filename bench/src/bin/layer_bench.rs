//! The lazy read path over a WAN: a layer of real files (this machine's
//! /usr/lib, written as eStargz by our writer) in Debian's docker-registry
//! behind a delay proxy (40 ms RTT, 200 Mbit/s shared link), mounted
//! through the layer filesystem. Measured in one run, each against its
//! baseline:
//! - time to the first byte of a cold small file (after the layer is
//!   resolved; resolve time reported beside it);
//! - cold read of every file (resolve included), sequentially and with 8
//!   readers, vs downloading the same files as a plain tar.gz through the
//!   same proxy and extracting it with `tar` (what a non-lazy pull does);
//! - warm (stored, page cache dropped) sequential read of the biggest file
//!   through FUSE, with and without passthrough, vs the extracted copy on
//!   local disk;
//! - peak RSS of `ringstar mount` serving the layer after every file was
//!   read (which counts the store's mapped pages), and its anonymous RSS.
//!
//! Needs root (FUSE mounts, drop_caches) and docker-registry.
//!
//!     cargo run --release -p ringstar-bench --bin layer-bench [ROUNDS] [MAX_MB]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstar_bench::{files_under, median, read_all, report, walk};
use ringstar_core::store::Store;
use ringstar_core::tar::{self, Entry, EntryType};
use ringstar_core::writer::{WriterOptions, build_to_vec};
use ringstar_core::{Digest, FileKind};
use ringstar_fetcher::{Fetcher, FetcherConfig, ResolverConfig};
use ringstar_fusedev::{MountOptions, Session, UringKnob};
use ringstar_layerfs::resolve::{LayerSource, resolve};
use ringstar_layerfs::{BackgroundConfig, LayerFs, Loader, LoaderConfig};
use ringstar_testkit::{DelayProxy, Registry};

/// "A few thousand real files".
const MAX_FILES: usize = 4000;

/// A tar of the regular files and symlinks under `root`, in sorted walk
/// order, up to `max_bytes` of content and `MAX_FILES` files.
fn tar_of_tree(root: &Path, max_bytes: u64) -> anyhow::Result<(Vec<u8>, usize, String)> {
    let mut paths = Vec::new();
    walk(root, &mut paths)?;
    paths.sort();
    let mut out = Vec::new();
    let (mut total, mut files, mut biggest) = (0u64, 0usize, (0u64, String::new()));
    for p in paths {
        if files >= MAX_FILES {
            break;
        }
        let meta = std::fs::symlink_metadata(&p)?;
        let name = p.strip_prefix("/")?.to_string_lossy().into_owned();
        let mut e = Entry {
            name: name.clone(),
            mode: 0o644,
            mtime: 1_700_000_000,
            ..Entry::default()
        };
        if meta.file_type().is_symlink() {
            e.entry_type = Some(EntryType::Symlink);
            e.link_name = std::fs::read_link(&p)?.to_string_lossy().into_owned();
            out.extend_from_slice(&tar::encode_header(&e));
            continue;
        }
        if !meta.is_file() || total + meta.len() > max_bytes {
            continue;
        }
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        e.entry_type = Some(EntryType::Reg);
        e.size = data.len() as u64;
        out.extend_from_slice(&tar::encode_header(&e));
        out.extend_from_slice(&data);
        out.resize(out.len() + tar::padding(e.size), 0);
        total += e.size;
        files += 1;
        if e.size > biggest.0 {
            biggest = (e.size, name);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    Ok((out, files, biggest.1))
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// A lazily mounted layer: fresh store unless given.
struct Lazy {
    session: Option<Session>,
    dir: tempfile::TempDir,
    resolve_s: f64,
    loader: Arc<Loader>,
}

impl Drop for Lazy {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.unmount();
        }
    }
}

fn mount_lazy(
    registry: &str,
    digest: &str,
    toc: &str,
    store: &Path,
    passthrough: bool,
) -> anyhow::Result<Lazy> {
    let fetcher = Fetcher::new(FetcherConfig::default())?;
    let store = Arc::new(Store::open(store, 8 << 30)?);
    let loader = Loader::new(
        store,
        fetcher.clone(),
        2,
        LoaderConfig {
            background: BackgroundConfig {
                enabled: false,
                ..BackgroundConfig::default()
            },
            max_read_ahead: std::env::var("LAYER_BENCH_MAX_READ_AHEAD_KIB")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(8 << 20, |k| k << 10),
            ..LoaderConfig::default()
        },
    )?;
    let t = Instant::now();
    let layer = Arc::new(resolve(
        &fetcher,
        &ResolverConfig::default(),
        &LayerSource {
            reference: format!("{registry}/bench/usrlib:latest").parse()?,
            digest: digest.parse()?,
            size: None,
            toc_digest: Some(toc.parse()?),
        },
        "l".into(),
        512 << 10,
    )?);
    let resolve_s = t.elapsed().as_secs_f64();
    let fs = Arc::new(LayerFs::single(loader.clone(), layer, passthrough));
    let dir = tempfile::tempdir()?;
    let session = Session::mount(
        fs,
        dir.path(),
        &MountOptions {
            passthrough,
            uring_knob: UringKnob::Enable,
            ..MountOptions::default()
        },
    )?;
    Ok(Lazy {
        session: Some(session),
        dir,
        resolve_s,
        loader,
    })
}

/// GETs `path` from `addr` and streams the body into `tar -xz`.
fn pull_and_extract(addr: &str, path: &str, into: &Path) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut line = String::new();
    let mut location = None;
    r.read_line(&mut line)?;
    anyhow::ensure!(line.contains(" 200 "), "GET {path}: {line}");
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("location:") {
            location = Some(line[9..].trim().to_string());
        }
    }
    anyhow::ensure!(location.is_none(), "redirect not expected");
    let mut tar = Command::new("tar")
        .args(["-xzf", "-", "-C"])
        .arg(into)
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = tar.stdin.take().expect("stdin");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stdin.write_all(&buf[..n])?;
    }
    drop(stdin);
    anyhow::ensure!(tar.wait()?.success(), "tar failed");
    Ok(())
}

/// A `/proc/PID/status` figure in KiB (`VmHWM`, `RssAnon`, …).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The layer, as tar, eStargz and tar.gz.
struct Inputs {
    tar: Vec<u8>,
    files: usize,
    /// The biggest file's path in the layer.
    biggest: String,
    esgz: Vec<u8>,
    /// The eStargz layer's TOC digest.
    toc: String,
    gz: Vec<u8>,
}

impl Inputs {
    /// Up to `max_mb` MiB of this machine's /usr/lib.
    fn build(max_mb: u64) -> anyhow::Result<Inputs> {
        let (tar, files, biggest) = tar_of_tree(Path::new("/usr/lib"), max_mb << 20)?;
        let (esgz, built) = build_to_vec(&tar[..], &WriterOptions::default())?;
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(&tar)?;
            e.finish()?
        };
        eprintln!(
            "layer: {files} files, {} MiB of tar, {} MiB eStargz, {} MiB tar.gz; biggest {biggest}",
            tar.len() >> 20,
            esgz.len() >> 20,
            gz.len() >> 20
        );
        Ok(Inputs {
            tar,
            files,
            biggest,
            esgz,
            toc: built.toc_digest.to_string(),
            gz,
        })
    }

    /// A small file in the middle of the blob.
    fn small_file(&self) -> anyhow::Result<String> {
        let esgz = &self.esgz;
        let layer = ringstar_core::Layer::open(&esgz[..], esgz.len() as u64, &Default::default())?;
        let t = &layer.tree;
        let mut smalls: Vec<(String, ringstar_core::NodeId)> = t
            .walk()
            .into_iter()
            .filter(|(_, n)| {
                let node = t.node(*n);
                node.kind() == FileKind::Reg && node.size() > 0 && node.size() < 4096
            })
            .collect();
        smalls.sort();
        Ok(smalls[smalls.len() / 2].0.clone())
    }
}

/// The layer pushed to a registry behind the WAN proxy.
struct Served {
    /// Where the layer is pulled from: the proxy, or with
    /// `LAYER_BENCH_LINK=lo` straight to the registry, to see the CPU
    /// floor.
    addr: String,
    /// The eStargz blob's digest.
    digest: String,
    /// The tar.gz blob's digest.
    gz_digest: String,
    toc: String,
    // Dropped in this order: the proxy before the registry behind it.
    _wan: DelayProxy,
    _reg: Registry,
}

impl Served {
    fn start(inputs: &Inputs) -> Served {
        let reg = Registry::start();
        let digest = reg.push("bench/usrlib", &inputs.esgz);
        let gz_digest = reg.push("bench/usrlib", &inputs.gz);
        let wan = DelayProxy::start(reg.addr.clone(), Duration::from_millis(40), 200_000_000);
        let addr = if std::env::var("LAYER_BENCH_LINK").as_deref() == Ok("lo") {
            reg.addr.clone()
        } else {
            wan.addr.clone()
        };
        Served {
            addr,
            digest,
            gz_digest,
            toc: inputs.toc.clone(),
            _wan: wan,
            _reg: reg,
        }
    }

    /// The layer mounted lazily with the store at `store`.
    fn mount(&self, store: &Path, passthrough: bool) -> anyhow::Result<Lazy> {
        mount_lazy(&self.addr, &self.digest, &self.toc, store, passthrough)
    }
}

/// Every round's figures, in seconds or MB/s.
#[derive(Default)]
struct Rounds {
    ttfb: Vec<f64>,
    resolve_s: Vec<f64>,
    lazy_seq: Vec<f64>,
    lazy_par: Vec<f64>,
    pull: Vec<f64>,
    warm_fuse: Vec<f64>,
    warm_pt: Vec<f64>,
    warm_disk: Vec<f64>,
}

impl Rounds {
    /// One round of every measurement.
    fn round(&mut self, inputs: &Inputs, served: &Served, small: &str) -> anyhow::Result<()> {
        self.first_byte(served, small)?;
        // Cold read of every file: resolve + reads.
        for (readers, out) in [(1usize, &mut self.lazy_seq), (8, &mut self.lazy_par)] {
            out.push(cold_read_all(served, readers, inputs.files)?);
        }
        // The non-lazy baseline: pull the tar.gz through the same link and
        // extract it.
        let into = tempfile::tempdir()?;
        let t = Instant::now();
        pull_and_extract(
            &served.addr,
            &format!("/v2/bench/usrlib/blobs/{}", served.gz_digest),
            into.path(),
        )?;
        self.pull.push(t.elapsed().as_secs_f64());
        self.warm(served, &inputs.biggest, into.path())
    }

    /// Time to first byte of a cold small file.
    fn first_byte(&mut self, served: &Served, small: &str) -> anyhow::Result<()> {
        let store = tempfile::tempdir()?;
        let lazy = served.mount(store.path(), false)?;
        self.resolve_s.push(lazy.resolve_s);
        let t = Instant::now();
        let mut f = std::fs::File::open(lazy.dir.path().join(small))?;
        let mut b = [0u8; 1];
        f.read_exact(&mut b)?;
        self.ttfb.push(t.elapsed().as_secs_f64());
        Ok(())
    }

    /// Warm: the biggest file stored; page caches dropped before each
    /// read, through FUSE, with passthrough and from the extracted copy
    /// in `extracted`.
    fn warm(&mut self, served: &Served, biggest: &str, extracted: &Path) -> anyhow::Result<()> {
        let store = tempfile::tempdir()?;
        store_file(served, store.path(), biggest)?;
        for (pt, out) in [(false, &mut self.warm_fuse), (true, &mut self.warm_pt)] {
            let lazy = served.mount(store.path(), pt)?;
            let path = lazy.dir.path().join(biggest);
            // Open once (passthrough decides at open), drop, then time.
            drop_caches();
            let t = Instant::now();
            let n = std::fs::read(&path)?.len();
            out.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
        drop_caches();
        let t = Instant::now();
        let n = std::fs::read(extracted.join(biggest))?.len();
        self.warm_disk
            .push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        Ok(())
    }
}

/// Seconds to mount the layer cold and read every file with `readers`
/// threads.
fn cold_read_all(served: &Served, readers: usize, files: usize) -> anyhow::Result<f64> {
    let store = tempfile::tempdir()?;
    let t = Instant::now();
    let lazy = served.mount(store.path(), false)?;
    let list = files_under(lazy.dir.path());
    let bytes = read_all(&list, readers);
    let secs = t.elapsed().as_secs_f64();
    let stats = &lazy.loader.stats;
    eprintln!(
        "cold, {readers} reader(s): {:.3} s, {} fetches, {} MiB fetched, {} joined",
        t.elapsed().as_secs_f64(),
        stats.fetches.load(std::sync::atomic::Ordering::Relaxed),
        stats
            .fetched_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            >> 20,
        stats.joined.load(std::sync::atomic::Ordering::Relaxed),
    );
    anyhow::ensure!(list.len() == files, "{} files, want {files}", list.len());
    let _ = bytes;
    Ok(secs)
}

/// Reads file `name` through a mount of the layer with its store at
/// `store`, and waits until the store has it complete.
fn store_file(served: &Served, store: &Path, name: &str) -> anyhow::Result<()> {
    let lazy = served.mount(store, false)?;
    let len = std::fs::read(lazy.dir.path().join(name))?.len() as u64;
    // The last chunk's store write makes the file complete (hash,
    // rename) on a worker after the read returns: wait for it, or
    // the next mount's store would see it half-renamed.
    let partial = store.join("partial");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20)
        && std::fs::read_dir(&partial)?
            .any(|e| e.is_ok_and(|e| e.metadata().is_ok_and(|m| m.len() == len)))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Peak and anonymous RSS (KiB) of `ringstar mount` serving the layer
/// after every file was read; none without the `ringstar` binary.
fn daemon_rss(served: &Served) -> anyhow::Result<Option<(u64, u64)>> {
    let store = tempfile::tempdir()?;
    let mnt = tempfile::tempdir()?;
    let exe = std::env::current_exe()?
        .parent()
        .map(|d| d.join("ringstar"))
        .filter(|p| p.exists());
    let Some(exe) = exe else {
        eprintln!("build the ringstar binary (cargo build --release) for the RSS figure");
        return Ok(None);
    };
    let mut child = Command::new(exe)
        .args(["mount", "--no-background-fetch", "--ref"])
        .arg(format!("{}/bench/usrlib:latest", served.addr))
        .args([
            "--digest",
            &served.digest,
            "--toc-digest",
            &served.toc,
            "--store",
        ])
        .arg(store.path())
        .arg(mnt.path())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line)?;
    read_all(&files_under(mnt.path()), 8);
    // VmHWM counts the store's mapped page-cache pages too;
    // RssAnon is the daemon's own memory.
    let hwm = (
        status_kib(child.id(), "VmHWM"),
        status_kib(child.id(), "RssAnon"),
    );
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    child.wait()?;
    Ok(Some(hwm))
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
    let max_mb: u64 = std::env::args().nth(2).map_or(Ok(100), |s| s.parse())?;
    let inputs = Inputs::build(max_mb)?;
    let served = Served::start(&inputs);
    let small = inputs.small_file()?;
    let mut figures = Rounds::default();
    for _ in 0..rounds {
        figures.round(&inputs, &served, &small)?;
    }
    // Peak RSS of the daemon serving the layer, every file read.
    let rss_kib = daemon_rss(&served)?;
    report_layer(&inputs, &served, rounds, figures, rss_kib);
    Ok(())
}

/// The JSON line of every figure.
fn report_layer(
    inputs: &Inputs,
    served: &Served,
    rounds: usize,
    figures: Rounds,
    rss_kib: Option<(u64, u64)>,
) {
    let Rounds {
        ttfb,
        resolve_s,
        lazy_seq,
        lazy_par,
        pull,
        warm_fuse,
        warm_pt,
        warm_disk,
    } = figures;
    let (seq, par, base) = (median(lazy_seq), median(lazy_par), median(pull));
    let (fuse, pt, disk) = (median(warm_fuse), median(warm_pt), median(warm_disk));
    report(
        "layer",
        serde_json::json!({
            "files": inputs.files,
            "tar_mib": inputs.tar.len() >> 20,
            "estargz_mib": inputs.esgz.len() >> 20,
            "targz_mib": inputs.gz.len() >> 20,
            "rtt_ms": 40, "link_mbit": 200, "rounds": rounds,
            "resolve_s": (median(resolve_s) * 1000.0).round() / 1000.0,
            "ttfb_small_file_ms": (median(ttfb) * 1e4).round() / 10.0,
            "cold_all_sequential_s": (seq * 1000.0).round() / 1000.0,
            "cold_all_8_readers_s": (par * 1000.0).round() / 1000.0,
            "pull_and_extract_s": (base * 1000.0).round() / 1000.0,
            "cold_all_sequential_vs_pull": (seq / base * 100.0).round() / 100.0,
            "cold_all_8_readers_vs_pull": (par / base * 100.0).round() / 100.0,
            "warm_biggest_fuse_mb_s": fuse.round(),
            "warm_biggest_passthrough_mb_s": pt.round(),
            "warm_biggest_local_disk_mb_s": disk.round(),
            "warm_fuse_vs_disk": (fuse / disk * 100.0).round() / 100.0,
            "warm_passthrough_vs_disk": (pt / disk * 100.0).round() / 100.0,
            "daemon_peak_rss_mib": rss_kib.map(|k| k.0 / 1024),
            "daemon_rss_anon_mib": rss_kib.map(|k| k.1 / 1024),
            "digest_check": Digest::of(&inputs.esgz).to_string() == served.digest,
        }),
    );
}
