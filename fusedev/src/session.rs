//! A mounted FUSE connection: mount, INIT, the data-plane threads, and
//! teardown.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{self, InitOut, init_flags as f};
use crate::fs::{ConnInfo, DeferSeed, Filesystem, PendingReplies, ReplySink, lock};
use crate::passthrough::Passthrough;
use crate::reply::{Outcome, dispatch_guarded};
use crate::request::{self, Operation};
use crate::sys;
use crate::types::{Errno, Unique};

/// Which transport serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// FUSE-over-io_uring when the kernel offers it (see [`UringKnob`]),
    /// classic otherwise.
    Auto,
    /// FUSE-over-io_uring or fail.
    Ring,
    /// read(2)/write(2) on cloned fds.
    Classic,
}

/// What a mount may do with the host-wide module parameter
/// [`ENABLE_URING_KNOB`], which decides whether the kernel offers
/// FUSE-over-io_uring to *every* FUSE mount on the host (it is `N` by
/// default). The caller decides; fusedev never changes it on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UringKnob {
    /// Read it, never write it: the ring is used only if the host already
    /// enabled it.
    #[default]
    Leave,
    /// Write `Y` when it is not (logged at info with the path). A write
    /// that fails counts as "not available".
    Enable,
}

/// The daemon's `fuse_uring` setting (`"auto" | "on" | "off"`), mapped to
/// a transport and a knob policy by [`FuseUring::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FuseUring {
    /// The ring only if the host already set `enable_uring=Y`; never write
    /// it; classic otherwise.
    #[default]
    Auto,
    /// Write `enable_uring=Y` if needed and require the ring (the mount
    /// fails without it).
    On,
    /// Classic; the knob is not touched.
    Off,
}

/// A `fuse_uring` value that is none of `auto`, `on`, `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fuse_uring = {0:?}: expected \"auto\", \"on\" or \"off\"")]
pub struct UnknownFuseUring(pub String);

impl std::str::FromStr for FuseUring {
    type Err = UnknownFuseUring;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(FuseUring::Auto),
            "on" => Ok(FuseUring::On),
            "off" => Ok(FuseUring::Off),
            other => Err(UnknownFuseUring(other.to_string())),
        }
    }
}

impl FuseUring {
    /// The transport and knob policy this setting stands for.
    pub fn transport(self) -> (TransportChoice, UringKnob) {
        match self {
            FuseUring::Auto => (TransportChoice::Auto, UringKnob::Leave),
            FuseUring::On => (TransportChoice::Ring, UringKnob::Enable),
            FuseUring::Off => (TransportChoice::Classic, UringKnob::Leave),
        }
    }

    /// Sets `opts.transport` and `opts.uring_knob` from this setting.
    pub fn apply(self, opts: &mut MountOptions) {
        (opts.transport, opts.uring_knob) = self.transport();
    }
}

/// The transport a session ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ring,
    Classic,
}

/// The host-wide switch for FUSE-over-io_uring (fs/fuse/dev_uring.c
/// `module_param(enable_uring, bool, 0644)`).
pub const ENABLE_URING_KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Ring entries each queue keeps free for new requests: libfuse's default
/// queue depth, enough for the requests one CPU issues at once (most are
/// answered, and their entry re-armed, within microseconds).
pub const DEFAULT_RING_DEPTH: u16 = 8;

/// The most ring entries one queue may grow to while deferred reads hold
/// entries. Each entry owns a payload buffer of `max_write` bytes (1 MiB at
/// the default 256 pages; allocated only when the entry is added, and its
/// pages touched only as far as replies fill them), and the kernel has no
/// way to unregister an entry before the connection ends, so this bounds a
/// queue's memory at 64 MiB while allowing 56 slow reads per CPU at once
/// without stalling that CPU's metadata.
pub const DEFAULT_RING_MAX_ENTRIES: u16 = 64;

