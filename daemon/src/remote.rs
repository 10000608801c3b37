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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringstar_core::Digest;
use ringstar_core::digest::ParseDigestError;
use ringstar_fetcher::{Fetcher, ParseReferenceError, Reference, ResolverConfig};
use ringstar_fusedev::{Ino, Session};

use ringstar_layerfs::AddLayerError;
use ringstar_layerfs::resolve::{LayerSource, ResolveError, resolve};
use ringstar_layerfs::{LayerFs, RemoteLayer};

/// Labels containerd (unpacker, CRI) and ctr-remote send with a layer's
/// Prepare (snapshotter-protocol.md §3).
pub mod labels {
    pub const TARGET: &str = "containerd.io/snapshot.ref";
    pub const CRI_REF: &str = "containerd.io/snapshot/cri.image-ref";
    pub const CRI_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    pub const CRI_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
    pub const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
    pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
    pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
    pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
    pub const SKIP_VERIFY: &str = "containerd.io/snapshot/remote/stargz.skipverify";
    /// Marks a committed remote snapshot (the reference's value).
    pub const REMOTE: &str = "containerd.io/snapshot/remote";
    pub const REMOTE_VALUE: &str = "remote snapshot";
}

/// What the remote side is told by the config.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub tail_bytes: u64,
    pub noprefetch: bool,
    /// Hold a container's create until its layers' prefetch is in (as
    /// the reference does), up to `prefetch_timeout`. Off by default: the
    /// container starts at once and its reads join the prefetch windows
    /// in flight (hellobench, WAN, esgz: node 2.48 s → 2.08 s, gcc 1.72 →
    /// 1.57).
    pub prefetch_wait: bool,
    pub prefetch_timeout: Duration,
    pub allow_no_verification: bool,
    pub disable_verification: bool,
    /// How long a resolve may take before Prepare falls back (the
    /// reference: 30 s).
    pub resolve_timeout: Duration,
    /// How long a layer no snapshot uses is kept (pre-resolved for an
    /// image, then not used).
    pub unused_ttl: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            tail_bytes: 512 << 10,
            noprefetch: false,
            prefetch_wait: false,
            prefetch_timeout: Duration::from_secs(10),
            allow_no_verification: false,
            disable_verification: false,
            resolve_timeout: Duration::from_secs(30),
            unused_ttl: Duration::from_secs(120),
        }
    }
}

/// The layer a Prepare's labels name, and the image's other layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub source: LayerSource,
    /// Verify the TOC against `source.toc_digest` (absent only when
    /// verification is off or skipped by label and config).
    pub verify: bool,
    pub others: Vec<LayerSource>,
}

/// Reads the labels of a remote Prepare. `Err`: why it cannot be remote.
pub fn wanted(
    labels: &BTreeMap<String, String>,
    settings: &RemoteSettings,
) -> Result<Wanted, LabelError> {
    let get = |a: &str, b: &str| labels.get(a).or_else(|| labels.get(b)).cloned();
    let reference = get(labels::CRI_REF, labels::STARGZ_REF).ok_or(LabelError::NoReference)?;
    let digest = get(labels::CRI_DIGEST, labels::STARGZ_DIGEST).ok_or(LabelError::NoDigest)?;
    let reference: Reference = reference.parse()?;
    let digest: Digest = digest.parse().map_err(LabelError::Digest)?;
    let (toc_digest, verify) = if settings.disable_verification {
        (None, false)
    } else if let Some(t) = labels.get(labels::TOC_DIGEST) {
        let d = t.parse::<Digest>().map_err(LabelError::TocDigest)?;
        (Some(d), true)
    } else if settings.allow_no_verification
        && labels
            .get(labels::SKIP_VERIFY)
            .is_some_and(|v| v != "false")
    {
        tracing::warn!(layer = %digest, "mounting without TOC verification (skipverify label)");
        (None, false)
    } else {
        return Err(LabelError::NoTocDigest);
    };
    let others = get(labels::CRI_LAYERS, labels::STARGZ_LAYERS)
        .unwrap_or_default()
        .split(',')
        .filter_map(|d| d.trim().parse::<Digest>().ok())
        .filter(|d| *d != digest)
        .map(|d| LayerSource {
            reference: reference.clone(),
            digest: d,
            size: None,
            toc_digest: None,
        })
        .collect();
    Ok(Wanted {
        source: LayerSource {
            reference,
            digest,
            size: None,
            toc_digest,
        },
        verify,
        others,
    })
}

/// Why a Prepare's labels do not name a remote layer (it is then pulled
/// normally).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LabelError {
    #[error("no image reference label")]
    NoReference,
    #[error("no layer digest label")]
    NoDigest,
    #[error("image reference: {0}")]
    Reference(#[from] ParseReferenceError),
    #[error("layer digest: {0}")]
    Digest(ParseDigestError),
    #[error("TOC digest: {0}")]
    TocDigest(ParseDigestError),
    #[error("digest of TOC JSON must be passed (no toc.digest label)")]
    NoTocDigest,
}

