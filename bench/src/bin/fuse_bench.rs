//! The FUSE data plane: ring vs classic vs the same files on tmpfs, with
//! 1, 2 and 4 concurrent clients, in one run (modes interleaved per
//! round, medians of the rounds). Reads use FOPEN_DIRECT_IO so every
//! read(2) is one FUSE READ; stats use zero TTLs so every stat is a LOOKUP
//! and a GETATTR. Then passthrough vs reading the backing file natively.
//! Must run as root.
//!
//!     cargo run --release -p ringstar-bench --bin fuse-bench [ROUNDS] [SECONDS]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ringstar_bench::{Rng, median, report};
use ringstar_fusedev::{
    AttrReply, BackingFile, ConnInfo, Ctx, DirOut, Entry, Errno, FileAttr, FileHandle, FileType,
    Filesystem, Ino, MountOptions, Opened, Passthrough, ReadOut, ReadResult, Session,
    TransportChoice, UringKnob,
};

const BIG: u64 = 64 << 20;
const SMALL_FILES: u64 = 1000;
const BIG_INO: u64 = 2;
const PT_INO: u64 = 3;
const FIRST_SMALL: u64 = 10;

/// Files served from memory: `big.bin` (direct I/O), `pt.bin`
/// (passthrough), `s0..s999` (zero TTL).
struct BenchFs {
    data: Vec<u8>,
    pt_path: PathBuf,
    pt_len: u64,
    passthrough: Mutex<Option<Passthrough>>,
    backing: Mutex<Option<BackingFile>>,
}

impl BenchFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = match ino {
            1 => (FileType::Directory, 0, 0o755),
            BIG_INO => (FileType::RegularFile, BIG, 0o644),
            PT_INO => (FileType::RegularFile, self.pt_len, 0o644),
            _ => (FileType::RegularFile, 100, 0o644),
        };
        FileAttr::new(Ino(ino), kind, size, perm)
    }

    fn ttl(ino: u64) -> Duration {
        if ino >= FIRST_SMALL {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        }
    }
}

impl Filesystem for BenchFs {
    fn init(&self, info: &ConnInfo) {
        *self.passthrough.lock().expect("lock") = info.passthrough.clone();
    }

    fn lookup(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        if parent != Ino::ROOT {
            return Err(Errno::ENOENT);
        }
        let name = name.to_str().ok_or(Errno::ENOENT)?;
        let ino = match name {
            "big.bin" => BIG_INO,
            "pt.bin" => PT_INO,
            _ => name
                .strip_prefix('s')
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|&n| n < SMALL_FILES)
                .map(|n| FIRST_SMALL + n)
                .ok_or(Errno::ENOENT)?,
        };
        Ok(Entry {
            attr: self.attr(ino),
            generation: 0,
            entry_ttl: Self::ttl(ino),
            attr_ttl: Self::ttl(ino),
        })
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        Ok(AttrReply {
            attr: self.attr(ino.0),
            ttl: Self::ttl(ino.0),
        })
    }

    fn open(&self, _ctx: &Ctx, ino: Ino, _flags: u32) -> Result<Opened, Errno> {
        if ino.0 == PT_INO {
            let pt = self
                .passthrough
                .lock()
                .expect("lock")
                .clone()
                .ok_or(Errno::EIO)?;
            let mut backing = self.backing.lock().expect("lock");
            if backing.is_none() {
                let f = File::open(&self.pt_path).map_err(|_| Errno::EIO)?;
                *backing = Some(pt.open_backing(&f).map_err(|_| Errno::EIO)?);
            }
            return Ok(Opened {
                backing: backing.as_ref().map(BackingFile::id),
                ..Opened::default()
            });
        }
        Ok(Opened {
            direct_io: ino.0 == BIG_INO,
            keep_cache: true,
            ..Opened::default()
        })
    }

    fn read(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        mut out: ReadOut<'_>,
    ) -> ReadResult {
        if ino.0 != BIG_INO {
            return ReadResult::Data(0);
        }
        let start = offset.min(BIG) as usize;
        let buf = out.buf();
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        ReadResult::Data(n)
    }

    fn readdir(
        &self,
        _ctx: &Ctx,
        _ino: Ino,
        _fh: FileHandle,
        _offset: u64,
        _out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read(usize),
    Stat,
}

/// `clients` threads doing `op` on `dir` for `secs`: aggregate ops/s.
fn run(dir: &Path, op: Op, clients: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, count, barrier, dir) = (
                stop.clone(),
                count.clone(),
                barrier.clone(),
                dir.to_path_buf(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(c as u64 + 1);
                let f = File::open(dir.join("big.bin")).expect("open big.bin");
                let mut buf = vec![
                    0u8;
                    match op {
                        Op::Read(n) => n,
                        Op::Stat => 0,
                    }
                ];
                barrier.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match op {
                        Op::Read(size) => {
                            let off = rng.below(BIG / size as u64) * size as u64;
                            f.read_at(&mut buf, off).expect("read");
                        }
                        Op::Stat => {
                            std::fs::metadata(dir.join(format!("s{}", rng.below(SMALL_FILES))))
                                .expect("stat");
                        }
                    }
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().expect("client");
    }
    count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// One sequential stream of `size`-byte reads over the whole file: MB/s.
fn stream(path: &Path, size: usize, len: u64) -> f64 {
    let f = File::open(path).expect("open");
    let mut buf = vec![0u8; size];
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        off += f.read_at(&mut buf, off).expect("read") as u64;
    }
    len as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// The runs' settings: `[ROUNDS] [SECONDS]`.
struct Args {
    rounds: usize,
    /// How long each throughput case runs.
    secs: f64,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let rounds: usize = std::env::args().nth(1).map_or(Ok(3), |s| s.parse())?;
        let secs: f64 = std::env::args().nth(2).map_or(Ok(1.0), |s| s.parse())?;
        Ok(Args { rounds, secs })
    }
}

