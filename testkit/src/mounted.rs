//! A layer filesystem over Debian's real docker-registry, mounted for
//! real: what the layerfs tests share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::Registry;
use ringstar_core::store::Store;
use ringstar_core::writer::{WriterOptions, build_to_vec};
use ringstar_core::{Digest, tar};
use ringstar_fetcher::{Fetcher, FetcherConfig, Reference, ResolverConfig};
use ringstar_fusedev::{MountOptions, Session, TransportChoice, UringKnob};
use ringstar_layerfs::resolve::{LayerSource, ResolveError, resolve};
use ringstar_layerfs::{LayerFs, Loader, LoaderConfig, RemoteLayer};

pub fn testdata() -> PathBuf {
    std::env::var_os("RINGSTAR_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/estargz")
        })
}

pub fn fetcher_config() -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        max_retries: 2,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..FetcherConfig::default()
    }
}

/// The loader's defaults without background fetch (tests count requests).
pub fn no_background() -> LoaderConfig {
    LoaderConfig {
        background: ringstar_layerfs::BackgroundConfig {
            enabled: false,
            ..Default::default()
        },
        ..LoaderConfig::default()
    }
}

/// A mounted layer filesystem with its store and loader.
#[allow(missing_debug_implementations)] // holds the filesystem, which has no useful Debug
pub struct Mounted {
    pub fs: Arc<LayerFs>,
    pub loader: Arc<Loader>,
    pub fetcher: Fetcher,
    pub session: Option<Session>,
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(store_dir: &Path, capacity: u64, config: LoaderConfig) -> Mounted {
        Self::with_fetcher(store_dir, capacity, config, fetcher_config())
    }

    pub fn with_fetcher(
        store_dir: &Path,
        capacity: u64,
        loader_config: LoaderConfig,
        config: FetcherConfig,
    ) -> Mounted {
        let fetcher = Fetcher::new(config).unwrap();
        let store = Arc::new(Store::open(store_dir, capacity).unwrap());
        let loader = Loader::new(store, fetcher.clone(), 2, loader_config).unwrap();
        let fs = Arc::new(LayerFs::new(loader.clone(), true));
        let dir = tempfile::tempdir().unwrap();
        let session = Session::mount(
            fs.clone(),
            dir.path(),
            &MountOptions {
                transport: TransportChoice::Auto,
                uring_knob: UringKnob::Enable,
                ..MountOptions::default()
            },
        )
        .unwrap();
        Mounted {
            fs,
            loader,
            fetcher,
            session: Some(session),
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Resolves a layer from `registry` and adds it as `name`.
    pub fn add(
        &self,
        registry: &str,
        repo: &str,
        name: &str,
        digest: &str,
        toc_digest: Option<&str>,
    ) -> Result<Arc<RemoteLayer>, ResolveError> {
        let source = LayerSource {
            reference: format!("{registry}/{repo}:latest")
                .parse::<Reference>()
                .unwrap(),
            digest: digest.parse().unwrap(),
            size: None,
            toc_digest: toc_digest.map(|d| d.parse::<Digest>().unwrap()),
        };
        let layer = Arc::new(resolve(
            &self.fetcher,
            &ResolverConfig::default(),
            &source,
            name.to_string(),
            512 << 10,
        )?);
        self.fs.add_layer(layer.clone()).unwrap();
        self.invalidate_root(name);
        Ok(layer)
    }

    /// Removes layer `name` as the daemon will.
    pub fn remove(&self, name: &str) {
        self.fs.remove_layer(name).unwrap();
        self.invalidate_root(name);
    }

    fn invalidate_root(&self, name: &str) {
        if let Some(s) = &self.session {
            let _ = s.invalidate_entry(ringstar_fusedev::Ino(1), std::ffi::OsStr::new(name));
            let _ = s.invalidate_inode(ringstar_fusedev::Ino(1));
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.unmount();
        }
    }
}

/// Pushes a testdata case's blob; returns (spec, digest).
pub fn push_case(reg: &Registry, name: &str) -> (serde_json::Value, String) {
    let dir = testdata();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let blob = std::fs::read(dir.join(format!("{name}.blob"))).unwrap();
    let digest = reg.push("conformance/layers", &blob);
    (spec, digest)
}

/// Mounts a read-only overlay of `lowers` (uppermost first) on a fresh
/// directory, runs `check` on it, unmounts it, and then fails as `check`
/// did (so a failed check never leaves the mount behind).
pub fn with_overlay(lowers: &[&Path], check: impl FnOnce(&Path) + std::panic::UnwindSafe) {
    let merged = tempfile::tempdir().unwrap();
    let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!("lowerdir={}", lowerdir.join(":"));
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(merged.path())
        .status()
        .unwrap();
    assert!(st.success(), "overlay mount failed");
    let path = merged.path().to_path_buf();
    let result = std::panic::catch_unwind(move || check(&path));
    let _ = std::process::Command::new("umount")
        .arg(merged.path())
        .status();
    result.unwrap();
}

/// A tar of `(name, content)` regular files (dirs implied) and extra
/// entries.
pub fn tar_of(files: &[(&str, &[u8])], extra: &[tar::Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let e = tar::Entry {
            name: name.to_string(),
            size: data.len() as u64,
            mode: 0o644,
            entry_type: Some(tar::EntryType::Reg),
            mtime: 1_700_000_000,
            ..tar::Entry::default()
        };
        out.extend_from_slice(&tar::encode_header(&e));
        out.extend_from_slice(data);
        out.resize(out.len() + tar::padding(data.len() as u64), 0);
    }
    for e in extra {
        out.extend_from_slice(&tar::encode_header(e));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// An eStargz blob of `tar` with our writer; returns (blob, TOC digest).
pub fn estargz(tar: &[u8], opts: &WriterOptions) -> (Vec<u8>, String) {
    let built = build_to_vec(tar, opts).unwrap();
    let toc = built.1.toc_digest.to_string();
    (built.0, toc)
}

/// Deterministic, mildly compressible bytes.
pub fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 3 == 0 {
                b'a' + (x % 26) as u8
            } else {
                (x >> 8) as u8
            }
        })
        .collect()
}
