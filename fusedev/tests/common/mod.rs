//! An in-memory read-only filesystem for the transport tests: dirs, files
//! of several sizes, symlinks, a hardlink, xattrs, devices; reads that can
//! answer later from another thread; counters of what the kernel asked.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringstar_fusedev::{
    AttrReply, BackingFile, ConnInfo, Ctx, DirOut, Entry, Errno, FileAttr, FileHandle, FileType,
    Filesystem, Ino, MountOptions, Opened, Passthrough, ReadOut, ReadResult, Session, Timestamp,
    TransportChoice, UringKnob,
};

pub enum Content {
    Dir(BTreeMap<OsString, u64>),
    File(Arc<Vec<u8>>),
    Symlink(Vec<u8>),
    Device(FileType, u32),
}

pub struct Node {
    pub content: Content,
    pub perm: u32,
    pub nlink: u32,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

/// How reads answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    Now,
    /// From another thread after a delay.
    Later(Duration),
    /// Never (until the handle is dropped on unmount).
    Never,
    /// Kept in `held_reads` with what it asked for, until
    /// [`TestFs::release_held`] answers it with the right bytes.
    Hold,
}

/// Inode numbers of the tree [`TestFs::with_panics`] adds under `panic/`.
pub mod panic_ino {
    pub const DIR: u64 = 20;
    /// getattr panics (attributes are never cached, so every stat asks).
    pub const GETATTR: u64 = 21;
    /// read panics before answering.
    pub const READ: u64 = 22;
    /// read defers, hands the handle to `held`, then panics.
    pub const DEFER_HELD: u64 = 23;
    /// read defers, then panics with the handle in scope (dropped while
    /// unwinding).
    pub const DEFER_DROPPED: u64 = 24;
    /// `flip` resolves alternately to these two (entry TTL 0), so the
    /// kernel's revalidation sees a new node id and sends FORGET for it;
    /// forget of FLIP_B panics.
    pub const FLIP_A: u64 = 25;
    pub const FLIP_B: u64 = 26;
}

/// The message of every injected panic.
pub const INJECTED: &str = "injected panic";

