//! Remote layers for snapshots: which layer the labels of a Prepare name,
//! resolving it (once per source, however many snapshots and pre-resolves
//! ask; a few at a time), verifying its TOC, showing it in the one FUSE
//! mount, prefetch and background fetch (only once its TOC is verified),
//! and dropping it when no snapshot uses it.
//!
//! A layer is a directory of the mount named by where its blob comes from
//! and what it is ([`LayerSource::layer_name`]), so a blob that two chains
//! of one repository share (or a restore and a new pull) is served once,
//! and an image declaring another image's digest gets a layer of its own.
//!
//! The `slots` lock is never held across showing a layer in the mount
//! (the filesystem's layer table is written, which every FUSE operation
//! reads, and `/dev/fuse` is written to drop the kernel's cached lookup):
//! who shows it is decided under the lock ([`Visibility::Adding`]), the
//! work done outside it, and the outcome published under it again.

mod session;
mod settings;
mod unpacking;
mod view;
mod wanted;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringstar_core::Digest;
use ringstar_fetcher::{Fetcher, ResolverConfig};
use ringstar_fusedev::Session;
use ringstar_layerfs::AddLayerError;
use ringstar_layerfs::resolve::{LayerSource, ResolveError, resolve};
use ringstar_layerfs::{LayerFs, RemoteLayer};

pub use settings::RemoteSettings;
pub use view::LayerView;
pub use wanted::{LabelError, Wanted, labels, wanted};

/// Why a remote layer cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Resolve(Arc<ResolveError>),
    #[error("resolve panicked: {message}")]
    Panicked { message: String },
    #[error("TOC digest is {actual}, the label says {expected}")]
    TocMismatch { actual: Digest, expected: Digest },
    #[error("resolving took longer than {0:?}")]
    Timeout(Duration),
    #[error("cannot show the layer: {0}")]
    Show(#[from] AddLayerError),
    #[error("layer was released meanwhile")]
    Released,
    #[error("not being restored")]
    NotRestoring,
}

impl LayerError {
    /// The blob is no eStargz at all (a plain gzip layer): a normal pull
    /// is the expected answer, not a failure.
    pub fn is_not_estargz(&self) -> bool {
        matches!(self, LayerError::Resolve(e) if e.is_not_estargz())
    }
}

/// Resolves at once, at most: the labels of one Prepare name every layer
/// of its image, and each resolve is a thread blocked on the registry.
const RESOLVERS: usize = 4;

#[derive(Debug)]
enum State {
    Resolving,
    Ready(Arc<RemoteLayer>),
    Failed(LayerError),
}

/// Whether a layer is in the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Hidden,
    /// A thread is adding it, outside the lock; others wait for it.
    Adding,
    /// In the mount (a snapshot claimed it).
    Shown,
}

#[derive(Debug)]
struct Slot {
    state: State,
    visibility: Visibility,
    /// Show it in the mount once resolved (a restored layer: snapshots
    /// already use it).
    show_when_ready: bool,
    since: Instant,
}

/// The remote layers of the daemon and the FUSE mount showing them.
#[derive(Debug)]
pub struct Remote {
    fs: Arc<LayerFs>,
    /// Shared, so an invalidation writes to `/dev/fuse` without the lock.
    session: Mutex<Option<Arc<Session>>>,
    fetcher: Fetcher,
    resolver: ResolverConfig,
    settings: RemoteSettings,
    mountpoint: PathBuf,
    /// By layer name.
    slots: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
    /// Sources to resolve, taken by [`RESOLVERS`] threads.
    queue: crossbeam_channel::Sender<LayerSource>,
    /// Time FUSE requests (set by the metrics; sessions set later too).
    op_timing: std::sync::atomic::AtomicBool,
    /// Complete layers unpacked for overlayfs, once enabled.
    unpacking: std::sync::OnceLock<unpacking::Unpacking>,
}

impl Remote {
    pub fn new(
        fs: Arc<LayerFs>,
        session: Option<Session>,
        mountpoint: PathBuf,
        fetcher: Fetcher,
        resolver: ResolverConfig,
        settings: RemoteSettings,
    ) -> std::io::Result<Arc<Remote>> {
        let (queue, sources) = crossbeam_channel::unbounded::<LayerSource>();
        let remote = Arc::new(Remote {
            fs,
            session: Mutex::new(session.map(Arc::new)),
            fetcher,
            resolver,
            settings,
            mountpoint,
            slots: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            queue,
            op_timing: Default::default(),
            unpacking: Default::default(),
        });
        for i in 0..RESOLVERS {
            let (weak, sources) = (Arc::downgrade(&remote), sources.clone());
            std::thread::Builder::new()
                .name(format!("resolve-{i}"))
                .spawn(move || {
                    for source in sources {
                        let Some(me) = weak.upgrade() else { return };
                        me.run_resolve(source);
                    }
                })?;
        }
        Ok(remote)
    }

