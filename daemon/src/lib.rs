//! The containerd proxy snapshotter daemon: the snapshots gRPC API on a
//! unix socket (its own control thread pool), the metadata database, the
//! one FUSE mount of remote layers, and the store behind it.
//!
//! Under `--root`:
//!
//! | path | what |
//! |---|---|
//! | `metadata.redb` | snapshots (redb, one transaction per change) |
//! | `snapshots/<id>/{fs,work}` | overlayfs snapshots (upper and work dirs) |
//! | `fuse/` | the layer filesystem; `fuse/<layer>` is a remote layer |
//! | `store/` | fetched, verified file contents (content-addressed) |

pub mod config;
pub mod cri;
pub mod defaults;
mod dirs;
pub mod endpoints;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod kubeconfig;
pub mod metadata;
pub mod metrics;
pub mod plane;
pub mod remote;
pub mod settings;
pub mod snapshots;
pub mod takeover;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ringstar_core::store::Store;
use ringstar_fetcher::Fetcher;
use ringstar_fusedev::Session;
use ringstar_layerfs::journal::Journal;
use ringstar_layerfs::{LayerFs, Loader};

pub use error::{SnapError, StartError};
use remote::Remote;
pub use settings::Settings;
use snapshots::Snapshots;
use takeover::{Prior, RootLock, Takeover};

/// A started daemon: the layer filesystem mounted, the metadata open,
/// restores under way. Serve it with [`Daemon::serve`].
#[derive(Debug)]
pub struct Daemon {
    remote: Arc<Remote>,
    /// `/metrics` and the debug endpoints, when configured.
    _endpoints: endpoints::Endpoints,
    snapshots: Arc<Snapshots>,
    /// The fd holder, with takeover on.
    takeover: Option<Mutex<Takeover>>,
    settings: Settings,
    _lock: RootLock,
}

/// How the daemon was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT: unmount everything and remove what only this run needs.
    Graceful,
    /// SIGTERM: stop serving and exit; the metadata is consistent. With
    /// takeover the mount stays, for the next process to serve.
    Terminate,
}

