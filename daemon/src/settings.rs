//! [`Settings`]: what the daemon runs with, every default resolved once
//! from the config file ([`Settings::from_config`]); `ringstar mount`
//! starts from the same ([`Settings::default`]) and applies its flags.
//! The defaults themselves are [`crate::defaults`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringstar_fetcher::CredentialSource;
use ringstar_fetcher::auth::Keychain;
use ringstar_fetcher::{DockerConfig, FetcherConfig, ResolverConfig};
use ringstar_fusedev::{FuseUring, MountOptions};
use ringstar_layerfs::{BackgroundConfig, LoaderConfig};

use crate::config::Config;
use crate::cri::CriKeychain;
use crate::defaults::{self, NO_TIMEOUT};
use crate::kubeconfig::KubeconfigKeychain;
use crate::remote::RemoteSettings;

/// Everything the daemon's parts are configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Bound of the content store in bytes.
    pub store_size: u64,
    /// Threads inflating and verifying fetched chunks.
    pub inflate_workers: usize,
    /// Hand complete files to the kernel (FUSE passthrough).
    pub passthrough: bool,
    /// Record each image's first start under `ROOT/starts` and replay it
    /// when the image next starts cold.
    pub record_starts: bool,
    /// Unpack complete layers under `ROOT/unpacked` for new overlays.
    pub unpack_complete: bool,
    /// FUSE-over-io_uring and its host-wide knob.
    pub fuse_uring: FuseUring,
    /// Registry requests: timeouts, retries, credentials (the docker
    /// config), extra CAs.
    pub fetcher: FetcherConfig,
    /// Mirrors per registry host.
    pub resolver: ResolverConfig,
    /// Read-ahead and background fetch.
    pub loader: LoaderConfig,
    /// Resolving, verifying, prefetching and keeping remote layers.
    pub remote: RemoteSettings,
    /// Start even when a stored remote snapshot's layer cannot be
    /// restored.
    pub allow_invalid_mounts_on_restart: bool,
    /// Keep the FUSE connection through restarts (takeover).
    pub takeover: bool,
    /// How long the fd keeper holds the mount for a successor.
    pub takeover_wait: Duration,
    /// Replace a daemon running on the same root (`--takeover`).
    pub replace_running: bool,
    /// Where Prometheus scrapes `/metrics` (`metrics_address`, unless
    /// `no_prometheus`).
    pub metrics_address: Option<String>,
    /// The unix socket of the debug endpoints (`debug_address`).
    pub debug_address: Option<PathBuf>,
    /// Kubelet's image service and its credentials (`[cri_keychain]`).
    pub cri: Option<CriSettings>,
    /// Pull secrets through the API server (`[kubeconfig_keychain]`).
    pub kubeconfig: Option<KubeconfigSettings>,
}

/// The kubeconfig keychain: the kubeconfig (`None`: `$KUBECONFIG`, then
/// `~/.kube/config`) and the secrets read (shared with the fetcher).
#[derive(Debug, Clone)]
pub struct KubeconfigSettings {
    pub path: Option<PathBuf>,
    pub keychain: Arc<KubeconfigKeychain>,
}

/// The CRI keychain: where kubelet connects, where containerd's CRI is,
/// and the credentials kept (shared with the fetcher's credentials).
#[derive(Debug, Clone)]
pub struct CriSettings {
    pub listen_path: PathBuf,
    pub image_service_path: PathBuf,
    pub keychain: Arc<CriKeychain>,
}

impl CriSettings {
    fn from_config(config: &Config) -> Option<CriSettings> {
        let c = &config.cri_keychain;
        let path = |p: &Option<String>, default: &str| {
            PathBuf::from(p.as_deref().filter(|p| !p.is_empty()).unwrap_or(default))
        };
        c.enable_keychain.then(|| CriSettings {
            listen_path: path(&c.listen_path, defaults::CRI_LISTEN_PATH),
            image_service_path: path(&c.image_service_path, defaults::CRI_IMAGE_SERVICE_PATH),
            keychain: Arc::new(CriKeychain::new(defaults::CRI_CREDENTIALS_TTL)),
        })
    }
}

