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
pub mod defaults;
mod dirs;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod metadata;
pub mod remote;
pub mod settings;
pub mod snapshots;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use ringstar_core::store::Store;
use ringstar_fetcher::Fetcher;
use ringstar_fusedev::Session;
use ringstar_layerfs::{LayerFs, Loader};

pub use error::{SnapError, StartError};
use remote::Remote;
pub use settings::Settings;
use snapshots::Snapshots;

/// A started daemon: the layer filesystem mounted, the metadata open,
/// restores under way. Serve it with [`Daemon::serve`].
#[derive(Debug)]
pub struct Daemon {
    remote: Arc<Remote>,
    snapshots: Arc<Snapshots>,
}

/// How the daemon was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT: unmount everything and remove what only this run needs.
    Graceful,
    /// SIGTERM: stop serving and exit; the metadata is consistent.
    Terminate,
}

impl Daemon {
    /// Starts the daemon under `root` with `settings`.
    pub fn start(root: &Path, settings: &Settings) -> Result<Daemon, StartError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(StartError::io("creating", root))?;
        // The root holds every tenant's cached files and snapshots: only
        // root reads it, even when it existed with a wider mode.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(StartError::io("chmod 0700", root))?;
        let fetcher = Fetcher::new(settings.fetcher.clone()).map_err(StartError::Fetcher)?;
        let store_dir = root.join("store");
        let store =
            Store::open(&store_dir, settings.store_size).map_err(|cause| StartError::Store {
                path: store_dir.clone(),
                cause,
            })?;
        let loader = Loader::new(
            Arc::new(store),
            fetcher.clone(),
            settings.inflate_workers,
            settings.loader.clone(),
        )
        .map_err(StartError::Loader)?;
        let fs = Arc::new(LayerFs::new(loader, settings.passthrough));
        let mountpoint = root.join("fuse");
        let session = mount_layers(fs.clone(), &mountpoint, settings)?;
        tracing::info!(mountpoint = %mountpoint.display(), transport = ?session.transport(), passthrough = settings.passthrough, "layer filesystem mounted");
        let remote = Remote::new(
            fs,
            session,
            mountpoint,
            fetcher,
            settings.resolver.clone(),
            settings.remote.clone(),
        )
        .map_err(StartError::Resolvers)?;
        let snapshots = match Snapshots::open(
            root,
            remote.clone(),
            settings.allow_invalid_mounts_on_restart,
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                remote.shutdown();
                return Err(StartError::Snapshots(e));
            }
        };
        Ok(Daemon { remote, snapshots })
    }

    /// Serves the snapshots API on unix socket `address` (mode 0660)
    /// until `stop` resolves, then unmounts the layer filesystem.
    pub async fn serve(
        self,
        address: &Path,
        stop: impl std::future::Future<Output = Stop>,
    ) -> Result<Stop, StartError> {
        let listener = bind_socket(address)?;
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
        let how = rx.await.unwrap_or(Stop::Terminate);
        // Unmounting joins the FUSE threads and cleanup walks directories:
        // blocking work, off the runtime's threads.
        tokio::task::spawn_blocking(move || self.stop(how))
            .await
            .map_err(StartError::Stop)?;
        served.map_err(StartError::Serve)?;
        Ok(how)
    }

    /// Unmounts the layer filesystem; on a graceful stop also removes
    /// what no snapshot owns. Blocking.
    pub fn stop(&self, how: Stop) {
        self.remote.shutdown();
        if how == Stop::Graceful
            && let Err(e) = self.snapshots.cleanup()
        {
            tracing::warn!(error = %e, "cleanup on stop");
        }
    }
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
    tracing::info!(fuse_uring = ?settings.fuse_uring, "FUSE transport setting");
    Session::mount(fs, mountpoint, &settings.mount_options())
        .map_err(StartError::io("mounting", mountpoint))
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