/// Mount options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the mount's source.
    pub fsname: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    pub transport: TransportChoice,
    /// Whether the mount may set the host-wide `enable_uring` knob.
    /// Default: [`UringKnob::Leave`].
    pub uring_knob: UringKnob,
    /// Pages per request (1 MiB at 256).
    pub max_pages: u16,
    /// Ring entries each queue keeps free for new requests (registered at
    /// mount; more are added while deferred reads hold entries).
    pub ring_depth: u16,
    /// The cap on ring entries per queue (at least `ring_depth`).
    pub ring_max_entries: u16,
    /// Negotiate passthrough (with `max_stack_depth = 1`, so overlayfs can
    /// stack on the mount).
    pub passthrough: bool,
    /// Pin data-plane threads to their CPU.
    pub pin_threads: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "ringstar".into(),
            subtype: "ringstar".into(),
            transport: TransportChoice::Auto,
            uring_knob: UringKnob::Leave,
            max_pages: 256,
            ring_depth: DEFAULT_RING_DEPTH,
            ring_max_entries: DEFAULT_RING_MAX_ENTRIES,
            passthrough: true,
            pin_threads: true,
        }
    }
}

/// Flags ringstar asks for; the rest are refused. Why each refusal:
/// - POSIX_LOCKS, FLOCK_LOCKS: the kernel's local locking is enough for a read-only fs.
/// - AUTO_INVAL_DATA: triggers GETATTRs before cached reads; image content is immutable.
/// - WRITEBACK_CACHE: read-only, and incompatible with passthrough.
/// - NO_OPENDIR_SUPPORT: we keep OPENDIR to set FOPEN_CACHE_DIR.
/// - SPLICE_*: classic-only gains, not used with the ring.
/// - EXPORT_SUPPORT: NFS export of image layers is not supported.
/// - POSIX_ACL, SECURITY_CTX, CREATE_SUPP_GROUP, HANDLE_KILLPRIV*: nothing is created or written.
/// - HAS_INODE_DAX, MAP_ALIGNMENT, SUBMOUNTS: DAX/virtiofs only.
/// - REQUEST_TIMEOUT: a slow registry must not abort the whole connection.
const WANTED: u64 = f::ASYNC_READ
    | f::BIG_WRITES
    | f::DO_READDIRPLUS
    | f::READDIRPLUS_AUTO
    | f::ASYNC_DIO
    | f::PARALLEL_DIROPS
    | f::MAX_PAGES
    | f::CACHE_SYMLINKS
    | f::EXPLICIT_INVAL_DATA
    | f::INIT_EXT;

/// What INIT settled.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    pub(crate) flags: u64,
    pub(crate) max_write: usize,
}

impl Negotiated {
    pub(crate) fn ring(&self) -> bool {
        self.flags & f::OVER_IO_URING != 0
    }
    pub(crate) fn passthrough(&self) -> bool {
        self.flags & f::PASSTHROUGH != 0
    }
}

fn negotiate(init: &abi::InitIn, opts: &MountOptions) -> io::Result<(InitOut, Negotiated)> {
    if init.major != abi::KERNEL_VERSION {
        return Err(io::Error::other(format!(
            "kernel speaks FUSE {}.{}",
            init.major, init.minor
        )));
    }
    let mut offered = u64::from(init.flags);
    if offered & f::INIT_EXT != 0 {
        offered |= u64::from(init.flags2) << 32;
    }
    let mut want = WANTED;
    if opts.passthrough {
        want |= f::PASSTHROUGH;
    }
    if opts.transport != TransportChoice::Classic {
        want |= f::OVER_IO_URING;
    }
    let flags = want & offered;
    let max_pages = opts.max_pages.max(1);
    let max_write = usize::from(max_pages) * 4096;
    let mut out = InitOut::new_zeroed();
    out.major = abi::KERNEL_VERSION;
    out.minor = init.minor.min(abi::KERNEL_MINOR_VERSION);
    out.max_readahead = init.max_readahead;
    out.flags = flags as u32;
    out.flags2 = (flags >> 32) as u32;
    out.max_background = 64;
    out.congestion_threshold = 48;
    out.max_write = max_write as u32;
    out.time_gran = 1;
    out.max_pages = max_pages;
    if flags & f::PASSTHROUGH != 0 {
        out.max_stack_depth = 1;
    }
    Ok((out, Negotiated { flags, max_write }))
}

/// Writes one reply: header + payload in a single write(2).
pub(crate) fn write_reply(fd: &File, unique: Unique, result: Result<&[u8], Errno>) {
    let (error, payload): (i32, &[u8]) = match result {
        Ok(p) => (0, p),
        Err(e) => (-e.0, &[]),
    };
    let header = abi::OutHeader {
        len: (16 + payload.len()) as u32,
        error,
        unique: unique.0,
    };
    let bufs = [IoSlice::new(header.as_bytes()), IoSlice::new(payload)];
    match (&*fd).write_vectored(&bufs) {
        Ok(_) => {}
        // The request is gone (interrupted or the connection aborted).
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT) || e.raw_os_error() == Some(libc::ENODEV) => {
        }
        Err(e) => tracing::warn!(unique = unique.0, error = %e, "writing a FUSE reply"),
    }
}