/// The FUSE mounts by transport name: the mount point and its session.
type Mounts = BTreeMap<&'static str, (tempfile::TempDir, Session)>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let mut rng = Rng::new(5);
    let data: Vec<u8> = (0..BIG).map(|_| rng.next_u64() as u8).collect();
    let shm = tmpfs_copy(&data)?;
    // The passthrough backing file lives on disk, like the chunk store.
    let work = tempfile::tempdir()?;
    let pt_path = work.path().join("backing.bin");
    std::fs::write(&pt_path, &data[..(BIG as usize)])?;
    let mounts = mount_both(&data, &pt_path)?;
    let modes: Vec<(&str, PathBuf)> = vec![
        ("ring", mounts["ring"].0.path().to_path_buf()),
        ("classic", mounts["classic"].0.path().to_path_buf()),
        ("tmpfs", shm.path().to_path_buf()),
    ];
    let results = measure(&args, &cases(), &modes);
    report_cases(results);
    report_passthrough(&mounts, &pt_path, args.rounds);
    for (_, (_, session)) in mounts {
        session.unmount()?;
    }
    Ok(())
}

/// tmpfs: the same files, as the ceiling.
fn tmpfs_copy(data: &[u8]) -> anyhow::Result<tempfile::TempDir> {
    let shm = tempfile::tempdir_in("/dev/shm")?;
    std::fs::write(shm.path().join("big.bin"), data)?;
    for i in 0..SMALL_FILES {
        std::fs::write(shm.path().join(format!("s{i}")), [0u8; 100])?;
    }
    Ok(shm)
}

/// [`BenchFs`] mounted over the ring and over the classic transport.
fn mount_both(data: &[u8], pt_path: &Path) -> anyhow::Result<Mounts> {
    let mut mounts = BTreeMap::new();
    for (name, choice) in [
        ("ring", TransportChoice::Ring),
        ("classic", TransportChoice::Classic),
    ] {
        let dir = tempfile::tempdir()?;
        let fs = Arc::new(BenchFs {
            data: data.to_vec(),
            pt_path: pt_path.to_path_buf(),
            pt_len: BIG,
            passthrough: Mutex::new(None),
            backing: Mutex::new(None),
        });
        let opts = MountOptions {
            transport: choice,
            uring_knob: UringKnob::Enable,
            ..MountOptions::default()
        };
        let session = Session::mount(fs, dir.path(), &opts)?;
        mounts.insert(name, (dir, session));
    }
    Ok(mounts)
}

/// The throughput cases: name, operation, clients.
fn cases() -> Vec<(String, Op, usize)> {
    [1, 2, 4]
        .into_iter()
        .flat_map(|c| {
            [
                (format!("read4k-c{c}"), Op::Read(4096), c),
                (format!("read128k-c{c}"), Op::Read(128 << 10), c),
                (format!("stat-ttl0-c{c}"), Op::Stat, c),
            ]
        })
        .collect()
}

/// Every round's figure per (case, mode): the `cases`, then sequential
/// streams, each mode in turn within a round.
fn measure<'m>(
    args: &Args,
    cases: &[(String, Op, usize)],
    modes: &[(&'m str, PathBuf)],
) -> BTreeMap<(String, &'m str), Vec<f64>> {
    let mut results: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    for _ in 0..args.rounds {
        for (case, op, clients) in cases {
            for (mode, dir) in modes {
                results
                    .entry((case.clone(), mode))
                    .or_default()
                    .push(run(dir, *op, *clients, args.secs));
            }
        }
        for size in [128usize << 10, 1 << 20] {
            for (mode, dir) in modes {
                let mbs = stream(&dir.join("big.bin"), size, BIG);
                results
                    .entry((format!("stream{}k-c1", size >> 10), mode))
                    .or_default()
                    .push(mbs);
            }
        }
    }
    results
}

/// One line per case: each mode's median, ring over classic.
fn report_cases(results: BTreeMap<(String, &str), Vec<f64>>) {
    let mut by_case: BTreeMap<String, BTreeMap<&str, f64>> = BTreeMap::new();
    for ((case, mode), v) in results {
        by_case.entry(case).or_default().insert(mode, median(v));
    }
    for (case, m) in &by_case {
        let unit = if case.starts_with("stream") {
            "MB/s"
        } else {
            "ops/s"
        };
        report(
            "fuse",
            serde_json::json!({
                "case": case,
                "unit": unit,
                "ring": m["ring"].round(),
                "classic": m["classic"].round(),
                "tmpfs": m["tmpfs"].round(),
                "ring_over_classic": (m["ring"] / m["classic"] * 100.0).round() / 100.0,
            }),
        );
    }
}

/// Passthrough vs the backing file read natively (both from the page
/// cache), per transport.
fn report_passthrough(mounts: &Mounts, pt_path: &Path, rounds: usize) {
    for (mode, (dir, _)) in mounts {
        let pt = dir.path().join("pt.bin");
        let mut through = Vec::new();
        let mut native = Vec::new();
        for _ in 0..rounds.max(3) {
            through.push(stream(&pt, 128 << 10, BIG));
            native.push(stream(pt_path, 128 << 10, BIG));
        }
        let (a, b) = (median(through), median(native));
        report(
            "fuse-passthrough",
            serde_json::json!({
                "transport": mode,
                "passthrough_mb_per_s": a.round(),
                "native_mb_per_s": b.round(),
                "passthrough_over_native": (a / b * 100.0).round() / 100.0,
            }),
        );
    }
}