    pub fn settings(&self) -> &RemoteSettings {
        &self.settings
    }

    /// Where layer `name` is seen (an overlay lowerdir).
    pub fn layer_dir(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// Starts resolving `source` unless it is known already.
    pub fn preresolve(self: &Arc<Self>, source: LayerSource) {
        self.start_resolve(source, false);
    }

    fn start_resolve(self: &Arc<Self>, source: LayerSource, show_when_ready: bool) {
        let name = source.layer_name();
        let mut slots = self.slots.lock().expect("slots");
        if let Some(slot) = slots.get_mut(&name) {
            slot.show_when_ready |= show_when_ready;
            return;
        }
        slots.insert(
            name,
            Slot {
                state: State::Resolving,
                visibility: Visibility::Hidden,
                show_when_ready,
                since: Instant::now(),
            },
        );
        drop(slots);
        // The resolvers live as long as `self`: the send cannot fail.
        let _ = self.queue.send(source);
    }

    fn run_resolve(&self, source: LayerSource) {
        let digest = source.digest;
        let name = source.layer_name();
        // A restore knows the TOC digest and checks it here: its fetching
        // starts once resolved. A pre-resolve's TOC is checked by the
        // layer's own Prepare (`claim`), which starts it: nothing is
        // fetched for a TOC nobody vouched for.
        let verified = source.toc_digest.is_some();
        match self.resolve_checked(source, &name) {
            Ok(layer) => self.publish_resolved(&name, Arc::new(layer), verified),
            Err(e) => {
                tracing::warn!(layer = %digest, reason = %e, "resolve failed");
                if let Some(slot) = self.slots.lock().expect("slots").get_mut(&name) {
                    slot.since = Instant::now();
                    slot.state = State::Failed(e);
                }
                self.changed.notify_all();
            }
        }
    }

    /// Resolves `source` without the TOC digest (a pre-resolve does not
    /// know it; only the layer's own Prepare carries it), then checks the
    /// TOC's digest when `source` names one. A panic fails this layer
    /// (its Prepares fall back) and leaves the resolver serving.
    fn resolve_checked(&self, source: LayerSource, name: &str) -> Result<RemoteLayer, LayerError> {
        let want = source.toc_digest;
        let unverified = LayerSource {
            toc_digest: None,
            ..source
        };
        let layer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resolve(
                &self.fetcher,
                &self.resolver,
                &unverified,
                name.to_string(),
                self.settings.tail_bytes,
            )
            .map_err(|e| LayerError::Resolve(Arc::new(e)))
        }))
        .unwrap_or_else(|p| {
            Err(LayerError::Panicked {
                message: ringstar_core::faults::message(&*p).into(),
            })
        })?;
        match want {
            Some(w) if layer.layer.toc_digest != w => Err(LayerError::TocMismatch {
                actual: layer.layer.toc_digest,
                expected: w,
            }),
            _ => Ok(layer),
        }
    }

    /// Publishes a resolved layer. One to show at once (a restore) is
    /// shown before anyone sees it ready, outside the lock.
    fn publish_resolved(&self, name: &str, layer: Arc<RemoteLayer>, verified: bool) {
        let show = {
            let mut slots = self.slots.lock().expect("slots");
            let Some(slot) = slots.get_mut(name) else {
                return;
            };
            slot.since = Instant::now();
            if slot.show_when_ready {
                slot.visibility = Visibility::Adding;
            } else {
                slot.state = State::Ready(layer.clone());
            }
            slot.show_when_ready
        };
        if show && !self.show_restored(name, &layer) {
            self.changed.notify_all();
            return;
        }
        self.changed.notify_all();
        if verified {
            self.start_fetching(&layer);
        }
    }

    /// Shows a restored layer (its slot still resolving, marked
    /// `Adding`); publishes it ready, or failed. False: it is not ready.
    fn show_restored(&self, name: &str, layer: &Arc<RemoteLayer>) -> bool {
        let added = self.add_to_mount(layer);
        let mut slots = self.slots.lock().expect("slots");
        let mine = slots
            .get_mut(name)
            .filter(|s| s.visibility == Visibility::Adding && matches!(s.state, State::Resolving));
        match (mine, added) {
            (Some(slot), Ok(())) => {
                slot.visibility = Visibility::Shown;
                slot.state = State::Ready(layer.clone());
                true
            }
            (Some(slot), Err(e)) => {
                tracing::warn!(layer = %layer.digest, reason = %e, "cannot show the layer");
                slot.visibility = Visibility::Hidden;
                slot.state = State::Failed(e);
                false
            }
            (None, added) => {
                drop(slots);
                // Released meanwhile: nobody else removes what we added.
                if added.is_ok() {
                    self.take_from_mount(layer);
                }
                false
            }
        }
    }

    /// Prefetch and background fetch of a layer whose TOC is verified (or
    /// whose verification the config turned off), once.
    fn start_fetching(&self, layer: &Arc<RemoteLayer>) {
        if !layer.begin_fetching() {
            return;
        }
        let loader = self.fs.loader();
        if self.settings.noprefetch {
            layer.finish_prefetch();
        } else {
            loader.prefetch(layer);
        }
        loader.start_background(layer);
    }

    /// Waits for `source`'s resolve (started if needed, or again after a
    /// failure) until `deadline`.
    fn ready(
        self: &Arc<Self>,
        source: &LayerSource,
        deadline: Instant,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        let mut retried = false;
        let name = source.layer_name();
        loop {
            let mut slots = self.slots.lock().expect("slots");
            match slots.get(&name).map(|s| &s.state) {
                Some(State::Ready(l)) => return Ok(l.clone()),
                Some(State::Failed(e)) if retried => return Err(e.clone()),
                Some(State::Failed(_)) | None => {
                    slots.remove(&name);
                    drop(slots);
                    retried = true;
                    self.preresolve(source.clone());
                    continue;
                }
                Some(State::Resolving) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(LayerError::Timeout(self.settings.resolve_timeout));
                    }
                    let _ = self
                        .changed
                        .wait_timeout(slots, deadline - now)
                        .expect("slots");
                }
            }
        }
    }

    /// The layer a remote Prepare asked for, resolved, verified and shown
    /// in the mount; its name there. Starts resolving the image's other
    /// layers too.
    pub fn claim(self: &Arc<Self>, wanted: &Wanted) -> Result<Arc<RemoteLayer>, LayerError> {
        // Its own layer first: the resolvers take the queue in order.
        self.preresolve(wanted.source.clone());
        for other in &wanted.others {
            self.preresolve(other.clone());
        }
        let deadline = Instant::now() + self.settings.resolve_timeout;
        let layer = self.ready(&wanted.source, deadline)?;
        if wanted.verify
            && let Some(want) = wanted.source.toc_digest
            && layer.layer.toc_digest != want
        {
            // A layer snapshots use stays; one only pre-resolved goes.
            self.forget_unshown(&layer.name);
            return Err(LayerError::TocMismatch {
                actual: layer.layer.toc_digest,
                expected: want,
            });
        }
        self.show(&layer)?;
        self.start_fetching(&layer);
        Ok(layer)
    }

    /// Shows a ready layer in the mount, once: the first caller adds it
    /// (outside the lock), later ones wait for its outcome.
    fn show(&self, layer: &Arc<RemoteLayer>) -> Result<(), LayerError> {
        {
            let mut slots = self.slots.lock().expect("slots");
            loop {
                let Some(slot) = slots.get_mut(&layer.name) else {
                    return Err(LayerError::Released);
                };
                match slot.visibility {
                    Visibility::Shown => return Ok(()),
                    Visibility::Hidden => {
                        slot.visibility = Visibility::Adding;
                        break;
                    }
                    Visibility::Adding => slots = self.changed.wait(slots).expect("slots"),
                }
            }
        }
        let added = self.add_to_mount(layer);
        let mut slots = self.slots.lock().expect("slots");
        let mine = slots.get_mut(&layer.name).filter(|s| {
            s.visibility == Visibility::Adding
                && matches!(&s.state, State::Ready(l) if Arc::ptr_eq(l, layer))
        });
        let shown = match (mine, added) {
            (Some(slot), Ok(())) => {
                slot.visibility = Visibility::Shown;
                Ok(())
            }
            (Some(slot), Err(e)) => {
                slot.visibility = Visibility::Hidden;
                Err(e)
            }
            (None, added) => {
                drop(slots);
                // Released meanwhile: nobody else removes what we added.
                if added.is_ok() {
                    self.take_from_mount(layer);
                }
                Err(LayerError::Released)
            }
        };
        self.changed.notify_all();
        shown
    }

    /// Adds `layer` to the mount and drops the kernel's cached lookup of
    /// its name. Called with no lock held.
    fn add_to_mount(&self, layer: &Arc<RemoteLayer>) -> Result<(), LayerError> {
        self.fs.add_layer(layer.clone())?;
        self.invalidate_root(&layer.name);
        Ok(())
    }

    /// Removes `layer` from the mount. Called with no lock held.
    fn take_from_mount(&self, layer: &Arc<RemoteLayer>) {
        layer.mark_removed();
        self.fs.remove_layer(&layer.name);
        self.invalidate_root(&layer.name);
    }

    /// Writes the start records still being taken (at stop).
    pub fn flush_start_records(&self) {
        if let Some(starts) = &self.fs.loader().starts {
            starts.flush();
        }
    }

    /// Waits until every layer of `layers` is served and (unless
    /// `noprefetch`) prefetched, within the prefetch timeout; a layer that
    /// cannot be served is an error (the snapshot is unavailable).
    pub fn check(self: &Arc<Self>, layers: &[LayerSource]) -> Result<(), LayerError> {
        let deadline = Instant::now() + self.settings.resolve_timeout;
        let mut ready = Vec::new();
        for source in layers {
            ready.push(self.serve(source, deadline)?);
        }
        // Each layer learns the image it is mounted in, so that
        // predictions look libraries up as this container sees them.
        for layer in &ready {
            layer.set_image(&ready);
        }
        self.fs.loader().image_mounted(&ready);
        if !self.settings.noprefetch && self.settings.prefetch_wait {
            let until = Instant::now() + self.settings.prefetch_timeout;
            for layer in &ready {
                let left = until.saturating_duration_since(Instant::now());
                if !layer.wait_prefetch(left) {
                    tracing::info!(layer = %layer.digest, "prefetch not done within the timeout; going on");
                }
            }
        }
        Ok(())
    }

    /// Waits (bounded) until one layer is served, without waiting for
    /// its prefetch; the layer.
    pub fn check_one(
        self: &Arc<Self>,
        source: &LayerSource,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        let deadline = Instant::now() + self.settings.resolve_timeout;
        self.serve(source, deadline)
    }

    /// A stored snapshot's layer, resolved (again if need be), checked
    /// against its TOC digest and shown.
    fn serve(
        self: &Arc<Self>,
        source: &LayerSource,
        deadline: Instant,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        let layer = self.ready(source, deadline)?;
        if let Some(want) = source.toc_digest
            && layer.layer.toc_digest != want
        {
            return Err(LayerError::TocMismatch {
                actual: layer.layer.toc_digest,
                expected: want,
            });
        }
        self.show(&layer)?;
        self.start_fetching(&layer);
        Ok(layer)
    }

    /// Starts restoring a layer a stored snapshot uses (after a restart).
    pub fn restore(self: &Arc<Self>, source: LayerSource) {
        self.start_resolve(source, true);
    }

    /// Whether a restored layer could be resolved (waits for it).
    pub fn restored(self: &Arc<Self>, source: &LayerSource) -> Result<(), LayerError> {
        let deadline = Instant::now() + self.settings.resolve_timeout;
        let name = source.layer_name();
        let mut slots = self.slots.lock().expect("slots");
        loop {
            match slots.get(&name).map(|s| &s.state) {
                Some(State::Ready(_)) => return Ok(()),
                Some(State::Failed(e)) => return Err(e.clone()),
                None => return Err(LayerError::NotRestoring),
                Some(State::Resolving) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(LayerError::Timeout(self.settings.resolve_timeout));
                    }
                    slots = self
                        .changed
                        .wait_timeout(slots, deadline - now)
                        .expect("slots")
                        .0;
                }
            }
        }
    }

    fn forget_unshown(&self, name: &str) {
        let hidden = self
            .slots
            .lock()
            .expect("slots")
            .get(name)
            .is_some_and(|s| s.visibility == Visibility::Hidden);
        if hidden {
            self.release(name);
        }
    }

    /// Drops layer `name`, which no snapshot uses any more. One being
    /// added is taken out of the mount by whoever adds it.
    pub fn release(&self, name: &str) {
        let slot = self.slots.lock().expect("slots").remove(name);
        if let Some(slot) = slot {
            if let State::Ready(layer) = &slot.state {
                layer.mark_removed();
                if slot.visibility == Visibility::Shown {
                    self.take_from_mount(layer);
                }
            }
            self.forget_unpacked(name);
            tracing::info!(layer = %name, "layer released");
        }
        self.changed.notify_all();
    }

    /// Drops layers resolved for an image but used by no snapshot for
    /// longer than the TTL; `used` are the names snapshots use.
    pub fn prune(&self, used: &[String]) {
        let stale: Vec<String> = self
            .slots
            .lock()
            .expect("slots")
            .iter()
            .filter(|(d, s)| {
                !used.contains(d)
                    && !matches!(s.state, State::Resolving)
                    && s.since.elapsed() >= self.settings.unused_ttl
            })
            .map(|(d, _)| d.clone())
            .collect();
        for d in stale {
            self.release(&d);
        }
    }
}

#[cfg(test)]
mod tests;
