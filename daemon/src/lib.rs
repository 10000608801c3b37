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
pub mod filter;
pub mod grpc;
pub mod metadata;
pub mod remote;
pub mod snapshots;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ringstar_core::store::Store;
use ringstar_fetcher::{DockerConfig, Fetcher, FetcherConfig};
use ringstar_fusedev::{MountOptions, Session};

use config::Config;
use remote::{Remote, RemoteSettings};
use ringstar_layerfs::{BackgroundConfig, LayerFs, Loader, LoaderConfig};
use snapshots::Snapshots;

/// Why a snapshotter call failed; the gRPC code is what containerd acts
/// on (snapshotter-protocol.md §2).
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<SnapError> for containerd_snapshots::tonic::Status {
    fn from(e: SnapError) -> containerd_snapshots::tonic::Status {
        match e {
            SnapError::NotFound(m) => containerd_snapshots::tonic::Status::not_found(m),
            SnapError::AlreadyExists(m) => containerd_snapshots::tonic::Status::already_exists(m),
            SnapError::InvalidArgument(m) => {
                containerd_snapshots::tonic::Status::invalid_argument(m)
            }
            SnapError::FailedPrecondition(m) => {
                containerd_snapshots::tonic::Status::failed_precondition(m)
            }
            SnapError::Unavailable(m) => containerd_snapshots::tonic::Status::unavailable(m),
            SnapError::Internal(m) => containerd_snapshots::tonic::Status::unknown(m),
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct StartError {
    what: String,
    reason: String,
}

fn start_err(what: impl Into<String>, reason: impl std::fmt::Display) -> StartError {
    StartError {
        what: what.into(),
        reason: reason.to_string(),
    }
}

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
    pub fn start(root: &Path, config: &Config) -> Result<Daemon, StartError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| start_err(format!("creating {}", root.display()), e))?;
        // The root holds every tenant's cached files and snapshots: only
        // root reads it, even when it existed with a wider mode.
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| start_err(format!("chmod 0700 {}", root.display()), e))?;
        let r = &config.ringstar;
        let mut fetcher_config = FetcherConfig {
            credentials: Some(Arc::new(DockerConfig::from_env())),
            ca_file: r.ca_file.as_ref().map(PathBuf::from),
            ..FetcherConfig::default()
        };
        fetcher_config.request_timeout = config.request_timeout().unwrap_or(config::NO_TIMEOUT);
        if let Some(n) = config.blob.max_retries {
            fetcher_config.max_retries = n;
        }
        if let Some(ms) = config.blob.min_wait_msec.filter(|&m| m > 0) {
            fetcher_config.backoff_min = Duration::from_millis(ms);
        }
        if let Some(ms) = config.blob.max_wait_msec.filter(|&m| m > 0) {
            fetcher_config.backoff_max = Duration::from_millis(ms);
        }
        if let Some(n) = r.max_in_flight_per_host.filter(|&n| n > 0) {
            fetcher_config.max_in_flight_per_host = n;
        }
        let fetcher =
            Fetcher::new(fetcher_config).map_err(|e| start_err("starting the fetcher", e))?;
        let store_dir = root.join("store");
        let store = Store::open(&store_dir, r.store_size.unwrap_or(10 << 30))
            .map_err(|e| start_err(format!("opening the store at {}", store_dir.display()), e))?;
        let workers = r
            .inflate_workers
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let loader = Loader::new(
            Arc::new(store),
            fetcher.clone(),
            workers,
            LoaderConfig {
                background: BackgroundConfig {
                    enabled: !config.no_background_fetch,
                    bytes_per_sec: r.background_bytes_per_sec.unwrap_or(0),
                    ..BackgroundConfig::default()
                },
                max_read_ahead: r
                    .max_read_ahead
                    .unwrap_or(LoaderConfig::default().max_read_ahead),
                ..LoaderConfig::default()
            },
        )
        .map_err(|e| start_err("starting the loader", e))?;
        let passthrough = config.passthrough();
        let fs = Arc::new(LayerFs::new(loader, passthrough));
        let mountpoint = root.join("fuse");
        let session = mount_layers(fs.clone(), &mountpoint, config)?;
        tracing::info!(mountpoint = %mountpoint.display(), transport = ?session.transport(), passthrough, "layer filesystem mounted");
        let remote = Remote::new(
            fs,
            session,
            mountpoint,
            fetcher,
            config.resolver_config(),
            RemoteSettings {
                tail_bytes: r.tail_bytes.filter(|&t| t > 0).unwrap_or(512 << 10),
                noprefetch: config.noprefetch,
                prefetch_wait: r.prefetch_wait.unwrap_or(false),
                prefetch_timeout: config.prefetch_timeout(),
                allow_no_verification: config.allow_no_verification,
                disable_verification: config.disable_verification,
                unused_ttl: config.unused_layer_ttl(),
                ..RemoteSettings::default()
            },
        )
        .map_err(|e| start_err("starting the resolvers", e))?;
        let snapshots = match Snapshots::open(
            root,
            remote.clone(),
            config.allow_invalid_mounts_on_restart(),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                remote.shutdown();
                return Err(start_err("opening the snapshots", e));
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
        self.stop(how);
        served.map_err(|e| start_err("serving", e))?;
        Ok(how)
    }

    /// Unmounts the layer filesystem; on a graceful stop also removes
    /// what no snapshot owns.
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
    config: &Config,
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
        .map_err(|e| start_err(format!("creating {}", mountpoint.display()), e))?;
    let fuse_uring = config
        .fuse_uring()
        .map_err(|e| start_err("[ringstar] fuse_uring", e))?;
    let mut options = MountOptions {
        fsname: "ringstar".into(),
        subtype: "ringstar".into(),
        passthrough: config.passthrough(),
        ..MountOptions::default()
    };
    fuse_uring.apply(&mut options);
    tracing::info!(?fuse_uring, "FUSE transport setting");
    Session::mount(fs, mountpoint, &options)
        .map_err(|e| start_err(format!("mounting {}", mountpoint.display()), e))
}

fn bind_socket(address: &Path) -> Result<tokio::net::UnixListener, StartError> {
    if let Some(parent) = address.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| start_err(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::remove_file(address) {
        Ok(()) => tracing::info!(address = %address.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(start_err(format!("removing {}", address.display()), e)),
    }
    let listener = tokio::net::UnixListener::bind(address)
        .map_err(|e| start_err(format!("listening on {}", address.display()), e))?;
    std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| start_err(format!("chmod {}", address.display()), e))?;
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
