//! The layer plane alone: the store, the loader, the one FUSE mount of
//! remote layers and their resolvers, without the snapshots API. What
//! `ringstar-store` (Podman's additional layer store) serves its layers
//! with, so both front ends share one data plane.

use std::path::Path;
use std::sync::Arc;

use ringstar_fetcher::Fetcher;
use ringstar_layerfs::LayerFs;

use crate::remote::Remote;
use crate::takeover::{self, RootLock};
use crate::{Settings, StartError, create_root, defaults, loader, mount_layers};

/// Remote layers served under `ROOT/fuse`, with the store under
/// `ROOT/store`; the root is locked for as long as this lives.
#[derive(Debug)]
pub struct LayerPlane {
    remote: Arc<Remote>,
    _endpoints: crate::endpoints::Endpoints,
    fetcher: Fetcher,
    _lock: RootLock,
}

impl LayerPlane {
    /// Mounts the layer filesystem under `root` (a fresh mount: no
    /// takeover, whatever the settings say).
    pub fn start(root: &Path, settings: &Settings) -> Result<LayerPlane, StartError> {
        create_root(root)?;
        let lock = takeover::lock_root(root, settings.replace_running, defaults::REPLACE_WAIT)
            .map_err(StartError::Takeover)?;
        let fetcher = Fetcher::new(settings.fetcher.clone()).map_err(StartError::Fetcher)?;
        let loader = loader(root, settings, &fetcher)?;
        let mountpoint = root.join("fuse");
        let fs = Arc::new(LayerFs::new(loader, settings.passthrough));
        let mut settings = settings.clone();
        settings.takeover = false;
        let session = mount_layers(fs.clone(), &mountpoint, &settings)?;
        let remote = Remote::new(
            fs,
            Some(session),
            mountpoint,
            fetcher.clone(),
            settings.resolver.clone(),
            settings.remote.clone(),
        )
        .map_err(StartError::Resolvers)?;
        let endpoints = crate::endpoints::Endpoints::start(
            &remote,
            settings.metrics_address.as_deref(),
            settings.debug_address.as_deref(),
        )?;
        Ok(LayerPlane {
            _endpoints: endpoints,
            remote,
            fetcher,
            _lock: lock,
        })
    }

    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// The registry client the layers are fetched with (manifests and
    /// blobs of the same images go through it too).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Unmounts the layer filesystem (blocking).
    pub fn stop(&self) {
        self.remote.flush_start_records();
        self.remote.shutdown();
    }
}