/// Why a remote layer cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Resolve(Arc<ResolveError>),
    #[error("resolve panicked: {0}")]
    Panicked(String),
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

/// Resolves at once, at most: the labels of one Prepare name every layer
/// of its image, and each resolve is a thread blocked on the registry.
const RESOLVERS: usize = 4;

#[derive(Debug)]
enum State {
    Resolving,
    Ready(Arc<RemoteLayer>),
    Failed(LayerError),
}

#[derive(Debug)]
struct Slot {
    state: State,
    /// Shown in the mount (a snapshot claimed it).
    mounted: bool,
    /// Show it in the mount once resolved (a restored layer: snapshots
    /// already use it).
    show_when_ready: bool,
    since: Instant,
}

/// The remote layers of the daemon and the FUSE mount showing them.
#[derive(Debug)]
pub struct Remote {
    fs: Arc<LayerFs>,
    session: Mutex<Option<Session>>,
    fetcher: Fetcher,
    resolver: ResolverConfig,
    settings: RemoteSettings,
    mountpoint: PathBuf,
    /// By layer name.
    slots: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
    /// Sources to resolve, taken by [`RESOLVERS`] threads.
    queue: crossbeam_channel::Sender<LayerSource>,
}

impl Remote {
    pub fn new(
        fs: Arc<LayerFs>,
        session: Session,
        mountpoint: PathBuf,
        fetcher: Fetcher,
        resolver: ResolverConfig,
        settings: RemoteSettings,
    ) -> std::io::Result<Arc<Remote>> {
        let (queue, sources) = crossbeam_channel::unbounded::<LayerSource>();
        let remote = Arc::new(Remote {
            fs,
            session: Mutex::new(Some(session)),
            fetcher,
            resolver,
            settings,
            mountpoint,
            slots: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            queue,
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
                mounted: false,
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
        // Resolved without the TOC digest: a pre-resolve does not know it
        // (only the layer's own Prepare carries it), so `claim` checks the
        // TOC's digest before anything is shown; a restore knows it and
        // checks it here.
        let want = source.toc_digest;
        let unverified = LayerSource {
            toc_digest: None,
            ..source
        };
        // A panic in resolving fails this layer (its Prepares fall back)
        // and leaves the resolver serving.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            resolve(
                &self.fetcher,
                &self.resolver,
                &unverified,
                name.clone(),
                self.settings.tail_bytes,
            )
            .map_err(|e| LayerError::Resolve(Arc::new(e)))
        }))
        .unwrap_or_else(|p| {
            Err(LayerError::Panicked(
                ringstar_core::faults::message(&*p).into(),
            ))
        })
        .and_then(|layer| match want {
            Some(w) if layer.layer.toc_digest != w => Err(LayerError::TocMismatch {
                actual: layer.layer.toc_digest,
                expected: w,
            }),
            _ => Ok(layer),
        });
        let mut slots = self.slots.lock().expect("slots");
        if let Some(slot) = slots.get_mut(&name) {
            slot.since = Instant::now();
            match result {
                Ok(layer) => {
                    let layer = Arc::new(layer);
                    if slot.show_when_ready {
                        if let Err(e) = self.fs.add_layer(layer.clone()) {
                            tracing::warn!(layer = %digest, reason = %e, "cannot show the layer");
                            slot.state = State::Failed(e.into());
                            drop(slots);
                            self.changed.notify_all();
                            return;
                        }
                        slot.mounted = true;
                        self.invalidate_root(&layer.name);
                    }
                    slot.state = State::Ready(layer.clone());
                    drop(slots);
                    // A restore knows the TOC digest and checked it: its
                    // fetching starts now. A pre-resolve's TOC is checked
                    // by the layer's own Prepare (`claim`), which starts
                    // it: nothing is fetched for a TOC nobody vouched for.
                    if want.is_some() {
                        self.start_fetching(&layer);
                    }
                    slots = self.slots.lock().expect("slots");
                }
                Err(e) => {
                    tracing::warn!(layer = %digest, reason = %e, "resolve failed");
                    slot.state = State::Failed(e);
                }
            }
        }
        drop(slots);
        self.changed.notify_all();
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

    fn show(&self, layer: &Arc<RemoteLayer>) -> Result<(), LayerError> {
        let mut slots = self.slots.lock().expect("slots");
        let Some(slot) = slots.get_mut(&layer.name) else {
            return Err(LayerError::Released);
        };
        if !slot.mounted {
            self.fs.add_layer(layer.clone())?;
            slot.mounted = true;
            self.invalidate_root(&layer.name);
        }
        Ok(())
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
    /// its prefetch.
    pub fn check_one(self: &Arc<Self>, source: &LayerSource) -> Result<(), LayerError> {
        let deadline = Instant::now() + self.settings.resolve_timeout;
        self.serve(source, deadline).map(|_| ())
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
        let shown = self
            .slots
            .lock()
            .expect("slots")
            .get(name)
            .is_some_and(|s| s.mounted);
        if !shown {
            self.release(name);
        }
    }

    /// Drops layer `name`, which no snapshot uses any more.
    pub fn release(&self, name: &str) {
        let slot = self.slots.lock().expect("slots").remove(name);
        if let Some(slot) = slot {
            if let State::Ready(layer) = &slot.state {
                layer.mark_removed();
                if slot.mounted {
                    self.fs.remove_layer(&layer.name);
                    self.invalidate_root(&layer.name);
                }
            }
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

    fn invalidate_root(&self, name: &str) {
        if let Some(s) = &*self.session.lock().expect("session") {
            let _ = s.invalidate_entry(Ino(1), std::ffi::OsStr::new(name));
            let _ = s.invalidate_inode(Ino(1));
        }
    }

    /// Unmounts the layer filesystem (every layer goes with it).
    pub fn shutdown(&self) {
        if let Some(s) = self.session.lock().expect("session").take()
            && let Err(e) = s.unmount()
        {
            tracing::warn!(error = %e, "unmounting the layer filesystem");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const T: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_labels_win_and_others_are_listed() {
        let l = labels(&[
            (labels::CRI_REF, "127.0.0.1:5000/a/b:latest"),
            (labels::CRI_DIGEST, D1),
            (labels::STARGZ_REF, "other.example/x:1"),
            (labels::CRI_LAYERS, &format!("{D1},{D2}")),
            (labels::TOC_DIGEST, T),
        ]);
        let w = wanted(&l, &RemoteSettings::default()).unwrap();
        assert_eq!(w.source.reference.host, "127.0.0.1:5000");
        assert_eq!(w.source.digest.to_string(), D1);
        assert_eq!(w.source.toc_digest.unwrap().to_string(), T);
        assert!(w.verify);
        assert_eq!(w.others.len(), 1);
        assert_eq!(w.others[0].digest.to_string(), D2);
    }

    #[test]
    fn verification_rules() {
        let base = [
            (labels::STARGZ_REF, "127.0.0.1:5000/a/b:latest"),
            (labels::STARGZ_DIGEST, D1),
        ];
        let s = RemoteSettings::default();
        assert!(
            wanted(&labels(&base), &s)
                .unwrap_err()
                .to_string()
                .contains("TOC")
        );
        let mut skip = base.to_vec();
        skip.push((labels::SKIP_VERIFY, "true"));
        assert!(wanted(&labels(&skip), &s).is_err());
        let allow = RemoteSettings {
            allow_no_verification: true,
            ..RemoteSettings::default()
        };
        assert!(!wanted(&labels(&skip), &allow).unwrap().verify);
        let off = RemoteSettings {
            disable_verification: true,
            ..RemoteSettings::default()
        };
        assert!(!wanted(&labels(&base), &off).unwrap().verify);
        assert!(wanted(&labels(&[(labels::STARGZ_DIGEST, D1)]), &s).is_err());
        let mut bad = base.to_vec();
        bad.push((labels::TOC_DIGEST, "sha256:zz"));
        assert!(wanted(&labels(&bad), &s).is_err());
    }

    /// A layer is known by where its bytes come from and what they are:
    /// an image declaring a victim's layer digest (even its first 96
    /// bits, or all of it) gets another layer, served from its own
    /// registry. Before, the name was the digest's first 24 hex digits.
    #[test]
    fn layers_are_named_by_source_and_digest() {
        let source = |r: &str, d: &str| LayerSource {
            reference: r.parse().unwrap(),
            digest: d.parse().unwrap(),
            size: None,
            toc_digest: None,
        };
        let victim = source("registry.example/team/app:v1", D1);
        let name = victim.layer_name();
        assert_eq!(name.len(), 32);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            source("registry.example/team/app:v2", D1).layer_name(),
            name,
            "tags share"
        );
        assert_ne!(source("evil.example/team/app:v1", D1).layer_name(), name);
        assert_ne!(
            source("registry.example/evil/app:v1", D1).layer_name(),
            name
        );
        let near = format!("sha256:{}{}", &D1[7..31], "2".repeat(40));
        assert_ne!(
            source("registry.example/team/app:v1", &near).layer_name()[..24],
            name[..24]
        );
        assert_ne!(
            source("registry.example/team/app:v1", D2).layer_name(),
            name
        );
    }
}
