//! `ringstar-store`: containers/storage's *additional layer store* for
//! Podman and CRI-O, served by ringstar's layer plane (the loader, the
//! store, the fetcher and the one FUSE mount of layers the snapshotter
//! uses). docs/podman.md has the setup and the protocol.
//!
//! Under `--root` (default `/var/lib/ringstar-store`):
//!
//! | path | what |
//! |---|---|
//! | `fuse/` | the layer filesystem; `fuse/<layer>` is a layer's tree |
//! | `store/` | fetched, verified file contents (content-addressed) |
//! | `als/layers/` | the layers offered, by store path (kept across restarts) |
//! | `als/uses.json` | how many users each store path has |

pub mod catalog;
pub mod credentials;
pub mod info;
pub mod namespace;
pub mod usage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ringstar_daemon::Settings;
use ringstar_daemon::plane::LayerPlane;
use ringstar_fusedev::{MountOptions, Session, TransportChoice};

use catalog::{Catalog, Verification};
use namespace::Namespace;
use usage::Usage;

/// How often idle layers are looked for.
const REAP_EVERY: Duration = Duration::from_secs(5);

/// Threads serving the namespace mount: its lookups may wait on the
/// registry (a layer's first lookup resolves it), so a few slow
/// registries must not leave none for the lookups and `use`s of layers
/// already served.
const NAMESPACE_THREADS: usize = 16;

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("starting the layer plane")]
    Plane(#[from] ringstar_daemon::StartError),
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |cause| StoreError::Io {
        action,
        path,
        cause,
    }
}

/// What the store runs with besides the layer plane's settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub plane: Settings,
    /// How long a layer nobody uses stays in the layer plane, and how
    /// long an image's manifest and config are reused
    /// (`resolve_result_entry_ttl_sec`).
    pub idle: Duration,
}

/// A running store: the layer plane and the namespace mounted.
#[derive(Debug)]
pub struct LayerStore {
    plane: LayerPlane,
    usage: Arc<Usage>,
    session: Option<Session>,
    mountpoint: PathBuf,
    stopping: Arc<AtomicBool>,
}

impl LayerStore {
    /// Starts the layer plane under `root` and mounts the namespace at
    /// `mountpoint`.
    pub fn start(
        root: &Path,
        mountpoint: &Path,
        settings: &StoreSettings,
    ) -> Result<LayerStore, StoreError> {
        let plane = LayerPlane::start(root, &settings.plane)?;
        let als = root.join("als");
        let verification = Verification {
            disable: settings.plane.remote.disable_verification,
            allow_missing: settings.plane.remote.allow_no_verification,
        };
        let catalog = Catalog::open(
            &als.join("layers"),
            plane.fetcher().clone(),
            settings.plane.resolver.clone(),
            verification,
            settings.idle,
        )
        .map_err(io("opening the layer records in", &als))?;
        let uses = als.join("uses.json");
        let usage = Arc::new(Usage::open(&uses).map_err(io("starting the writer of", &uses))?);
        let catalog = Arc::new(catalog);
        let fs = Arc::new(Namespace::new(
            plane.remote().clone(),
            catalog.clone(),
            usage.clone(),
            plane.fetcher().clone(),
        ));
        let session = mount_namespace(fs, mountpoint)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let reaper = Reaper {
            remote: plane.remote().clone(),
            usage: usage.clone(),
            catalog,
            idle: settings.idle,
        };
        reaper
            .spawn(stopping.clone())
            .map_err(io("starting the reaper for", mountpoint))?;
        tracing::info!(mountpoint = %mountpoint.display(), root = %root.display(), "additional layer store serving");
        Ok(LayerStore {
            plane,
            usage,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
            stopping,
        })
    }

    /// Unmounts the namespace, then the layer plane (blocking).
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::Release);
        self.usage.flush();
        if let Some(s) = self.session.take()
            && let Err(e) = s.unmount()
        {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmounting the store");
        }
        self.plane.stop();
    }
}

fn mount_namespace(fs: Arc<Namespace>, mountpoint: &Path) -> Result<Session, StoreError> {
    // A mount left by a store that died answers ENOTCONN, and every
    // podman command fails on it: detach it first.
    while ringstar_fusedev::detach_mount(mountpoint).is_ok() {
        tracing::info!(mountpoint = %mountpoint.display(), "detached a stale store mount");
    }
    std::fs::create_dir_all(mountpoint).map_err(io("creating", mountpoint))?;
    let opts = MountOptions {
        fsname: "ringstar-store".into(),
        subtype: "ringstar-store".into(),
        // Its lookups wait on the registry: plain threads, no ring.
        transport: TransportChoice::Classic,
        classic_threads: NAMESPACE_THREADS,
        pin_threads: false,
        passthrough: false,
        takeover: false,
        // `use` and the release come as CREATE and RMDIR.
        read_only: false,
        ..MountOptions::default()
    };
    Session::mount(fs, mountpoint, &opts).map_err(io("mounting", mountpoint))
}

/// Releases what nobody has used for the idle time: layers from the
/// layer plane (their contents stay in the store), and the records of
/// store paths no stored image holds.
struct Reaper {
    remote: Arc<ringstar_daemon::remote::Remote>,
    usage: Arc<Usage>,
    catalog: Arc<Catalog>,
    idle: Duration,
}

impl Reaper {
    fn spawn(self, stopping: Arc<AtomicBool>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("store-reaper".into())
            .spawn(move || {
                while !stopping.load(Ordering::Acquire) {
                    std::thread::sleep(REAP_EVERY.min(self.idle.max(Duration::from_millis(100))));
                    self.reap();
                }
            })
            .map(|_| ())
    }

    fn reap(&self) {
        let mut layers = std::collections::BTreeSet::new();
        for (key, layer) in self.usage.take_idle(self.idle) {
            self.catalog.forget(&key);
            layers.insert(layer);
        }
        for layer in layers {
            // Used again meanwhile: it stays.
            if self.usage.is_idle(&layer, self.idle) {
                tracing::info!(layer = %layer, "no user for the idle time; released");
                self.remote.release(&layer);
            }
        }
        // Layers resolved but never used (a pull given up, a layer only
        // looked at, a failed resolve) go after the idle time too.
        self.remote.prune(&self.usage.busy_layers(self.idle));
    }
}