impl Default for Settings {
    /// The defaults: an empty config file.
    fn default() -> Settings {
        Settings::from_config(&Config::default())
    }
}

impl Settings {
    /// The settings a config file gives; absent keys take the defaults.
    pub fn from_config(config: &Config) -> Settings {
        let r = &config.ringstar;
        let cri = CriSettings::from_config(config);
        let k = &config.kubeconfig_keychain;
        let kubeconfig = k.enable_keychain.then(|| KubeconfigSettings {
            path: k
                .kubeconfig_path
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            keychain: Arc::default(),
        });
        Settings {
            store_size: r.store_size.unwrap_or(defaults::STORE_SIZE),
            inflate_workers: r
                .inflate_workers
                .filter(|&n| n > 0)
                .unwrap_or_else(defaults::inflate_workers),
            passthrough: config.passthrough(),
            record_starts: r.record_starts.unwrap_or(defaults::RECORD_STARTS),
            unpack_complete: r.unpack_complete.unwrap_or(defaults::UNPACK_COMPLETE),
            fuse_uring: config.fuse_uring(),
            fetcher: fetcher_config(config, cri.as_ref(), kubeconfig.as_ref()),
            resolver: config.resolver_config(),
            loader: LoaderConfig {
                background: BackgroundConfig {
                    enabled: !config.no_background_fetch,
                    bytes_per_sec: r.background_bytes_per_sec.unwrap_or(0),
                    ..BackgroundConfig::default()
                },
                max_read_ahead: r.max_read_ahead.unwrap_or_else(defaults::max_read_ahead),
                predict: r.predict.unwrap_or_else(defaults::predict),
                ..LoaderConfig::default()
            },
            remote: RemoteSettings {
                tail_bytes: r
                    .tail_bytes
                    .filter(|&t| t > 0)
                    .unwrap_or(defaults::TAIL_BYTES),
                noprefetch: config.noprefetch,
                prefetch_wait: r.prefetch_wait.unwrap_or(false),
                prefetch_timeout: config.prefetch_timeout(),
                allow_no_verification: config.allow_no_verification,
                disable_verification: config.disable_verification,
                unused_ttl: config.unused_layer_ttl(),
                ..RemoteSettings::default()
            },
            allow_invalid_mounts_on_restart: config.allow_invalid_mounts_on_restart(),
            takeover: r.takeover.unwrap_or(defaults::TAKEOVER),
            takeover_wait: r
                .takeover_wait_sec
                .map_or(defaults::TAKEOVER_WAIT, Duration::from_secs),
            replace_running: false,
            metrics_address: config
                .metrics_address
                .clone()
                .filter(|a| !a.is_empty() && !config.no_prometheus),
            debug_address: config
                .debug_address
                .as_ref()
                .filter(|a| !a.is_empty())
                .map(PathBuf::from),
            cri,
            kubeconfig,
        }
    }

    /// The FUSE mount options: ringstar's names, passthrough and the
    /// transport.
    pub fn mount_options(&self) -> MountOptions {
        let mut options = MountOptions {
            fsname: "ringstar".into(),
            subtype: "ringstar".into(),
            passthrough: self.passthrough,
            ..MountOptions::default()
        };
        self.fuse_uring.apply(&mut options);
        options.takeover = self.takes_over();
        options
    }

    /// Whether the mount is kept through restarts: asked for, and not
    /// ruled out by a required ring (which cannot be taken over).
    pub fn takes_over(&self) -> bool {
        self.takeover && self.fuse_uring != FuseUring::On
    }
}

