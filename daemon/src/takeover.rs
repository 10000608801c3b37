//! Takeover (#16): the layer filesystem's FUSE connection outlives the
//! daemon. Its `/dev/fuse` fds live in a holder outside the daemon — the
//! fd keeper this module starts (`ringstar-snapshotter --run-fdkeeper`,
//! no image logic, in its own process group), or systemd's fd store when
//! systemd runs the daemon ([`systemd`]) — and the next daemon process
//! takes the connection over instead of mounting (docs/snapshotter.md,
//! "Restarts").
//!
//! Under `<root>/takeover/`: the keeper's socket and log, and the layer
//! filesystem's journal (which slot each layer has, which io mode each
//! open inode is in). `<root>/daemon.lock` keeps two daemons off one root.

pub mod systemd;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringstar_fusedev::{Session, TakeoverState};
use ringstar_keeper::{Keeper, KeeperError};

/// The keeper's name for the layer filesystem's connection.
const ENTRY: &str = "ringstar-layers";

/// Why the daemon cannot take over or be taken over.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverStartError {
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("another ringstar-snapshotter (pid {pid}) serves {}; stop it, or start with --takeover to replace it", root.display())]
    Running { pid: String, root: PathBuf },
    #[error("the ringstar-snapshotter being replaced (pid {pid}) did not exit within {waited:?}")]
    DidNotExit { pid: String, waited: Duration },
    #[error("the fd keeper at {}", socket.display())]
    Keeper {
        socket: PathBuf,
        #[source]
        cause: KeeperError,
    },
    #[error("systemd's fd store")]
    Systemd(#[from] systemd::FdStoreError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TakeoverStartError {
    let path = path.to_path_buf();
    move |cause| TakeoverStartError::Io {
        action,
        path,
        cause,
    }
}

/// The daemon's exclusive hold on its root: an `flock` on
/// `<root>/daemon.lock` (holding the pid), released by the kernel however
/// the process ends.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

/// Takes the root's lock. With `replace`, a daemon holding it is sent
/// SIGTERM (it hands the mount over and exits) and the lock is awaited up
/// to `wait`; without, a held lock is an error.
pub fn lock_root(
    root: &Path,
    replace: bool,
    wait: Duration,
) -> Result<RootLock, TakeoverStartError> {
    use rustix::fs::{FlockOperation, flock};
    let path = root.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io("opening", &path))?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        let pid = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .trim()
            .to_string();
        if !replace {
            return Err(TakeoverStartError::Running {
                pid,
                root: root.to_path_buf(),
            });
        }
        tracing::info!(pid = %pid, "replacing the running ringstar-snapshotter (SIGTERM: it hands the mount over)");
        if let Ok(p) = pid.parse::<i32>()
            && let Some(p) = rustix::process::Pid::from_raw(p)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + wait;
        while flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            if Instant::now() >= deadline {
                return Err(TakeoverStartError::DidNotExit { pid, waited: wait });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    file.set_len(0).map_err(io("writing", &path))?;
    std::io::Write::write_all(&mut &file, format!("{}\n", std::process::id()).as_bytes())
        .map_err(io("writing", &path))?;
    Ok(RootLock { _file: file })
}

/// A connection a previous daemon process left: its fds (main first)
/// and what INIT settled.
#[derive(Debug)]
pub struct Prior {
    pub fds: Vec<OwnedFd>,
    pub state: TakeoverState,
}

/// Where the fds are held across the daemon's death.
#[derive(Debug)]
enum Holder {
    /// `wait`: how long the keeper holds the mount for a successor once
    /// this process is gone (its lease).
    Keeper {
        keeper: Keeper,
        socket: PathBuf,
        wait: Duration,
    },
    Systemd(systemd::FdStore),
}

/// The daemon's side of takeover.
#[derive(Debug)]
pub struct Takeover {
    holder: Holder,
    dir: PathBuf,
}

impl Takeover {
    /// Connects to the fd holder of `root`: systemd's fd store when
    /// systemd runs the daemon with one, else the keeper on
    /// `<root>/takeover/fdkeeper.sock`, started when none answers, which
    /// holds the mount for `wait` after this process is gone.
    pub fn connect(root: &Path, wait: Duration) -> Result<Takeover, TakeoverStartError> {
        let dir = root.join("takeover");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        if let Some(store) = systemd::FdStore::from_env()? {
            tracing::info!("takeover through systemd's fd store");
            return Ok(Takeover {
                holder: Holder::Systemd(store),
                dir,
            });
        }
        let socket = dir.join("fdkeeper.sock");
        let keeper = match Keeper::connect(&socket) {
            Ok(k) => k,
            Err(_) => {
                start_keeper(&socket, &dir.join("fdkeeper.log"))?;
                Keeper::connect_wait(&socket, Duration::from_secs(10)).map_err(|cause| {
                    TakeoverStartError::Keeper {
                        socket: socket.clone(),
                        cause,
                    }
                })?
            }
        };
        tracing::info!(socket = %socket.display(), "takeover through the fd keeper");
        Ok(Takeover {
            holder: Holder::Keeper {
                keeper,
                socket,
                wait,
            },
            dir,
        })
    }

