//! A mounted FUSE connection, [`Session`]: the mount in named steps
//! (transport, mount(2), INIT, the filesystem's init, the serving
//! threads), notifications, and teardown.
//!
//! The top of the crate's serving side: it depends on `options`, `knob`,
//! `init`, `control`, `serving` and both transports (`classic`, `uring`);
//! none of them depends on it. The public settings are re-exported here
//! (and at the crate root).

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zerocopy::IntoBytes;

use crate::abi;
use crate::classic::{serve_classic, write_reply};
use crate::control::connection_id;
pub use crate::control::{abort_connection, connection_id as mounted_connection_id, detach_mount};
use crate::deferred::PendingReplies;
use crate::fs::{ConnInfo, Filesystem};
use crate::init::{Negotiated, negotiate};
pub use crate::knob::ENABLE_URING_KNOB;
use crate::knob::want_ring;
pub use crate::options::{
    DEFAULT_RING_DEPTH, DEFAULT_RING_MAX_ENTRIES, FuseUring, MountOptions, Transport,
    TransportChoice, UnknownFuseUring, UringKnob,
};
use crate::passthrough::Passthrough;
use crate::request::{self, Operation};
pub use crate::serving::Stats;
use crate::serving::{Shared, Stop};
use crate::sys;
use crate::takeover::{Handover, TAKEOVER_STATE_VERSION, TakeoverError, TakeoverState};
use crate::types::Errno;

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
    /// What INIT settled (or what the state handed over says it settled).
    negotiated: Negotiated,
    /// Takeover sessions: the cloned channels, kept so every one of them
    /// can go to a keeper (a clone only this process held would die with
    /// it, and its requests with ECONNABORTED).
    clones: Vec<Arc<File>>,
    takeover: bool,
    /// Set when the connection is left to another process: the backing
    /// ids registered on it stay open for that process (see
    /// [`Passthrough`]).
    backings_kept: Arc<AtomicBool>,
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

/// A connection past INIT: what [`Session::serve`] starts from.
struct Connection {
    main: Arc<File>,
    mountpoint: PathBuf,
    conn_id: Option<u32>,
    negotiated: Negotiated,
}

/// Opens `/dev/fuse` and mounts `fuse.<subtype>` on it at `mountpoint`.
/// Returns the main channel and the connection id.
fn mount_fuse(mountpoint: &Path, opts: &MountOptions) -> io::Result<(Arc<File>, Option<u32>)> {
    let fd = sys::open_dev_fuse()?;
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fd.as_raw_fd()
    );
    sys::mount(
        &opts.fsname,
        mountpoint,
        &format!("fuse.{}", opts.subtype),
        libc::MS_NOSUID | libc::MS_NODEV | if opts.read_only { libc::MS_RDONLY } else { 0 },
        &data,
    )?;
    let conn_id = connection_id(mountpoint);
    Ok((Arc::new(File::from(fd)), conn_id))
}

/// Reads INIT on the main channel and answers it.
fn read_init(main: &File, opts: &MountOptions) -> io::Result<Negotiated> {
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

/// Runs the filesystem's `init`. A panic there would leave a mount nobody
/// serves: the connection is aborted and unmounted instead, and the panic
/// becomes an error.
fn init_filesystem<F: Filesystem>(
    fs: &F,
    info: &ConnInfo,
    mountpoint: &Path,
    conn_id: Option<u32>,
) -> io::Result<()> {
    let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fs.init(info)))
    else {
        return Ok(());
    };
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
    Err(io::Error::other(format!(
        "the filesystem's init panicked: {msg}"
    )))
}