/// Credentials: kubelet's for the image it pulled (with the CRI
/// keychain), then the docker config, then the cluster's pull secrets
/// (with the kubeconfig keychain).
fn fetcher_config(
    config: &Config,
    cri: Option<&CriSettings>,
    kubeconfig: Option<&KubeconfigSettings>,
) -> FetcherConfig {
    let r = &config.ringstar;
    let b = &config.blob;
    let positive = |ms: Option<u64>| ms.filter(|&m| m > 0).map(Duration::from_millis);
    let default = FetcherConfig::default();
    FetcherConfig {
        credentials: Some(credentials(cri, kubeconfig)),
        ca_file: r.ca_file.as_ref().map(PathBuf::from),
        request_timeout: config.request_timeout().unwrap_or(NO_TIMEOUT),
        max_retries: b.max_retries.unwrap_or(default.max_retries),
        backoff_min: positive(b.min_wait_msec).unwrap_or(default.backoff_min),
        backoff_max: positive(b.max_wait_msec).unwrap_or(default.backoff_max),
        max_in_flight_per_host: r
            .max_in_flight_per_host
            .filter(|&n| n > 0)
            .unwrap_or_else(defaults::max_in_flight_per_host),
        ..default
    }
}

fn credentials(
    cri: Option<&CriSettings>,
    kubeconfig: Option<&KubeconfigSettings>,
) -> Arc<dyn CredentialSource> {
    let docker: Arc<dyn CredentialSource> = Arc::new(DockerConfig::from_env());
    if cri.is_none() && kubeconfig.is_none() {
        return docker;
    }
    let mut sources: Vec<Arc<dyn CredentialSource>> = Vec::new();
    sources.extend(cri.map(|c| c.keychain.clone() as Arc<dyn CredentialSource>));
    sources.push(docker);
    sources.extend(kubeconfig.map(|k| k.keychain.clone() as Arc<dyn CredentialSource>));
    Arc::new(Keychain(sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_is_the_defaults() {
        let s = Settings::default();
        assert_eq!(s.store_size, defaults::STORE_SIZE);
        assert_eq!(s.remote.tail_bytes, defaults::TAIL_BYTES);
        assert_eq!(s.remote.resolve_timeout, defaults::RESOLVE_TIMEOUT);
        assert_eq!(s.fetcher.request_timeout, defaults::request_timeout());
        assert_eq!(s.loader.max_read_ahead, defaults::max_read_ahead());
        assert!(s.passthrough && s.mount_options().passthrough);
        assert_eq!(s.fuse_uring, FuseUring::Auto);
        assert!(s.loader.background.enabled);
        assert!(s.allow_invalid_mounts_on_restart);
        assert!(s.takes_over() && s.mount_options().takeover);
    }

    #[test]
    fn the_file_wins() {
        let loaded = Config::parse(
            "no_background_fetch = true\n[fuse]\npassthrough = false\n\
             [blob]\nmax_retries = 1\nmin_wait_msec = 0\n\
             [ringstar]\nstore_size = 5\ntail_bytes = 0\ntransport = \"classic\"\n",
        )
        .unwrap();
        let s = Settings::from_config(&loaded.config);
        assert_eq!(s.store_size, 5);
        assert_eq!(
            s.remote.tail_bytes,
            defaults::TAIL_BYTES,
            "0 is the default"
        );
        assert!(!s.passthrough && !s.loader.background.enabled);
        assert_eq!(s.fuse_uring, FuseUring::Off);
        assert_eq!(s.fetcher.max_retries, 1);
        assert_eq!(
            s.fetcher.backoff_min,
            FetcherConfig::default().backoff_min,
            "0 is the default"
        );
        let both = Config::parse("[ringstar]\ntransport = \"classic\"\nfuse_uring = \"on\"\n")
            .unwrap()
            .config;
        assert_eq!(both.fuse_uring(), FuseUring::On, "fuse_uring wins");
        assert!(Config::parse("[ringstar]\ntransport = \"fast\"\n").is_err());
    }
}