impl Daemon {
    /// Starts the daemon under `root` with `settings`.
    pub fn start(root: &Path, settings: &Settings) -> Result<Daemon, StartError> {
        create_root(root)?;
        let lock = takeover::lock_root(root, settings.replace_running, defaults::REPLACE_WAIT)
            .map_err(StartError::Takeover)?;
        let fetcher = Fetcher::new(settings.fetcher.clone()).map_err(StartError::Fetcher)?;
        if let Some(k) = &settings.kubeconfig {
            kubeconfig::spawn(k.keychain.clone(), k.path.clone()).map_err(StartError::Resolvers)?;
        }
        let loader = loader(root, settings, &fetcher)?;
        let mountpoint = root.join("fuse");
        let mut takeover = if settings.takes_over() {
            Some(Takeover::connect(root, settings.takeover_wait).map_err(StartError::Takeover)?)
        } else {
            None
        };
        let prior = takeover.as_mut().and_then(|t| t.prior(&mountpoint));
        let fs = Arc::new(layer_fs(
            loader,
            settings,
            takeover.as_ref(),
            prior.is_some(),
        )?);
        // A new mount serves at once; a taken-over one only once the
        // layers the kernel knows are back (see `resume`).
        let session = match &prior {
            None => Some(mount_layers(fs.clone(), &mountpoint, settings)?),
            Some(_) => None,
        };
        if let (Some(t), Some(s)) = (&mut takeover, &session) {
            t.deposit(s).map_err(StartError::Takeover)?;
        }
        let remote = Remote::new(
            fs.clone(),
            session,
            mountpoint.clone(),
            fetcher,
            settings.resolver.clone(),
            settings.remote.clone(),
        )
        .map_err(StartError::Resolvers)?;
        unpack_complete_layers(&remote, root, settings)?;
        // A taken-over mount is in use: refusing to start over a layer
        // that cannot be restored would hang every read of the mount, so
        // such a layer answers EIO instead (until it resolves again).
        let allow_invalid = settings.allow_invalid_mounts_on_restart || prior.is_some();
        let snapshots = match Snapshots::open(root, remote.clone(), allow_invalid) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                if prior.is_none() {
                    remote.shutdown();
                }
                return Err(StartError::Snapshots(e));
            }
        };
        if let Some(prior) = prior {
            resume(&remote, fs, &mountpoint, prior, settings, takeover.as_mut())?;
        }
        // The kernel caches the root's attributes for a day once asked
        // (layerfs `ROOT_ATTR_TTL`): ask now, while a process serves, so
        // that a stat of the mountpoint while none does (a plain
        // `umount` after SIGTERM) does not wait for the next one.
        if let Err(e) = std::fs::metadata(&mountpoint) {
            tracing::warn!(mountpoint = %mountpoint.display(), error = %e, "stat of the layer mount");
        }
        let endpoints = endpoints::Endpoints::start(
            &remote,
            settings.metrics_address.as_deref(),
            settings.debug_address.as_deref(),
        )?;
        Ok(Daemon {
            _endpoints: endpoints,
            remote,
            snapshots,
            takeover: takeover.map(Mutex::new),
            settings: settings.clone(),
            _lock: lock,
        })
    }

    /// Serves the snapshots API on unix socket `address` (mode 0660)
    /// until `stop` resolves, then unmounts the layer filesystem.
    pub async fn serve(
        self,
        address: &Path,
        stop: impl std::future::Future<Output = Stop>,
    ) -> Result<Stop, StartError> {
        let listener = bind_socket(address)?;
        let (cri_stop, cri) = self.serve_cri()?;
        let service =
            containerd_snapshots::server(Arc::new(grpc::Service::new(self.snapshots.clone())));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stop = async move {
            let how = stop.await;
            tracing::info!(?how, "stopping");
            notify_systemd("STOPPING=1");
            let _ = tx.send(how);
        };
        notify_systemd("READY=1");
        tracing::info!(address = %address.display(), "serving the snapshots API");
        let served = containerd_snapshots::tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop,
            )
            .await;
        let _ = std::fs::remove_file(address);
        let _ = cri_stop.send(true);
        if let Some((task, path)) = cri {
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "serving the CRI image service");
            }
            let _ = std::fs::remove_file(path);
        }
        let how = rx.await.unwrap_or(Stop::Terminate);
        // Unmounting joins the FUSE threads and cleanup walks directories:
        // blocking work, off the runtime's threads.
        tokio::task::spawn_blocking(move || self.stop(how))
            .await
            .map_err(StartError::Stop)?;
        served.map_err(StartError::Serve)?;
        Ok(how)
    }

    /// Starts kubelet's image service (`[cri_keychain]`), if enabled:
    /// the task and its socket, stopped by the sender.
    #[allow(clippy::type_complexity)]
    fn serve_cri(
        &self,
    ) -> Result<
        (
            tokio::sync::watch::Sender<bool>,
            Option<(
                tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
                std::path::PathBuf,
            )>,
        ),
        StartError,
    > {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let Some(c) = &self.settings.cri else {
            return Ok((tx, None));
        };
        let listener = bind_socket(&c.listen_path)?;
        let proxy = cri::CriProxy::new(&c.image_service_path, c.keychain.clone()).map_err(|e| {
            StartError::Endpoint {
                address: c.image_service_path.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        tracing::info!(socket = %c.listen_path.display(), backend = %c.image_service_path.display(), "serving the CRI image service (CRI keychain)");
        let stop = async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let task = tokio::spawn(proxy.serve(listener, stop));
        Ok((tx, Some((task, c.listen_path.clone()))))
    }

    /// SIGINT: unmounts the layer filesystem, removes what no snapshot
    /// owns and lets the fd holder go. SIGTERM: with takeover, hands the
    /// mount over (it stays, served by the next process); without,
    /// unmounts. Blocking.
    pub fn stop(&self, how: Stop) {
        // Starts still being recorded are written as far as they got.
        self.remote.flush_start_records();
        match (how, &self.takeover) {
            (Stop::Terminate, Some(_)) => {
                let h = self.remote.handover(defaults::HANDOVER_GRACE);
                tracing::info!(
                    abandoned = h.map(|h| h.abandoned),
                    "layer filesystem left mounted for the next process"
                );
            }
            _ => {
                self.remote.shutdown();
                if let Some(t) = &self.takeover {
                    t.lock().expect("takeover").forget();
                }
            }
        }
        if how == Stop::Graceful
            && let Err(e) = self.snapshots.cleanup()
        {
            tracing::warn!(error = %e, "cleanup on stop");
        }
    }

    /// What the daemon runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// The daemon's root, mode 0700: it holds every tenant's cached files
/// and snapshots, so only root reads it, even when it existed with a
/// wider mode.
fn create_root(root: &Path) -> Result<(), StartError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(StartError::io("creating", root))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(StartError::io("chmod 0700", root))
}

/// The layer filesystem; with takeover, journaled for the next process
/// and, when taking a mount over (`resuming`), starting from what the
/// previous processes journaled.
fn layer_fs(
    loader: Arc<Loader>,
    settings: &Settings,
    takeover: Option<&Takeover>,
    resuming: bool,
) -> Result<LayerFs, StartError> {
    let Some(t) = takeover else {
        return Ok(LayerFs::new(loader, settings.passthrough));
    };
    // Not resuming, the journal replays nothing: `inherited` is empty.
    let (journal, inherited) =
        Journal::start(&t.journal_path(), resuming).map_err(StartError::Journal)?;
    Ok(LayerFs::journaled(
        loader,
        settings.passthrough,
        Arc::new(journal),
        &inherited,
    ))
}

/// Serves a mount a previous process left: the restored layers first
/// (requests wait in the kernel meanwhile), then the connection, resent
/// requests included. A connection that cannot be resumed is detached and
/// mounted anew (containers using it lose their files, as before #16).
fn resume(
    remote: &Arc<Remote>,
    fs: Arc<LayerFs>,
    mountpoint: &Path,
    prior: Prior,
    settings: &Settings,
    takeover: Option<&mut Takeover>,
) -> Result<(), StartError> {
    let started = std::time::Instant::now();
    remote.settle_restores(settings.remote.resolve_timeout);
    let opts = settings.mount_options();
    match Session::resume(fs.clone(), prior.fds, &prior.state, &opts) {
        Ok(session) => {
            tracing::info!(mountpoint = %mountpoint.display(), layers = fs.layer_names().len(), waited = ?started.elapsed(), "layer filesystem taken over");
            remote.set_session(session);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot resume the held FUSE connection; mounting anew");
            let session = mount_layers(fs, mountpoint, settings)?;
            if let Some(t) = takeover {
                t.deposit(&session).map_err(StartError::Takeover)?;
            }
            remote.set_session(session);
        }
    }
    Ok(())
}

fn mount_layers(
    fs: Arc<LayerFs>,
    mountpoint: &Path,
    settings: &Settings,
) -> Result<Session, StartError> {
    // A mount left by a predecessor that died answers ENOTCONN; detach
    // it (and anything stacked on it) before mounting anew.
    while ringstar_fusedev::detach_mount(mountpoint).is_ok() {
        tracing::info!(mountpoint = %mountpoint.display(), "detached a stale layer filesystem");
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(mountpoint)
        .map_err(StartError::io("creating", mountpoint))?;
    tracing::info!(fuse_uring = ?settings.fuse_uring, takeover = settings.takes_over(), "FUSE transport setting");
    let session = Session::mount(fs, mountpoint, &settings.mount_options())
        .map_err(StartError::io("mounting", mountpoint))?;
    tracing::info!(mountpoint = %mountpoint.display(), transport = ?session.transport(), passthrough = settings.passthrough, "layer filesystem mounted");
    Ok(session)
}

fn bind_socket(address: &Path) -> Result<tokio::net::UnixListener, StartError> {
    if let Some(parent) = address.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(StartError::io("creating", parent))?;
    }
    match std::fs::remove_file(address) {
        Ok(()) => tracing::info!(address = %address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StartError::io("removing", address)(e)),
    }
    let listener =
        tokio::net::UnixListener::bind(address).map_err(StartError::io("listening on", address))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .map_err(StartError::io("chmod 0660", address))?;
    Ok(listener)
}

/// Complete layers unpacked under `ROOT/unpacked` for new overlays,
/// unless off (docs/layerfs.md, "Unpacked layers").
fn unpack_complete_layers(
    remote: &Arc<Remote>,
    root: &Path,
    settings: &Settings,
) -> Result<(), StartError> {
    if !settings.unpack_complete {
        return Ok(());
    }
    let path = root.join("unpacked");
    remote
        .enable_unpacking(&path)
        .map_err(|cause| StartError::Unpacked { path, cause })
}

/// The store under `ROOT/store` and the loader over it (start records
/// under `ROOT/starts`, unless off).
fn loader(root: &Path, settings: &Settings, fetcher: &Fetcher) -> Result<Arc<Loader>, StartError> {
    let store_dir = root.join("store");
    let store =
        Store::open(&store_dir, settings.store_size).map_err(|cause| StartError::Store {
            path: store_dir.clone(),
            cause,
        })?;
    let mut config = settings.loader.clone();
    if settings.record_starts {
        config.start_records = Some(root.join("starts"));
    }
    Loader::new(
        Arc::new(store),
        fetcher.clone(),
        settings.inflate_workers,
        config,
    )
    .map_err(StartError::Loader)
}

/// Raises the soft limit of open files to the hard one, as Go's runtime
/// does for the reference daemon: the store keeps up to 1024 files open
/// for reads, and a shell's usual soft limit is 1024 (the unit file sets
/// `LimitNOFILE`, but `ringstar mount` and hand-started daemons have none).
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current >= limit.maximum {
        return;
    }
    limit.current = limit.maximum;
    if let Err(e) = setrlimit(Resource::Nofile, limit) {
        tracing::warn!(error = %e, "raising the open-file limit to the hard limit");
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state when it started
/// us with `NOTIFY_SOCKET`; nothing otherwise.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(abs) => SocketAddr::from_abstract_name(abs.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &a));
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "sd_notify");
    }
}
