//! A mounted FUSE connection: mount, INIT, the data-plane threads, and
//! teardown.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{self, InitOut, init_flags as f};
use crate::fs::{ConnInfo, DeferSeed, Filesystem, PendingReplies, ReplySink};
use crate::passthrough::Passthrough;
use crate::reply::{Outcome, dispatch};
use crate::request::{self, Operation};
use crate::sys;
use crate::types::{Errno, Unique};

/// Which transport serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// FUSE-over-io_uring when the kernel offers it, classic otherwise.
    Auto,
    /// FUSE-over-io_uring or fail.
    Ring,
    /// read(2)/write(2) on cloned fds.
    Classic,
}

/// The transport a session ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ring,
    Classic,
}

/// Mount options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the mount's source.
    pub fsname: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    pub transport: TransportChoice,
    /// Pages per request (1 MiB at 256).
    pub max_pages: u16,
    /// Ring entries per queue.
    pub ring_depth: u16,
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
            max_pages: 256,
            ring_depth: 8,
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
}

/// State every data-plane thread shares.
pub(crate) struct Shared<F: ?Sized> {
    pub(crate) fs: Arc<F>,
    pub(crate) pending: Arc<PendingReplies>,
    pub(crate) negotiated: Negotiated,
    pub(crate) stats: Arc<Stats>,
}

/// Serves one channel with read(2)/write(2) until the connection ends.
/// Used by the classic per-core threads and by the main-fd reader (which
/// in ring mode sees only FORGET, BATCH_FORGET and INTERRUPT).
pub(crate) fn serve_classic<F: Filesystem + ?Sized>(chan: Arc<File>, shared: &Shared<F>) {
    let bufsize = (shared.negotiated.max_write + 4096).max(8192 + 80);
    let mut buf = vec![0u8; bufsize];
    let mut out = vec![0u8; shared.negotiated.max_write];
    let sink: Arc<dyn ReplySink> = Arc::new(ClassicSink(chan.clone()));
    let mut seed = DeferSeed {
        sink,
        token: 0,
        unique: Unique(0),
        pending: shared.pending.clone(),
    };
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
        match dispatch(&*shared.fs, &req, &mut out, &seed) {
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

fn enable_uring() -> bool {
    const KNOB: &str = "/sys/module/fuse/parameters/enable_uring";
    match std::fs::read_to_string(KNOB) {
        Ok(s) if s.trim() == "Y" => true,
        Ok(_) => match std::fs::write(KNOB, b"Y") {
            Ok(()) => {
                tracing::info!("enabled FUSE-over-io_uring ({KNOB} = Y)");
                true
            }
            Err(e) => {
                tracing::info!(error = %e, "cannot enable FUSE-over-io_uring");
                false
            }
        },
        Err(_) => false,
    }
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
        let want_ring = opts.transport != TransportChoice::Classic && enable_uring();
        if opts.transport == TransportChoice::Ring && !want_ring {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "FUSE-over-io_uring is not available",
            ));
        }
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
        fs.init(&ConnInfo {
            passthrough: negotiated
                .passthrough()
                .then(|| Passthrough { fuse: main.clone() }),
            max_read: negotiated.max_write,
        });
        let pending = Arc::new(PendingReplies::default());
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(Shared {
            fs,
            pending: pending.clone(),
            negotiated,
            stats: stats.clone(),
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
                    let depth = opts.ring_depth;
                    session.spawn(&format!("fuse-ring{cpu}"), move || {
                        if pin && let Err(e) = sys::pin_to_cpu(cpu) {
                            tracing::debug!(cpu, error = %e, "pinning");
                        }
                        if let Err(e) = crate::uring::serve_queue(fd, cpu as u16, depth, &s) {
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