/// Deferred replies on the classic transport: written on the channel the
/// request came from.
struct ClassicSink(Arc<File>);

impl ReplySink for ClassicSink {
    fn send(&self, _token: u64, unique: Unique, result: Result<&[u8], Errno>) {
        write_reply(&self.0, unique, result);
    }
}

/// Requests served, by the path they came in on.
#[derive(Debug, Default)]
pub struct Stats {
    /// Through FUSE-over-io_uring entries.
    pub ring: AtomicU64,
    /// Through read(2) on /dev/fuse (INIT, FORGET and INTERRUPT included).
    pub classic: AtomicU64,
    /// Ring entries registered, all queues together: `ring_depth` per
    /// queue at mount, more while deferred reads hold entries.
    pub ring_entries: AtomicU64,
}

/// State every data-plane thread shares.
pub(crate) struct Shared<F: ?Sized> {
    pub(crate) fs: Arc<F>,
    pub(crate) pending: Arc<PendingReplies>,
    pub(crate) negotiated: Negotiated,
    pub(crate) stats: Arc<Stats>,
    pub(crate) stop: Arc<Stop>,
}

/// Tells the ring threads the session is going down. A queue whose every
/// entry is held by a deferred read has nothing in the kernel that the
/// abort could complete, so without this poke its thread would wait in
/// io_uring_enter forever and unmount would never finish.
#[derive(Default)]
pub(crate) struct Stop {
    stopping: AtomicBool,
    wakes: Mutex<Vec<Arc<File>>>,
}

impl Stop {
    /// Registers a ring thread's wake eventfd. The thread must check
    /// [`Stop::is_stopping`] after this and in every loop turn.
    pub(crate) fn register(&self, wake: Arc<File>) {
        lock(&self.wakes).push(wake);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for wake in lock(&self.wakes).iter() {
            if let Err(e) = (&**wake).write_all(&1u64.to_ne_bytes()) {
                tracing::warn!(error = %e, "waking a FUSE ring for shutdown");
            }
        }
    }
}

/// Serves one channel with read(2)/write(2) until the connection ends.
/// Used by the classic per-core threads and by the main-fd reader (which
/// in ring mode sees only FORGET, BATCH_FORGET and INTERRUPT).
pub(crate) fn serve_classic<F: Filesystem + ?Sized>(chan: Arc<File>, shared: &Shared<F>) {
    let bufsize = (shared.negotiated.max_write + 4096).max(8192 + 80);
    let mut buf = vec![0u8; bufsize];
    let mut out = vec![0u8; shared.negotiated.max_write];
    let sink: Arc<dyn ReplySink> = Arc::new(ClassicSink(chan.clone()));
    let mut seed = DeferSeed::new(sink, shared.pending.clone());
    loop {
        let n = match (&*chan).read(&mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => continue,
                Some(libc::ENODEV | libc::ECONNABORTED) => break,
                _ => {
                    tracing::warn!(error = %e, "reading /dev/fuse");
                    break;
                }
            },
        };
        shared.stats.classic.fetch_add(1, Ordering::Relaxed);
        let req = match request::decode_classic(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "malformed FUSE request");
                if let Ok((h, _)) = abi::InHeader::read_from_prefix(&buf[..n]) {
                    write_reply(&chan, Unique(h.unique), Err(Errno::EINVAL));
                }
                continue;
            }
        };
        if let Operation::Interrupt { unique } = req.op {
            shared.pending.interrupt(unique);
            continue;
        }
        seed.unique = req.ctx.unique;
        match dispatch_guarded(&*shared.fs, &req, &mut out, &seed) {
            Outcome::Reply(len) => write_reply(&chan, req.ctx.unique, Ok(&out[..len])),
            Outcome::Error(e) => write_reply(&chan, req.ctx.unique, Err(e)),
            Outcome::NoReply | Outcome::Deferred => {}
        }
    }
}