impl Session {
    /// Mounts `fs` at `mountpoint` and starts serving it.
    pub fn mount<F: Filesystem>(
        fs: Arc<F>,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> io::Result<Session> {
        let mut opts = opts.clone();
        if opts.takeover {
            if opts.transport == TransportChoice::Ring {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    TakeoverError::RingRequired,
                ));
            }
            opts.transport = TransportChoice::Classic;
        }
        if !want_ring(
            opts.transport,
            opts.uring_knob,
            Path::new(ENABLE_URING_KNOB),
        )? {
            opts.transport = TransportChoice::Classic;
        }
        let (main, conn_id) = mount_fuse(mountpoint, &opts)?;
        let negotiated = match read_init(&main, &opts) {
            Ok(n) => n,
            Err(e) => {
                let _ = sys::umount(mountpoint, libc::MNT_DETACH);
                return Err(e);
            }
        };
        let conn = Connection {
            main,
            mountpoint: mountpoint.to_path_buf(),
            conn_id,
            negotiated,
        };
        Session::serve(fs, conn, &opts, None)
    }

    /// Serves a connection whose INIT is settled: the filesystem's init,
    /// then the threads. `adopted`: the cloned channels of a connection
    /// taken over (else new clones are made, one per possible CPU).
    fn serve<F: Filesystem>(
        fs: Arc<F>,
        conn: Connection,
        opts: &MountOptions,
        adopted: Option<Vec<Arc<File>>>,
    ) -> io::Result<Session> {
        let Connection {
            main,
            mountpoint,
            conn_id,
            negotiated,
        } = conn;
        let backings_kept = Arc::new(AtomicBool::new(false));
        let info = ConnInfo {
            passthrough: negotiated.passthrough().then(|| Passthrough {
                fuse: main.clone(),
                kept: backings_kept.clone(),
            }),
            max_read: negotiated.max_write,
        };
        init_filesystem(&*fs, &info, &mountpoint, conn_id)?;
        // From here on, dropping the session (on an error below too)
        // unmounts and joins the threads started so far.
        let mut session = Session {
            mountpoint,
            main,
            conn_id,
            transport: if negotiated.ring() {
                Transport::Ring
            } else {
                Transport::Classic
            },
            threads: Vec::new(),
            pending: Arc::new(PendingReplies::default()),
            stats: Arc::new(Stats::default()),
            stop: Arc::new(Stop::default()),
            mounted: true,
            negotiated,
            clones: Vec::new(),
            takeover: opts.takeover,
            backings_kept,
        };
        let wake = if opts.takeover {
            sys::set_nonblocking(session.main.as_fd())?;
            let wake = Arc::new(File::from(sys::eventfd()?));
            session.stop.register(wake.clone());
            Some(wake)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            fs,
            pending: session.pending.clone(),
            negotiated,
            stats: session.stats.clone(),
            stop: session.stop.clone(),
            wake,
        });
        session.start_threads(&shared, opts, adopted)?;
        Ok(session)
    }

    /// Starts the main-channel reader and one thread per possible CPU.
    fn start_threads<F: Filesystem>(
        &mut self,
        shared: &Arc<Shared<F>>,
        opts: &MountOptions,
        adopted: Option<Vec<Arc<File>>>,
    ) -> io::Result<()> {
        let cpus = sys::possible_cpus();
        tracing::info!(
            mountpoint = %self.mountpoint.display(),
            transport = ?self.transport,
            queues = cpus,
            passthrough = shared.negotiated.passthrough(),
            max_write = shared.negotiated.max_write,
            "FUSE session up"
        );
        // The main channel: INTERRUPT and FORGETs always, everything in
        // classic mode.
        let (m, s) = (self.main.clone(), shared.clone());
        self.spawn("fuse-main", move || serve_classic(m, &s))?;
        if let Some(chans) = adopted {
            for (i, chan) in chans.into_iter().enumerate() {
                sys::set_nonblocking(chan.as_fd())?;
                self.clones.push(chan.clone());
                self.spawn_classic_core(i, i % cpus.max(1), chan, shared, opts)?;
            }
            return Ok(());
        }
        match self.transport {
            Transport::Ring => (0..cpus).try_for_each(|c| self.start_ring_queue(c, shared, opts)),
            Transport::Classic => (0..cpus.max(opts.classic_threads))
                .try_for_each(|i| self.start_classic_core((i, i % cpus.max(1)), shared, opts)),
        }
    }

    /// A classic core: its own cloned channel, read and written in turn.
    fn start_classic_core<F: Filesystem>(
        &mut self,
        (index, cpu): (usize, usize),
        shared: &Arc<Shared<F>>,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let chan = Arc::new(File::from(sys::clone_channel(self.main.as_fd())?));
        if self.takeover {
            sys::set_nonblocking(chan.as_fd())?;
            self.clones.push(chan.clone());
        }
        self.spawn_classic_core(index, cpu, chan, shared, opts)
    }

    fn spawn_classic_core<F: Filesystem>(
        &mut self,
        index: usize,
        cpu: usize,
        chan: Arc<File>,
        shared: &Arc<Shared<F>>,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (s, pin) = (shared.clone(), opts.pin_threads);
        self.spawn(&format!("fuse-core{index}"), move || {
            pin_to(cpu, pin);
            serve_classic(chan, &s)
        })
    }

    /// A ring core: the kernel queue `qid = cpu`.
    fn start_ring_queue<F: Filesystem>(
        &mut self,
        cpu: usize,
        shared: &Arc<Shared<F>>,
        opts: &MountOptions,
    ) -> io::Result<()> {
        let (fd, s, pin) = (self.main.clone(), shared.clone(), opts.pin_threads);
        let depth = opts.ring_depth.max(1);
        let max = opts.ring_max_entries.max(depth);
        self.spawn(&format!("fuse-ring{cpu}"), move || {
            pin_to(cpu, pin);
            if let Err(e) = crate::uring::serve_queue(fd, cpu as u16, depth, max, &s) {
                tracing::error!(cpu, error = %e, "FUSE ring queue stopped");
            }
        })
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

/// Takeover: handing a live session to another process, and serving one
/// handed over (docs/fusedev.md, "Takeover").
impl Session {
    /// Serves a connection another process mounted and negotiated: `fds`
    /// are its channels (main first, then the clones, as
    /// [`Session::takeover_fds`] gave them), `state` what INIT settled.
    /// Classic transport, no INIT; once the threads run it writes
    /// `FUSE_NOTIFY_RESEND`, so requests the previous process read but
    /// never answered come again. `opts` gives only `pin_threads`.
    pub fn resume<F: Filesystem>(
        fs: Arc<F>,
        fds: Vec<OwnedFd>,
        state: &TakeoverState,
        opts: &MountOptions,
    ) -> Result<Session, TakeoverError> {
        if state.version != TAKEOVER_STATE_VERSION {
            return Err(TakeoverError::Version {
                found: state.version,
            });
        }
        let negotiated = state.negotiated();
        if negotiated.ring() {
            return Err(TakeoverError::Ring);
        }
        if fds.len() != state.channels || fds.is_empty() {
            return Err(TakeoverError::Channels {
                expected: state.channels,
                got: fds.len(),
            });
        }
        let mut chans = fds.into_iter().map(|fd| Arc::new(File::from(fd)));
        let main = chans.next().ok_or(TakeoverError::Channels {
            expected: state.channels,
            got: 0,
        })?;
        let opts = MountOptions {
            takeover: true,
            transport: TransportChoice::Classic,
            ..opts.clone()
        };
        let conn = Connection {
            main,
            conn_id: connection_id(&state.mountpoint).or(state.connection_id),
            mountpoint: state.mountpoint.clone(),
            negotiated,
        };
        let session = Session::serve(fs, conn, &opts, Some(chans.collect()))?;
        let resent = crate::takeover::notify_resend(session.main.as_fd())?;
        if !resent {
            tracing::warn!(
                "this kernel has no FUSE_NOTIFY_RESEND (before 6.9): requests the previous process read but did not answer wait until their callers are killed"
            );
        }
        tracing::info!(mountpoint = %session.mountpoint.display(), channels = state.channels, resent, "FUSE session taken over");
        Ok(session)
    }

    /// What a new process needs besides the fds to serve this connection.
    pub fn takeover_state(&self) -> Result<TakeoverState, TakeoverError> {
        if !self.takeover {
            return Err(TakeoverError::NotEnabled);
        }
        Ok(TakeoverState::new(
            &self.negotiated,
            self.mountpoint.clone(),
            self.conn_id,
            1 + self.clones.len(),
        ))
    }

    /// Every channel of the connection, main first: all of them must go to
    /// the keeper, since a request read on a clone that dies with this
    /// process fails with ECONNABORTED instead of being resent.
    pub fn takeover_fds(&self) -> Result<Vec<BorrowedFd<'_>>, TakeoverError> {
        if !self.takeover {
            return Err(TakeoverError::NotEnabled);
        }
        let clones = self.clones.iter().map(|c| c.as_fd());
        Ok(std::iter::once(self.main.as_fd()).chain(clones).collect())
    }

    fn stop_threads(&mut self) {
        self.stop.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops serving at once and leaves the mount: deferred reads are
    /// abandoned (the next process gets them through RESEND).
    fn leave(&mut self) {
        self.stop_threads();
        self.backings_kept.store(true, Ordering::Release);
        let abandoned = self.pending.abandon_all();
        self.mounted = false;
        tracing::info!(mountpoint = %self.mountpoint.display(), abandoned, "FUSE session left mounted for takeover");
    }

    /// Stops serving without unmounting or aborting: the threads stop
    /// reading and finish the request in hand, deferred reads get up to
    /// `grace` to be answered, the rest are abandoned (unanswered; the
    /// next process gets them again through RESEND). Returns the fds and
    /// the state to hand on.
    pub fn handover(mut self, grace: Duration) -> Result<Handover, TakeoverError> {
        let state = self.takeover_state()?;
        let fds = self
            .takeover_fds()?
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        self.stop_threads();
        self.backings_kept.store(true, Ordering::Release);
        // A poll, not a wait on a condition: deferred answers come from the
        // filesystem's own threads, and this runs once per process life.
        let deadline = Instant::now() + grace;
        while self.pending.len() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let abandoned = self.pending.abandon_all();
        self.mounted = false;
        tracing::info!(mountpoint = %self.mountpoint.display(), abandoned, "FUSE session handed over (still mounted)");
        Ok(Handover {
            fds,
            state,
            abandoned,
        })
    }
}

impl Drop for Session {
    /// Unmounts — except a takeover session, which is left mounted for
    /// whoever holds its fds (a keeper) to hand to the next process: a
    /// panic unwinding the owner must leave it as a kill -9 would. Only
    /// [`Session::unmount`] unmounts one.
    fn drop(&mut self) {
        if self.takeover && self.mounted {
            self.leave();
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "unmounting");
        }
    }
}

/// Pins the calling thread to `cpu` when `pin` (a failure is only logged:
/// an unpinned core still serves).
fn pin_to(cpu: usize, pin: bool) {
    if pin && let Err(e) = sys::pin_to_cpu(cpu) {
        tracing::debug!(cpu, error = %e, "pinning");
    }
}