    /// The layer filesystem's journal.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal")
    }

    /// The connection a previous process left mounted at `mountpoint`, if
    /// the holder has one and it is still that mount. One that is not
    /// (unmounted by hand, a reboot's leftovers) is forgotten.
    pub fn prior(&mut self, mountpoint: &Path) -> Option<Prior> {
        let fetched = match &mut self.holder {
            Holder::Keeper { keeper, socket, .. } => match keeper.fetch(ENTRY) {
                Ok(d) => d.map(|d| (d.fds, d.state)),
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %e, "asking the fd keeper");
                    None
                }
            },
            Holder::Systemd(store) => store.take(),
        };
        let (fds, bytes) = fetched?;
        let state = match TakeoverState::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the held FUSE connection's state is unusable; mounting anew");
                self.forget();
                return None;
            }
        };
        let mounted = ringstar_fusedev::mounted_connection_id(mountpoint);
        if state.mountpoint != mountpoint
            || mounted.is_none()
            || (state.connection_id.is_some() && mounted != state.connection_id)
        {
            tracing::info!(mountpoint = %mountpoint.display(), ?mounted, held = ?state.connection_id, "the held FUSE connection is no longer mounted here; mounting anew");
            self.forget();
            return None;
        }
        Some(Prior { fds, state })
    }

    /// Hands `session`'s fds and state to the holder (replacing what it
    /// held).
    pub fn deposit(&mut self, session: &Session) -> Result<(), TakeoverStartError> {
        let state = session
            .takeover_state()
            .map(|s| s.to_bytes())
            .map_err(|e| TakeoverStartError::Io {
                action: "reading the takeover state of",
                path: self.dir.clone(),
                cause: std::io::Error::other(e),
            })?;
        let fds = session.takeover_fds().map_err(|e| TakeoverStartError::Io {
            action: "reading the fds of",
            path: self.dir.clone(),
            cause: std::io::Error::other(e),
        })?;
        match &mut self.holder {
            Holder::Keeper {
                keeper,
                socket,
                wait,
            } => {
                let err = |cause| TakeoverStartError::Keeper {
                    socket: socket.clone(),
                    cause,
                };
                keeper.replace(ENTRY, &fds, &state).map_err(err)?;
                // Without a successor within `wait` the keeper lets the
                // mount go, and what waits on it gets an error instead of
                // waiting forever (a keeper older than LEASE holds on).
                if let Err(e) = keeper.lease(ENTRY, *wait) {
                    tracing::warn!(socket = %socket.display(), error = %e, "the fd keeper takes no lease: it holds the mount until told");
                }
                Ok(())
            }
            Holder::Systemd(store) => Ok(store.store(&fds, &state)?),
        }
    }

    /// The mount is gone for good (SIGINT): the holder lets the fds go,
    /// and a keeper holding nothing else exits.
    pub fn forget(&mut self) {
        match &mut self.holder {
            Holder::Keeper { keeper, socket, .. } => {
                if let Err(e) = keeper.drop_entry(ENTRY) {
                    tracing::warn!(socket = %socket.display(), error = %e, "dropping the fd keeper's entry");
                }
                if keeper.list().is_ok_and(|l| l.is_empty()) {
                    let _ = keeper.shutdown();
                }
            }
            Holder::Systemd(store) => store.remove(),
        }
    }
}

/// Starts the fd keeper: this very binary in keeper mode, in a process
/// group of its own (a terminal's SIGINT to the daemon does not reach
/// it), its output to `log`. Reaped by a thread while the daemon lives;
/// adopted by init after.
fn start_keeper(socket: &Path, log: &Path) -> Result<(), TakeoverStartError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(io("finding", Path::new("/proc/self/exe")))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening", log))?;
    let err = out.try_clone().map_err(io("opening", log))?;
    let mut child = std::process::Command::new(&exe)
        .arg("--run-fdkeeper")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io("starting the fd keeper", &exe))?;
    tracing::info!(pid = child.id(), socket = %socket.display(), "fd keeper started");
    let _ = std::thread::Builder::new()
        .name("fdkeeper-reaper".into())
        .spawn(move || child.wait());
    Ok(())
}

/// Runs the fd keeper in this process (`--run-fdkeeper SOCKET`): it holds
/// fds until told to stop, and exits after holding nothing for
/// `idle_exit`.
pub fn run_keeper(socket: &Path, idle_exit: Duration) -> Result<(), KeeperError> {
    ringstar_keeper::serve(socket, idle_exit)
}