/// The connection id: the minor number of the mount's device, from
/// mountinfo (stat-ing the mount point could block on a dead daemon).
fn connection_id(mountpoint: &Path) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = mountpoint.to_str()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.get(4) == Some(&target) && line.contains(" - fuse"))
            .then(|| fields.get(2)?.split(':').nth(1)?.parse().ok())
            .flatten()
    })
}

/// Fails every pending and future request of connection `id` at once.
pub fn abort_connection(id: u32) -> io::Result<()> {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(id.to_string()).exists() {
        // fusectl is not always mounted.
        let _ = sys::mount("fusectl", dir, "fusectl", 0, "");
    }
    std::fs::write(dir.join(id.to_string()).join("abort"), b"1")
}

/// Whether to ask for FUSE-over-io_uring, reading (and, with
/// [`UringKnob::Enable`], setting) the module parameter at `knob`. Logs
/// what it found and did. Errors only when the ring is required and
/// cannot be had.
fn want_ring(choice: TransportChoice, policy: UringKnob, knob: &Path) -> io::Result<bool> {
    if choice == TransportChoice::Classic {
        tracing::info!("FUSE transport: classic, as asked");
        return Ok(false);
    }
    let available = match std::fs::read_to_string(knob) {
        Ok(s) if s.trim() == "Y" => {
            tracing::info!(knob = %knob.display(), "FUSE-over-io_uring is enabled on this host");
            true
        }
        Ok(s) => match policy {
            UringKnob::Leave => {
                tracing::info!(
                    knob = %knob.display(),
                    value = s.trim(),
                    "FUSE-over-io_uring is off on this host; left as it is (uring knob: leave)"
                );
                false
            }
            UringKnob::Enable => match std::fs::write(knob, b"Y") {
                Ok(()) => {
                    tracing::info!(
                        knob = %knob.display(),
                        was = s.trim(),
                        "enabled FUSE-over-io_uring host-wide: wrote Y (uring knob: enable)"
                    );
                    true
                }
                Err(e) => {
                    tracing::info!(knob = %knob.display(), error = %e, "cannot enable FUSE-over-io_uring");
                    false
                }
            },
        },
        Err(e) => {
            tracing::info!(knob = %knob.display(), error = %e, "this kernel has no FUSE-over-io_uring");
            false
        }
    };
    if !available && choice == TransportChoice::Ring {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "FUSE-over-io_uring is required but not available ({} is not Y{})",
                knob.display(),
                if policy == UringKnob::Leave {
                    " and this mount may not set it"
                } else {
                    ""
                }
            ),
        ));
    }
    if !available {
        tracing::info!("FUSE transport: classic (the ring is not available)");
    }
    Ok(available)
}

/// Detaches whatever is mounted at `target` (`MNT_DETACH`): what a daemon
/// does with a mount its dead predecessor left (a FUSE mount whose server
/// is gone answers ENOTCONN to everything).
pub fn detach_mount(target: &Path) -> io::Result<()> {
    sys::umount(target, libc::MNT_DETACH)
}

/// A mounted filesystem and the threads serving it. Dropping it unmounts.
pub struct Session {
    mountpoint: PathBuf,
    /// The main channel: INIT, FORGET, INTERRUPT, notifications.
    main: Arc<File>,
    conn_id: Option<u32>,
    transport: Transport,
    threads: Vec<JoinHandle<()>>,
    pending: Arc<PendingReplies>,
    stats: Arc<Stats>,
    stop: Arc<Stop>,
    mounted: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("mountpoint", &self.mountpoint)
            .field("transport", &self.transport)
            .field("conn_id", &self.conn_id)
            .finish()
    }
}