pub struct TestFs {
    pub nodes: BTreeMap<u64, Node>,
    pub read_mode: Mutex<ReadMode>,
    pub reads: AtomicUsize,
    pub lookups: AtomicUsize,
    pub held: Mutex<Vec<ringstar_fusedev::DeferredRead>>,
    pub passthrough: Mutex<Option<Passthrough>>,
    /// ino → backing file, for files served by passthrough.
    pub backing: Mutex<BTreeMap<u64, (BackingFile, PathBuf)>>,
    pub passthrough_files: BTreeMap<u64, PathBuf>,
    pub forgets: AtomicU64,
    /// Deferred reads in [`ReadMode::Hold`]: the handle, the inode, the offset.
    pub held_reads: Mutex<Vec<(ringstar_fusedev::DeferredRead, u64, u64)>>,
    /// Whether the `panic/` tree is there and panics.
    pub panics: bool,
    /// Lookups of `panic/flip` so far (odd → FLIP_A, even → FLIP_B).
    pub flips: AtomicUsize,
    /// FORGETs of FLIP_B seen (each one then panics).
    pub flip_forgets: AtomicU64,
    /// CREATE and RMDIR requests that reached the filesystem: (parent,
    /// name), both answered ENOENT (what a store signalled this way
    /// answers).
    pub changes: Mutex<Vec<(&'static str, u64, OsString)>>,
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

impl TestFs {
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        let file = |data: Vec<u8>, perm: u32| Node {
            content: Content::File(Arc::new(data)),
            perm,
            nlink: 1,
            xattrs: BTreeMap::new(),
        };
        let dir = |children: &[(&str, u64)]| Node {
            content: Content::Dir(
                children
                    .iter()
                    .map(|(n, i)| (OsString::from(n), *i))
                    .collect(),
            ),
            perm: 0o755,
            nlink: 2,
            xattrs: BTreeMap::new(),
        };
        let root_children = [
            ("empty", 2u64),
            ("small.txt", 3),
            ("big.bin", 4),
            ("sub", 5),
            ("link", 6),
            ("hard", 3),
            ("null", 7),
            ("blk", 8),
            ("fifo", 9),
            ("direct.bin", 11),
        ];
        nodes.insert(1, dir(&root_children));
        nodes.insert(2, file(Vec::new(), 0o644));
        let mut small = file(b"hello from ringstar\n".to_vec(), 0o4755);
        small.nlink = 2;
        small
            .xattrs
            .insert("user.comment".into(), b"a value".to_vec());
        small.xattrs.insert("user.empty".into(), Vec::new());
        nodes.insert(3, small);
        nodes.insert(4, file(pattern(3 << 20 | 12345, 7), 0o644));
        nodes.insert(5, dir(&[("deep.txt", 10)]));
        nodes
            .get_mut(&5)
            .expect("sub")
            .xattrs
            .insert("trusted.overlay.opaque".into(), b"y".to_vec());
        nodes.insert(
            6,
            Node {
                content: Content::Symlink(b"small.txt".to_vec()),
                perm: 0o777,
                nlink: 1,
                xattrs: BTreeMap::new(),
            },
        );
        let dev = |t, rdev| Node {
            content: Content::Device(t, rdev),
            perm: 0o600,
            nlink: 1,
            xattrs: BTreeMap::new(),
        };
        nodes.insert(7, dev(FileType::CharDevice, libc::makedev(1, 3) as u32));
        nodes.insert(8, dev(FileType::BlockDevice, libc::makedev(8, 0) as u32));
        nodes.insert(9, dev(FileType::NamedPipe, 0));
        nodes.insert(10, file(pattern(70_000, 3), 0o600));
        // Opened with FOPEN_DIRECT_IO: each read(2) is a synchronous READ.
        nodes.insert(11, file(pattern(10_000, 5), 0o644));
        TestFs {
            nodes,
            read_mode: Mutex::new(ReadMode::Now),
            reads: AtomicUsize::new(0),
            lookups: AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
            passthrough: Mutex::new(None),
            backing: Mutex::new(BTreeMap::new()),
            passthrough_files: BTreeMap::new(),
            forgets: AtomicU64::new(0),
            held_reads: Mutex::new(Vec::new()),
            panics: false,
            flips: AtomicUsize::new(0),
            flip_forgets: AtomicU64::new(0),
            changes: Mutex::new(Vec::new()),
        }
    }

    /// Adds `panic/` whose callbacks panic (see [`panic_ino`]); `boom` in
    /// it panics in lookup.
    pub fn with_panics(mut self) -> Self {
        use panic_ino::*;
        let file = |data: Vec<u8>| Node {
            content: Content::File(Arc::new(data)),
            perm: 0o644,
            nlink: 1,
            xattrs: BTreeMap::new(),
        };
        let children = [
            ("getattr", GETATTR),
            ("read", READ),
            ("defer-held", DEFER_HELD),
            ("defer-dropped", DEFER_DROPPED),
        ];
        self.nodes.insert(
            DIR,
            Node {
                content: Content::Dir(children.iter().map(|(n, i)| ((*n).into(), *i)).collect()),
                perm: 0o755,
                nlink: 2,
                xattrs: BTreeMap::new(),
            },
        );
        for ino in [GETATTR, READ, DEFER_HELD, DEFER_DROPPED, FLIP_A, FLIP_B] {
            self.nodes.insert(ino, file(pattern(5000, ino as u8)));
        }
        if let Some(Node {
            content: Content::Dir(children),
            ..
        }) = self.nodes.get_mut(&1)
        {
            children.insert("panic".into(), DIR);
        }
        self.panics = true;
        self
    }

    /// Answers every read held in [`ReadMode::Hold`] with its bytes.
    pub fn release_held(&self) -> usize {
        let held = std::mem::take(&mut *self.held_reads.lock().unwrap());
        let n = held.len();
        for (handle, ino, offset) in held {
            let Some(Content::File(data)) = self.nodes.get(&ino).map(|n| &n.content) else {
                handle.error(Errno::EIO);
                continue;
            };
            let start = (offset as usize).min(data.len());
            let end = data.len().min(start + handle.max_len());
            handle.reply(&data[start..end]);
        }
        n
    }

    fn direct_io(&self, ino: u64) -> bool {
        use panic_ino::*;
        ino == 11 || (self.panics && [READ, DEFER_HELD, DEFER_DROPPED].contains(&ino))
    }

    /// Adds a file served by passthrough from `backing`.
    pub fn with_passthrough_file(mut self, name: &str, ino: u64, backing: PathBuf) -> Self {
        let len = std::fs::metadata(&backing).expect("backing file").len() as usize;
        self.nodes.insert(
            ino,
            Node {
                content: Content::File(Arc::new(vec![0; len])),
                perm: 0o644,
                nlink: 1,
                xattrs: BTreeMap::new(),
            },
        );
        if let Some(Node {
            content: Content::Dir(children),
            ..
        }) = self.nodes.get_mut(&1)
        {
            children.insert(name.into(), ino);
        }
        self.passthrough_files.insert(ino, backing);
        self
    }

    pub fn attr(&self, ino: u64) -> FileAttr {
        let n = &self.nodes[&ino];
        let (kind, size, rdev) = match &n.content {
            Content::Dir(_) => (FileType::Directory, 0, 0),
            Content::File(d) => (FileType::RegularFile, d.len() as u64, 0),
            Content::Symlink(t) => (FileType::Symlink, t.len() as u64, 0),
            Content::Device(t, r) => (*t, 0, *r),
        };
        let t = Timestamp {
            secs: 1_700_000_000,
            nsecs: 0,
        };
        FileAttr {
            atime: t,
            mtime: t,
            ctime: t,
            nlink: n.nlink,
            rdev,
            ..FileAttr::new(Ino(ino), kind, size, n.perm)
        }
    }

    fn entry(&self, ino: u64) -> Entry {
        Entry {
            attr: self.attr(ino),
            generation: 0,
            entry_ttl: Duration::from_secs(3600),
            attr_ttl: Duration::from_secs(3600),
        }
    }
}

impl Filesystem for TestFs {
    fn init(&self, info: &ConnInfo) {
        *self.passthrough.lock().unwrap() = info.passthrough.clone();
    }

