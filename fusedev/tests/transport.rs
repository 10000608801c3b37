//! Real mounts (tests run as root) of the in-memory test filesystem over
//! each transport, checked through the kernel: std::fs, xattrs, statfs,
//! overlayfs on top, many processes at once, deferred and interrupted
//! reads, teardown under load, passthrough.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    ReadMode, TestFs, mount, mount_with, pattern, pinned_command, signalable_command, wait_output,
    within,
};
use ringstar_fusedev::{DEFAULT_RING_DEPTH, MountOptions, Transport, TransportChoice};
use sha2::{Digest, Sha256};

fn ring_available() -> bool {
    let knob = "/sys/module/fuse/parameters/enable_uring";
    fs::read_to_string(knob).is_ok_and(|s| s.trim() == "Y") || fs::write(knob, b"Y").is_ok()
}

/// Runs a test body over a transport, skipping (loudly) only when the
/// kernel lacks FUSE-over-io_uring.
fn with_transport(transport: TransportChoice, body: impl FnOnce(TransportChoice)) {
    if transport == TransportChoice::Ring && !ring_available() {
        eprintln!("SKIPPED: this kernel has no FUSE-over-io_uring (enable_uring cannot be set)");
        return;
    }
    body(transport)
}

fn expect_transport(s: &ringstar_fusedev::Session, t: TransportChoice) {
    let want = match t {
        TransportChoice::Classic => Transport::Classic,
        _ => Transport::Ring,
    };
    assert_eq!(s.transport(), want);
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn serves_the_tree(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    let s = mount(fs_.clone(), mnt, t);
    expect_transport(&s, t);

    // readdir
    let mut names: Vec<String> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "big.bin",
            "blk",
            "direct.bin",
            "empty",
            "fifo",
            "hard",
            "link",
            "null",
            "small.txt",
            "sub"
        ]
    );
    let kinds: Vec<(String, bool)> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.file_type().unwrap().is_dir(),
            )
        })
        .collect();
    assert!(kinds.contains(&("sub".into(), true)));

    // stat
    let m = fs::symlink_metadata(mnt.join("small.txt")).unwrap();
    assert_eq!(m.len(), 20);
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m.nlink(), 2);
    assert_eq!(m.mtime(), 1_700_000_000);
    assert_eq!(fs::metadata(mnt.join("hard")).unwrap().ino(), m.ino());
    let null = fs::symlink_metadata(mnt.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(
        fs::symlink_metadata(mnt.join("blk"))
            .unwrap()
            .file_type()
            .is_block_device()
    );
    assert!(
        fs::symlink_metadata(mnt.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(fs::metadata(mnt.join("missing")).is_err());
    assert_eq!(fs::read_dir(mnt.join("sub")).unwrap().count(), 1);

    // read: whole files, and at many offsets and sizes
    assert_eq!(
        fs::read(mnt.join("small.txt")).unwrap(),
        b"hello from ringstar\n"
    );
    assert_eq!(fs::read(mnt.join("empty")).unwrap(), b"");
    let big = pattern(3 << 20 | 12345, 7);
    assert_eq!(sha(&fs::read(mnt.join("big.bin")).unwrap()), sha(&big));
    assert_eq!(
        fs::read(mnt.join("sub/deep.txt")).unwrap(),
        pattern(70_000, 3)
    );
    let f = fs::File::open(mnt.join("big.bin")).unwrap();
    for (off, len) in [
        (0usize, 1usize),
        (1, 4095),
        (4095, 2),
        (131_071, 3),
        (1 << 20, 1 << 20),
        (big.len() - 5, 100),
    ] {
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, off as u64).unwrap();
        let want = &big[off..(off + len).min(big.len())];
        assert_eq!(&buf[..n], want, "read at {off}+{len}");
    }

    // readlink
    assert_eq!(
        fs::read_link(mnt.join("link")).unwrap(),
        Path::new("small.txt")
    );
    assert_eq!(
        fs::read(mnt.join("link")).unwrap(),
        b"hello from ringstar\n"
    );

    // xattrs
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(mnt.join("small.txt"), "user.comment", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"a value");
    assert_eq!(
        rustix::fs::getxattr(mnt.join("small.txt"), "user.empty", &mut buf).unwrap(),
        0
    );
    assert!(rustix::fs::getxattr(mnt.join("small.txt"), "user.missing", &mut buf).is_err());
    let n = rustix::fs::listxattr(mnt.join("small.txt"), &mut buf).unwrap();
    assert_eq!(&buf[..n], b"user.comment\0user.empty\0");
    let mut tiny = [0u8; 2];
    assert_eq!(
        rustix::fs::getxattr(mnt.join("small.txt"), "user.comment", &mut tiny),
        Err(rustix::io::Errno::RANGE)
    );

    // statfs
    let st = rustix::fs::statvfs(mnt).unwrap();
    assert_eq!(st.f_bsize, 4096);
    assert_eq!(st.f_namemax, 255);

    // read-only
    assert!(fs::write(mnt.join("new"), b"x").is_err());
    assert!(fs::create_dir(mnt.join("newdir")).is_err());

    // long TTLs: a second stat costs no lookup
    let before = fs_.lookups.load(Ordering::Relaxed);
    fs::metadata(mnt.join("small.txt")).unwrap();
    assert_eq!(fs_.lookups.load(Ordering::Relaxed), before);

    // The requests really took the transport's path: with the ring, only
    // INIT (and any FORGET/INTERRUPT) come through read(2).
    let (ring, classic) = (
        s.stats().ring.load(Ordering::Relaxed),
        s.stats().classic.load(Ordering::Relaxed),
    );
    match t {
        TransportChoice::Classic => assert_eq!(ring, 0),
        _ => assert!(ring > 50 && classic < 5, "ring {ring}, classic {classic}"),
    }
    s.unmount().unwrap();
}

fn overlay_on_top(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    let (upper, work, merged) = (
        dir.path().join("upper"),
        dir.path().join("work"),
        dir.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let s = mount(Arc::new(TestFs::new()), &lower, t);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount on the FUSE lower failed");
    let result = std::panic::catch_unwind(|| {
        assert_eq!(
            fs::read(merged.join("small.txt")).unwrap(),
            b"hello from ringstar\n"
        );
        assert_eq!(
            sha(&fs::read(merged.join("big.bin")).unwrap()),
            sha(&pattern(3 << 20 | 12345, 7))
        );
        assert_eq!(
            fs::read(merged.join("sub/deep.txt")).unwrap(),
            pattern(70_000, 3)
        );
        fs::write(merged.join("written"), b"upper").unwrap();
        assert_eq!(fs::read(upper.join("written")).unwrap(), b"upper");
        fs::remove_file(merged.join("small.txt")).unwrap();
        assert!(!merged.join("small.txt").exists());
        assert!(lower.join("small.txt").exists());
    });
    let _ = Command::new("umount").arg(&merged).status();
    s.unmount().unwrap();
    result.unwrap();
}

fn many_processes(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let s = mount(Arc::new(TestFs::new()), mnt, t);
    // Made once: 800 copies of 3 MiB in a debug build took 45 s.
    let big = Arc::new(pattern(3 << 20 | 12345, 7));
    let want = format!("{}  {}/big.bin", sha(&big), mnt.display());
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "for i in 1 2 3; do stat {m}/small.txt {m}/sub/deep.txt >/dev/null || exit 1; done; sha256sum {m}/big.bin",
                    m = mnt.display()
                ))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let m = mnt.to_path_buf();
            let big = big.clone();
            std::thread::spawn(move || {
                let f = fs::File::open(m.join("big.bin")).unwrap();
                let mut buf = vec![0u8; 4096];
                for k in 0..200u64 {
                    let off = (k * 7919 + i * 104_729) % (3 << 20);
                    let n = f.read_at(&mut buf, off).unwrap();
                    assert_eq!(&buf[..n], &big[off as usize..off as usize + n]);
                    fs::metadata(m.join("sub/deep.txt")).unwrap();
                }
            })
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), want);
    }
    for th in threads {
        th.join().unwrap();
    }
    s.unmount().unwrap();
}