impl Session {
    /// Mounts `fs` at `mountpoint` and starts serving it.
    pub fn mount<F: Filesystem>(
        fs: Arc<F>,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> io::Result<Session> {
        let want_ring = want_ring(
            opts.transport,
            opts.uring_knob,
            Path::new(ENABLE_URING_KNOB),
        )?;
        let mut opts = opts.clone();
        if !want_ring {
            opts.transport = TransportChoice::Classic;
        }
        let fd = sys::open_dev_fuse()?;
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
            fd.as_raw_fd()
        );
        sys::mount(
            &opts.fsname,
            mountpoint,
            &format!("fuse.{}", opts.subtype),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RDONLY,
            &data,
        )?;
        let conn_id = connection_id(mountpoint);
        let main = Arc::new(File::from(fd));
        let negotiated = match Self::init(&main, &opts) {
            Ok(n) => n,
            Err(e) => {
                let _ = sys::umount(mountpoint, libc::MNT_DETACH);
                return Err(e);
            }
        };
        let info = ConnInfo {
            passthrough: negotiated
                .passthrough()
                .then(|| Passthrough { fuse: main.clone() }),
            max_read: negotiated.max_write,
        };
        // A panic here would leave a mount nobody serves: unmount instead.
        if let Err(payload) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fs.init(&info)))
        {
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)")
                .to_string();
            tracing::error!(op = "INIT", panic = %msg, "the filesystem's init panicked; unmounting");
            if let Some(id) = conn_id {
                let _ = abort_connection(id);
            }
            let _ = sys::umount(mountpoint, libc::MNT_DETACH);
            return Err(io::Error::other(format!(
                "the filesystem's init panicked: {msg}"
            )));
        }
        let pending = Arc::new(PendingReplies::default());
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(Stop::default());
        let shared = Arc::new(Shared {
            fs,
            pending: pending.clone(),
            negotiated,
            stats: stats.clone(),
            stop: stop.clone(),
        });
        let transport = if negotiated.ring() {
            Transport::Ring
        } else {
            Transport::Classic
        };
        let mut session = Session {
            mountpoint: mountpoint.to_path_buf(),
            main: main.clone(),
            conn_id,
            transport,
            threads: Vec::new(),
            pending,
            stats,
            stop,
            mounted: true,
        };
        let cpus = sys::possible_cpus();
        tracing::info!(
            mountpoint = %mountpoint.display(),
            transport = ?transport,
            queues = cpus,
            passthrough = negotiated.passthrough(),
            max_write = negotiated.max_write,
            "FUSE session up"
        );
        // The main channel: INTERRUPT and FORGETs always, everything in
        // classic mode.
        let (m, s) = (main.clone(), shared.clone());
        session.spawn("fuse-main", move || serve_classic(m, &s))?;
        for cpu in 0..cpus {
            let s = shared.clone();
            let pin = opts.pin_threads;
            match transport {
                Transport::Classic => {
                    let chan = Arc::new(File::from(sys::clone_channel(main.as_fd())?));
                    session.spawn(&format!("fuse-core{cpu}"), move || {
                        if pin && let Err(e) = sys::pin_to_cpu(cpu) {
                            tracing::debug!(cpu, error = %e, "pinning");
                        }
                        serve_classic(chan, &s)
                    })?;
                }
                Transport::Ring => {
                    let fd = session.main.clone();
                    let depth = opts.ring_depth.max(1);
                    let max = opts.ring_max_entries.max(depth);
                    session.spawn(&format!("fuse-ring{cpu}"), move || {
                        if pin && let Err(e) = sys::pin_to_cpu(cpu) {
                            tracing::debug!(cpu, error = %e, "pinning");
                        }
                        if let Err(e) = crate::uring::serve_queue(fd, cpu as u16, depth, max, &s) {
                            tracing::error!(cpu, error = %e, "FUSE ring queue stopped");
                        }
                    })?;
                }
            }
        }
        Ok(session)
    }

    fn init(main: &File, opts: &MountOptions) -> io::Result<Negotiated> {
        let mut buf = vec![0u8; 8192 + 4096];
        loop {
            let n = match (&*main).read(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
                Err(e) => return Err(e),
            };
            let req = request::decode_classic(&buf[..n]).map_err(io::Error::other)?;
            let Operation::Init(init) = req.op else {
                write_reply(main, req.ctx.unique, Err(Errno::EIO));
                continue;
            };
            let (out, negotiated) = negotiate(&init, opts)?;
            write_reply(main, req.ctx.unique, Ok(out.as_bytes()));
            return Ok(negotiated);
        }
    }

    fn spawn(&mut self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.threads.push(
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(f)?,
        );
        Ok(())
    }

    /// The transport serving this session.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The connection's `/dev/fuse` fd (for notifications and, later, for
    /// handing the session to another process).
    pub fn fuse_fd(&self) -> BorrowedFd<'_> {
        self.main.as_fd()
    }

    /// The FUSE connection id (`/sys/fs/fuse/connections/<id>`).
    pub fn connection_id(&self) -> Option<u32> {
        self.conn_id
    }

    /// Requests served so far, by path.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Deferred reads still waiting for an answer.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Tells the kernel to drop its cached attributes and data of `ino`.
    pub fn invalidate_inode(&self, ino: crate::types::Ino) -> io::Result<()> {
        let body = abi::NotifyInvalInodeOut {
            ino: ino.0,
            off: 0,
            len: 0,
        };
        self.notify(abi::notify::INVAL_INODE, &[body.as_bytes()])
    }

    /// Tells the kernel to forget the name `name` in directory `parent`.
    pub fn invalidate_entry(
        &self,
        parent: crate::types::Ino,
        name: &std::ffi::OsStr,
    ) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let body = abi::NotifyInvalEntryOut {
            parent: parent.0,
            namelen: name.len() as u32,
            flags: 0,
        };
        self.notify(
            abi::notify::INVAL_ENTRY,
            &[body.as_bytes(), name.as_bytes(), b"\0"],
        )
    }

    fn notify(&self, code: i32, parts: &[&[u8]]) -> io::Result<()> {
        let len: usize = 16 + parts.iter().map(|p| p.len()).sum::<usize>();
        let header = abi::OutHeader {
            len: len as u32,
            error: code,
            unique: 0,
        };
        let mut bufs = vec![IoSlice::new(header.as_bytes())];
        bufs.extend(parts.iter().map(|p| IoSlice::new(p)));
        match (&*self.main).write_vectored(&bufs) {
            // Not cached: nothing to invalidate.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Unmounts (aborting the connection so nothing waits on it) and joins
    /// every thread.
    pub fn unmount(mut self) -> io::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> io::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        if let Some(id) = self.conn_id
            && let Err(e) = abort_connection(id)
        {
            tracing::debug!(id, error = %e, "aborting the FUSE connection");
        }
        let r = sys::umount(&self.mountpoint, libc::MNT_DETACH);
        self.stop.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "FUSE session down");
        r
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "unmounting");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the module parameter: a file holding `value`, or no
    /// file at all (a kernel without FUSE-over-io_uring).
    fn knob(dir: &Path, value: Option<&str>) -> PathBuf {
        let p = dir.join("enable_uring");
        let _ = std::fs::remove_file(&p);
        if let Some(v) = value {
            std::fs::write(&p, format!("{v}\n")).unwrap();
        }
        p
    }

    fn value(p: &Path) -> Option<String> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    #[test]
    fn the_knob_is_written_only_when_the_caller_allows_it() {
        use TransportChoice::*;
        use UringKnob::*;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // Leave: never written; the ring only if already on.
        let p = knob(d, Some("N"));
        assert!(!want_ring(Auto, Leave, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("N"));
        let e = want_ring(Ring, Leave, &p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert_eq!(value(&p).as_deref(), Some("N"));
        let p = knob(d, Some("Y"));
        assert!(want_ring(Auto, Leave, &p).unwrap());
        assert!(want_ring(Ring, Leave, &p).unwrap());

        // Enable: written when off.
        let p = knob(d, Some("N"));
        assert!(want_ring(Auto, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("Y"));
        let p = knob(d, Some("N"));
        assert!(want_ring(Ring, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("Y"));

        // Classic never reads or writes it.
        let p = knob(d, Some("N"));
        assert!(!want_ring(Classic, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("N"));

        // No knob (no FUSE-over-io_uring in this kernel): classic, or an
        // error when the ring is required; nothing is created.
        let p = knob(d, None);
        assert!(!want_ring(Auto, Enable, &p).unwrap());
        assert!(want_ring(Ring, Enable, &p).is_err());
        assert_eq!(value(&p), None);
    }

    #[test]
    fn fuse_uring_settings() {
        use TransportChoice::*;
        use UringKnob::*;
        let parse = |s: &str| s.parse::<FuseUring>();
        assert_eq!(parse("auto").unwrap().transport(), (Auto, Leave));
        assert_eq!(parse("on").unwrap().transport(), (Ring, Enable));
        assert_eq!(parse("off").unwrap().transport(), (Classic, Leave));
        assert_eq!(parse("yes"), Err(UnknownFuseUring("yes".into())));
        let mut opts = MountOptions::default();
        assert_eq!((opts.transport, opts.uring_knob), (Auto, Leave));
        FuseUring::On.apply(&mut opts);
        assert_eq!((opts.transport, opts.uring_knob), (Ring, Enable));
    }
}