    fn lookup(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<Entry, Errno> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if self.panics && parent.0 == panic_ino::DIR {
            if name == "boom" {
                panic!("{INJECTED}: lookup of boom");
            }
            if name == "flip" {
                let n = self.flips.fetch_add(1, Ordering::Relaxed);
                let ino = [panic_ino::FLIP_A, panic_ino::FLIP_B][n % 2];
                return Ok(Entry {
                    entry_ttl: Duration::ZERO,
                    ..self.entry(ino)
                });
            }
            if name == "getattr" {
                return Ok(Entry {
                    attr_ttl: Duration::ZERO,
                    ..self.entry(panic_ino::GETATTR)
                });
            }
        }
        match self.nodes.get(&parent.0).map(|n| &n.content) {
            Some(Content::Dir(children)) => children
                .get(name)
                .map(|&i| self.entry(i))
                .ok_or(Errno::ENOENT),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn forget(&self, ino: Ino, nlookup: u64) {
        self.forgets.fetch_add(nlookup, Ordering::Relaxed);
        if self.panics && ino.0 == panic_ino::FLIP_B {
            self.flip_forgets.fetch_add(1, Ordering::Relaxed);
            panic!("{INJECTED}: forget of {}", ino.0);
        }
    }

    fn getattr(&self, _ctx: &Ctx, ino: Ino) -> Result<AttrReply, Errno> {
        if !self.nodes.contains_key(&ino.0) {
            return Err(Errno::ENOENT);
        }
        if self.panics && ino.0 == panic_ino::GETATTR {
            panic!("{INJECTED}: getattr of {}", ino.0);
        }
        Ok(AttrReply {
            attr: self.attr(ino.0),
            ttl: Duration::from_secs(3600),
        })
    }

    fn readlink(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        match self.nodes.get(&ino.0).map(|n| &n.content) {
            Some(Content::Symlink(t)) => Ok(t.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn open(&self, _ctx: &Ctx, ino: Ino, _flags: u32) -> Result<Opened, Errno> {
        let mut opened = Opened {
            keep_cache: !self.direct_io(ino.0),
            direct_io: self.direct_io(ino.0),
            ..Opened::default()
        };
        if let Some(path) = self.passthrough_files.get(&ino.0) {
            let pt = self.passthrough.lock().unwrap().clone().ok_or(Errno::EIO)?;
            let mut backing = self.backing.lock().unwrap();
            if let std::collections::btree_map::Entry::Vacant(slot) = backing.entry(ino.0) {
                let f = File::open(path).map_err(|_| Errno::EIO)?;
                let b = pt.open_backing(&f).map_err(|e| {
                    eprintln!("open_backing: {e}");
                    Errno::EIO
                })?;
                slot.insert((b, path.clone()));
            }
            opened.backing = Some(backing[&ino.0].0.id());
        }
        Ok(opened)
    }

    fn read(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        mut out: ReadOut<'_>,
    ) -> ReadResult {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let Some(Content::File(data)) = self.nodes.get(&ino.0).map(|n| &n.content) else {
            return ReadResult::Error(Errno::EISDIR);
        };
        let start = (offset as usize).min(data.len());
        if self.panics {
            match ino.0 {
                panic_ino::READ => panic!("{INJECTED}: read of {}", ino.0),
                panic_ino::DEFER_HELD => {
                    self.held.lock().unwrap().push(out.defer().0);
                    panic!("{INJECTED}: read of {} after deferring", ino.0);
                }
                panic_ino::DEFER_DROPPED => {
                    let (_handle, _deferred) = out.defer();
                    panic!("{INJECTED}: read of {} holding its handle", ino.0);
                }
                _ => {}
            }
        }
        let mode = *self.read_mode.lock().unwrap();
        match mode {
            ReadMode::Now => {
                let buf = out.buf();
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                ReadResult::Data(n)
            }
            ReadMode::Later(delay) => {
                let (handle, deferred) = out.defer();
                let data = data.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let n = handle.max_len().min(data.len() - start);
                    handle.reply(&data[start..start + n]);
                });
                ReadResult::Deferred(deferred)
            }
            ReadMode::Never => {
                let (handle, deferred) = out.defer();
                self.held.lock().unwrap().push(handle);
                ReadResult::Deferred(deferred)
            }
            ReadMode::Hold => {
                let (handle, deferred) = out.defer();
                self.held_reads
                    .lock()
                    .unwrap()
                    .push((handle, ino.0, offset));
                ReadResult::Deferred(deferred)
            }
        }
    }

    fn readdir(
        &self,
        _ctx: &Ctx,
        ino: Ino,
        _fh: FileHandle,
        offset: u64,
        out: &mut DirOut<'_>,
    ) -> Result<(), Errno> {
        let Some(Content::Dir(children)) = self.nodes.get(&ino.0).map(|n| &n.content) else {
            return Err(Errno::ENOTDIR);
        };
        let mut all: Vec<(OsString, u64, bool)> =
            vec![(".".into(), ino.0, true), ("..".into(), 1, true)];
        all.extend(children.iter().map(|(n, &i)| (n.clone(), i, false)));
        for (i, (name, child, dot)) in all.iter().enumerate().skip(offset as usize) {
            let e = self.entry(*child);
            let added = if *dot {
                out.push_dot(name, i as u64 + 1, &e)
            } else {
                out.push(name, i as u64 + 1, &e)
            };
            if !added {
                break;
            }
        }
        Ok(())
    }

    fn create(
        &self,
        _ctx: &Ctx,
        parent: Ino,
        name: &OsStr,
        _mode: u32,
        _flags: u32,
    ) -> Result<(Entry, ringstar_fusedev::Opened), Errno> {
        let call = ("CREATE", parent.0, name.to_os_string());
        self.changes.lock().unwrap().push(call);
        Err(Errno::ENOENT)
    }

    fn rmdir(&self, _ctx: &Ctx, parent: Ino, name: &OsStr) -> Result<(), Errno> {
        let call = ("RMDIR", parent.0, name.to_os_string());
        self.changes.lock().unwrap().push(call);
        Err(Errno::ENOENT)
    }

    fn getxattr(&self, _ctx: &Ctx, ino: Ino, name: &OsStr) -> Result<Vec<u8>, Errno> {
        self.nodes
            .get(&ino.0)
            .and_then(|n| n.xattrs.get(name))
            .cloned()
            .ok_or(Errno::ENODATA)
    }

    fn listxattr(&self, _ctx: &Ctx, ino: Ino) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for k in self
            .nodes
            .get(&ino.0)
            .map(|n| n.xattrs.keys())
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Mounts `fs` over `transport`; a ring mount may set the host's
/// `enable_uring` knob (the ring tests need it).
pub fn mount(fs: Arc<TestFs>, dir: &Path, transport: TransportChoice) -> Session {
    mount_with(fs, dir, transport, MountOptions::default())
}

/// [`mount`] with other options.
pub fn mount_with(
    fs: Arc<TestFs>,
    dir: &Path,
    transport: TransportChoice,
    opts: MountOptions,
) -> Session {
    init_logging();
    let opts = MountOptions {
        transport,
        uring_knob: if transport == TransportChoice::Classic {
            UringKnob::Leave
        } else {
            UringKnob::Enable
        },
        ..opts
    };
    Session::mount(fs, dir, &opts).expect("mount (tests run as root)")
}

/// Runs `f` on another thread and returns what it returned, failing the
/// test if it takes longer than `limit` (a request the session never
/// answers would otherwise hang the test instead of failing it).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// [`signalable_command`] whose child runs only on `cpu`, so the kernel
/// puts its FUSE requests on that CPU's queue.
pub fn pinned_command(program: &str, cpu: usize) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = signalable_command(program);
    // SAFETY: between fork and exec the closure calls only
    // sched_setaffinity(2) on a set built on its own stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Waits for a child, killing it and failing the test after `limit`.
pub fn wait_output(
    what: &str,
    mut child: std::process::Child,
    limit: Duration,
) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("child output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: not done within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command for a child the test will signal: the signals it sends get
/// their default disposition back in the child. A non-interactive shell
/// starts background jobs with SIGINT and SIGQUIT ignored, and cargo,
/// the test binary and every child inherit that, so a `kill -INT` would
/// never reach the reader (and the kernel would never send INTERRUPT).
pub fn signalable_command(program: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(program);
    // SAFETY: between fork and exec the closure calls only signal(2),
    // which is async-signal-safe, and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP] {
                if libc::signal(sig, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}