fn deferred_reads(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let fs_ = Arc::new(TestFs::new());
    *fs_.read_mode.lock().unwrap() = ReadMode::Later(Duration::from_millis(20));
    let s = mount(fs_.clone(), dir.path(), t);
    // Several readers at once, each read answered later from another thread.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let p = dir.path().join("sub/deep.txt");
            std::thread::spawn(move || fs::read(p).unwrap())
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), pattern(70_000, 3));
    }
    assert_eq!(s.pending_requests(), 0);
    s.unmount().unwrap();
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cat PATH` and waits until its read reached the filesystem.
fn spawn_reader(fs_: &TestFs, path: &Path) -> std::process::Child {
    let child = signalable_command("cat")
        .arg(path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "the read to reach the filesystem",
        Duration::from_secs(10),
        || fs_.reads.load(Ordering::Relaxed) > 0,
    );
    child
}

fn interrupted_read(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    *fs_.read_mode.lock().unwrap() = ReadMode::Never;
    let s = mount(fs_.clone(), mnt, t);
    let mut child = spawn_reader(&fs_, &mnt.join("sub/deep.txt"));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    // The mount is healthy: other files are answered while that read is
    // still held (a buffered read is kernel readahead, which a signal does
    // not cancel: its pages stay locked until the filesystem answers).
    *fs_.read_mode.lock().unwrap() = ReadMode::Now;
    assert_eq!(
        fs::read(mnt.join("small.txt")).unwrap(),
        b"hello from ringstar\n"
    );
    assert_eq!(fs::read_dir(mnt.join("sub")).unwrap().count(), 1);
    // The held handle, answered late (dropped: EIO), frees those pages and
    // the same file reads back whole.
    fs_.held.lock().unwrap().clear();
    assert_eq!(
        fs::read(mnt.join("sub/deep.txt")).unwrap(),
        pattern(70_000, 3)
    );
    s.unmount().unwrap();
}

fn teardown_with_waiting_readers(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_path_buf();
    let fs_ = Arc::new(TestFs::new());
    *fs_.read_mode.lock().unwrap() = ReadMode::Never;
    let s = mount(fs_.clone(), &mnt, t);
    let mut child = spawn_reader(&fs_, &mnt.join("sub/deep.txt"));
    let start = Instant::now();
    drop(s);
    assert!(start.elapsed() < Duration::from_secs(10), "unmount hung");
    // The reader gets an error, not a hang.
    wait_until("the reader to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(!child.wait().unwrap().success());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {} ", mnt.display())),
        "mount point still mounted"
    );
    fs_.held.lock().unwrap().clear();
}

/// A ring queue whose every entry is held by a deferred read (one entry,
/// no room to grow) has nothing in the kernel for the abort to complete:
/// unmount still finishes, and the reader gets an error.
fn teardown_with_every_entry_held(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_path_buf();
    let fs_ = Arc::new(TestFs::new());
    *fs_.read_mode.lock().unwrap() = ReadMode::Never;
    let opts = MountOptions {
        ring_depth: 1,
        ring_max_entries: 1,
        ..MountOptions::default()
    };
    let s = mount_with(fs_.clone(), &mnt, t, opts);
    let reader = pinned_command("cat", 0)
        .arg(mnt.join("direct.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(10);
    wait_until("the read to be deferred", limit, || {
        s.pending_requests() == 1
    });
    within("unmount", limit, move || s.unmount()).unwrap();
    assert!(!wait_output("the reader", reader, limit).status.success());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {} ", mnt.display())),
        "still mounted"
    );
    fs_.held.lock().unwrap().clear();
}

fn passthrough_reads_skip_the_daemon(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let backing = dir.path().join("backing.bin");
    let data = pattern(5 << 20, 9);
    fs::write(&backing, &data).unwrap();
    let fs_ = Arc::new(TestFs::new().with_passthrough_file("pt.bin", 100, backing));
    let s = mount(fs_.clone(), &mnt, t);
    assert!(
        fs_.passthrough.lock().unwrap().is_some(),
        "kernel refused passthrough"
    );
    let before = fs_.reads.load(Ordering::Relaxed);
    let mut got = Vec::new();
    fs::File::open(mnt.join("pt.bin"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(sha(&got), sha(&data));
    assert_eq!(
        fs_.reads.load(Ordering::Relaxed),
        before,
        "passthrough reads reached the daemon"
    );
    s.unmount().unwrap();
}

fn interrupt_answers_a_waiting_read(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    let s = mount(fs_.clone(), mnt, t);
    check_interrupt(&s, &fs_, mnt);
    s.unmount().unwrap();
}

/// A direct-I/O read waits in the reader's own context: SIGINT makes the
/// kernel send INTERRUPT (through read(2) on the main fd, on both
/// transports) and wait for the filesystem's answer, so the reader can only
/// exit if the session answers EINTR.
fn check_interrupt(s: &ringstar_fusedev::Session, fs_: &TestFs, mnt: &Path) {
    *fs_.read_mode.lock().unwrap() = ReadMode::Never;
    let mut child = signalable_command("cat")
        .arg(mnt.join("direct.bin"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the read to be deferred", Duration::from_secs(10), || {
        s.pending_requests() == 1
    });
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_until(
        "the interrupted reader to exit",
        Duration::from_secs(10),
        || child.try_wait().unwrap().is_some(),
    );
    assert_eq!(s.pending_requests(), 0);
    // The handle the filesystem still holds knows it was cancelled.
    assert!(fs_.held.lock().unwrap().iter().all(|h| h.is_cancelled()));
    fs_.held.lock().unwrap().clear();
    *fs_.read_mode.lock().unwrap() = ReadMode::Now;
    assert_eq!(
        fs::read(mnt.join("direct.bin")).unwrap(),
        pattern(10_000, 5)
    );
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Panics in lookup, getattr, read (before deferring, after deferring with
/// the handle kept, after deferring with the handle dropped) and FORGET:
/// each asking process gets EIO, nothing stays pending, and the session
/// keeps serving on every thread (more panics than it has threads),
/// including INTERRUPT on the main fd. Every op runs under a deadline: a
/// thread lost to a panic would leave its request unanswered.
fn panics_are_contained(t: TransportChoice) {
    use common::panic_ino;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_path_buf();
    let fs_ = Arc::new(TestFs::new().with_panics());
    let s = mount(fs_.clone(), &mnt, t);
    let limit = Duration::from_secs(10);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    for round in 0..threads + 1 {
        let p = mnt.join("panic/boom");
        let r = within("stat of panic/boom", limit, move || fs::metadata(p));
        assert_eq!(errno(r), Some(libc::EIO), "lookup, round {round}");
        let p = mnt.join("panic/getattr");
        let r = within("stat of panic/getattr", limit, move || fs::metadata(p));
        assert_eq!(errno(r), Some(libc::EIO), "getattr, round {round}");
        for name in ["read", "defer-held", "defer-dropped"] {
            let p = mnt.join("panic").join(name);
            let r = within(&format!("read of panic/{name}"), limit, move || fs::read(p));
            assert_eq!(errno(r), Some(libc::EIO), "read of {name}, round {round}");
        }
        assert_eq!(s.pending_requests(), 0, "round {round}");
    }
    // The handles the panicking reads left behind were taken back.
    assert!(!fs_.held.lock().unwrap().is_empty());
    assert!(fs_.held.lock().unwrap().iter().all(|h| h.is_cancelled()));
    fs_.held.lock().unwrap().clear();
    // FORGET: revalidating `flip` (entry TTL 0) finds another node id, and
    // the kernel forgets that one; forgetting it panics.
    for _ in 0..threads + 1 {
        let p = mnt.join("panic/flip");
        within("stat of panic/flip", limit, move || fs::metadata(p)).unwrap();
    }
    wait_until("a FORGET of the flipped node", limit, || {
        fs_.flip_forgets.load(Ordering::Relaxed) > 0
    });
    // Everything else still works, from several threads at once.
    let workers: Vec<_> = (0..2 * threads)
        .map(|_| {
            let m = mnt.clone();
            std::thread::spawn(move || {
                assert_eq!(
                    fs::read(m.join("small.txt")).unwrap(),
                    b"hello from ringstar\n"
                );
                assert_eq!(
                    fs::read(m.join("sub/deep.txt")).unwrap(),
                    pattern(70_000, 3)
                );
                assert_eq!(fs::read_dir(&m).unwrap().count(), 11);
                fs::metadata(m.join("panic/flip")).unwrap();
            })
        })
        .collect();
    within("reads after the panics", limit, move || {
        for w in workers {
            w.join().unwrap();
        }
    });
    check_interrupt(&s, &fs_, &mnt);
    assert!(fs_.nodes.contains_key(&panic_ino::FLIP_B));
    assert_eq!(s.pending_requests(), 0);
    s.unmount().unwrap();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&format!(" {} ", mnt.display())),
        "still mounted"
    );
}

/// More slow (deferred, unanswered) reads from one CPU than a ring queue
/// has entries, then metadata from that CPU: it is answered (with the ring,
/// the queue registered more entries), and the reads, answered at last,
/// carry the right bytes.
fn slow_reads_leave_metadata_alone(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    *fs_.read_mode.lock().unwrap() = ReadMode::Hold;
    let s = mount(fs_.clone(), mnt, t);
    let limit = Duration::from_secs(10);
    let depth = usize::from(DEFAULT_RING_DEPTH);
    let n = depth + 4;
    let readers: Vec<_> = (0..n)
        .map(|i| {
            let child = pinned_command("cat", 0)
                .arg(mnt.join("direct.bin"))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            wait_until(
                &format!("read {} of {n} to be deferred", i + 1),
                limit,
                || s.pending_requests() == i + 1,
            );
            child
        })
        .collect();
    let lookups = fs_.lookups.load(Ordering::Relaxed);
    let stat = pinned_command("stat", 0)
        .args(["-c", "%s"])
        .args(["small.txt", "sub/deep.txt", "big.bin"].map(|f| mnt.join(f)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output("stat from CPU 0", stat, limit);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "20\n70000\n3158073\n"
    );
    assert!(
        fs_.lookups.load(Ordering::Relaxed) >= lookups + 3,
        "lookups reached the daemon"
    );
    let ls = pinned_command("ls", 0)
        .arg(mnt.join("sub"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output("ls from CPU 0", ls, limit);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "deep.txt\n");
    let missing = pinned_command("stat", 0)
        .arg(mnt.join("missing"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        !wait_output("stat of a missing name from CPU 0", missing, limit)
            .status
            .success()
    );
    if s.transport() == Transport::Ring {
        // Queue 0 keeps `depth` entries free beside the n held ones.
        let entries = s.stats().ring_entries.load(Ordering::Relaxed);
        assert!(entries >= (n + depth) as u64, "{entries} ring entries");
    }
    assert_eq!(s.pending_requests(), n);
    *fs_.read_mode.lock().unwrap() = ReadMode::Now;
    assert_eq!(fs_.release_held(), n);
    for (i, r) in readers.into_iter().enumerate() {
        let out = wait_output(&format!("reader {i}"), r, limit);
        assert!(out.status.success(), "reader {i}");
        assert_eq!(out.stdout, pattern(10_000, 5), "reader {i}'s bytes");
    }
    assert_eq!(s.pending_requests(), 0);
    s.unmount().unwrap();
}

fn notifications_invalidate_the_kernel_cache(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    let s = mount(fs_.clone(), mnt, t);
    fs::metadata(mnt.join("small.txt")).unwrap();
    let cached = fs_.lookups.load(Ordering::Relaxed);
    fs::metadata(mnt.join("small.txt")).unwrap();
    assert_eq!(
        fs_.lookups.load(Ordering::Relaxed),
        cached,
        "entry should be cached"
    );
    s.invalidate_entry(
        ringstar_fusedev::Ino::ROOT,
        std::ffi::OsStr::new("small.txt"),
    )
    .unwrap();
    fs::metadata(mnt.join("small.txt")).unwrap();
    assert_eq!(
        fs_.lookups.load(Ordering::Relaxed),
        cached + 1,
        "invalidated entry looked up again"
    );
    // Inode invalidation and names the kernel never saw are fine too.
    let ino = fs::metadata(mnt.join("small.txt")).unwrap().ino();
    s.invalidate_inode(ringstar_fusedev::Ino(ino)).unwrap();
    s.invalidate_entry(
        ringstar_fusedev::Ino::ROOT,
        std::ffi::OsStr::new("never-seen"),
    )
    .unwrap();
    assert_eq!(
        fs::read(mnt.join("small.txt")).unwrap(),
        b"hello from ringstar\n"
    );
    s.unmount().unwrap();
}

/// close(2) costs one FLUSH per connection, not one per close: the first
/// is answered ENOSYS and the kernel sends no more.
fn close_sends_flush_once(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    let s = mount(fs_.clone(), mnt, t);
    let requests =
        || s.stats().ring.load(Ordering::Relaxed) + s.stats().classic.load(Ordering::Relaxed);
    let path = mnt.join("small.txt");
    drop(fs::File::open(&path).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let before = requests();
    const CLOSES: u64 = 50;
    for _ in 0..CLOSES {
        drop(fs::File::open(&path).unwrap());
    }
    // RELEASE is sent after close returns: let the last ones arrive.
    std::thread::sleep(Duration::from_millis(200));
    let per_close = (requests() - before) as f64 / CLOSES as f64;
    // OPEN and RELEASE; with a FLUSH each it would be 3.
    assert!(per_close <= 2.1, "{per_close} requests per open and close");
    s.unmount().unwrap();
}

/// A read-only mount (the default) refuses creating and removing in the
/// kernel; a writable one hands CREATE and RMDIR to the filesystem, and
/// its answer (ENOENT here) is what the caller gets.
fn writable_mount_passes_create_and_rmdir(t: TransportChoice) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let fs_ = Arc::new(TestFs::new());
    let s = mount(fs_.clone(), mnt, t);
    assert_eq!(
        errno(fs::File::create(mnt.join("sub/use"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno(fs::remove_dir(mnt.join("sub"))), Some(libc::EROFS));
    assert!(fs_.changes.lock().unwrap().is_empty());
    s.unmount().unwrap();

    let opts = MountOptions {
        read_only: false,
        ..MountOptions::default()
    };
    let s = mount_with(fs_.clone(), mnt, t, opts);
    assert_eq!(
        errno(fs::File::create(mnt.join("sub/use"))),
        Some(libc::ENOENT)
    );
    assert_eq!(errno(fs::remove_dir(mnt.join("sub"))), Some(libc::ENOENT));
    // Other changes are still refused, by the session.
    assert_eq!(errno(fs::create_dir(mnt.join("new"))), Some(libc::EROFS));
    let sub = fs::metadata(mnt.join("sub")).unwrap().ino();
    let changes = fs_.changes.lock().unwrap().clone();
    assert_eq!(
        changes,
        vec![("CREATE", sub, "use".into()), ("RMDIR", 1, "sub".into())]
    );
    s.unmount().unwrap();
}

macro_rules! per_transport {
    ($($name:ident),*) => {
        mod classic {
            $(#[test] fn $name() { super::with_transport(super::TransportChoice::Classic, super::$name) })*
        }
        mod ring {
            $(#[test] fn $name() { super::with_transport(super::TransportChoice::Ring, super::$name) })*
        }
    };
}

per_transport!(
    serves_the_tree,
    overlay_on_top,
    many_processes,
    deferred_reads,
    interrupted_read,
    teardown_with_waiting_readers,
    passthrough_reads_skip_the_daemon,
    interrupt_answers_a_waiting_read,
    notifications_invalidate_the_kernel_cache,
    panics_are_contained,
    slow_reads_leave_metadata_alone,
    teardown_with_every_entry_held,
    close_sends_flush_once,
    writable_mount_passes_create_and_rmdir
);
