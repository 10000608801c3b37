//! The daemon's TOML configuration: the reference daemon's keys unchanged
//! (snapshotter-protocol.md §9), so an existing
//! `containerd-stargz-grpc` config works, plus ringstar's own `[ringstar]`
//! table. Keys that do not apply to ringstar are accepted and named once
//! in the log.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use ringstar_fetcher::{MirrorConfig, ResolverConfig};
use ringstar_fusedev::FuseUring;
use serde::Deserialize;

use crate::defaults;
pub use crate::defaults::NO_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

/// The whole file. Absent keys take the reference's effective defaults.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub prefetch_timeout_sec: Option<i64>,
    pub noprefetch: bool,
    pub no_background_fetch: bool,
    pub allow_no_verification: bool,
    pub disable_verification: bool,
    pub resolve_result_entry_ttl_sec: Option<i64>,
    /// TCP address serving Prometheus `/metrics` ("" or absent: off).
    pub metrics_address: Option<String>,
    /// Turns `metrics_address` off.
    pub no_prometheus: bool,
    /// Unix socket serving the debug endpoints ("" or absent: off).
    pub debug_address: Option<String>,
    pub resolver: Resolver,
    pub blob: Blob,
    pub fuse: Fuse,
    pub snapshotter: SnapshotterSection,
    pub cri_keychain: CriKeychainSection,
    pub kubeconfig_keychain: KubeconfigKeychainSection,
    pub ringstar: Ringstar,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Resolver {
    pub request_timeout_sec: Option<i64>,
    pub host: HashMap<String, Host>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Host {
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Mirror {
    pub host: String,
    pub insecure: bool,
    pub request_timeout_sec: i64,
    pub header: BTreeMap<String, HeaderValue>,
}

/// A header is a string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HeaderValue {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Blob {
    pub max_retries: Option<u32>,
    pub min_wait_msec: Option<u64>,
    pub max_wait_msec: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Fuse {
    /// The reference defaults to off; ringstar to on (absent = on).
    pub passthrough: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct SnapshotterSection {
    /// ringstar starts with invalid layers by default; an explicit
    /// `false` restores the reference's refusal to start.
    pub allow_invalid_mounts_on_restart: Option<bool>,
}

/// `[cri_keychain]`: serve kubelet's image service and keep the
/// credentials of its pulls.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct CriKeychainSection {
    pub enable_keychain: bool,
    /// containerd's CRI socket ("" → the default).
    pub image_service_path: Option<String>,
    /// Where kubelet connects ("" → the default).
    pub listen_path: Option<String>,
}

/// `[kubeconfig_keychain]`: read pull secrets through the API server.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct KubeconfigKeychainSection {
    pub enable_keychain: bool,
    /// "" → `$KUBECONFIG`, then `~/.kube/config`.
    pub kubeconfig_path: Option<String>,
}

/// ringstar's own keys.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Ringstar {
    /// Bound of the content store in bytes (default 10 GiB).
    pub store_size: Option<u64>,
    /// FUSE transport, the older key: `auto` (as `fuse_uring`), `ring`
    /// (as `fuse_uring = "on"`), `classic` (as `"off"`).
    pub transport: Option<TransportKey>,
    /// Threads that inflate and verify fetched chunks (default: CPUs).
    pub inflate_workers: Option<usize>,
    /// Bytes of a blob's tail fetched to find footer and TOC (512 KiB).
    pub tail_bytes: Option<u64>,
    /// Registry requests in flight per host (16).
    pub max_in_flight_per_host: Option<usize>,
    /// Background fetch bandwidth cap in bytes per second (0: none).
    pub background_bytes_per_sec: Option<u64>,
    /// Extra CA certificates (PEM) to trust for registries.
    pub ca_file: Option<String>,
    /// Read-ahead a stream of misses may grow to, in bytes (default
    /// 128 KiB: no growth; see `LoaderConfig::max_read_ahead`).
    pub max_read_ahead: Option<u64>,
    /// Fetch what an executed file opens next (its loader, libraries,
    /// interpreter) as soon as its first chunk is in (default true; see
    /// `LoaderConfig::predict`).
    pub predict: Option<bool>,
    /// Record which chunks an image's first start reads, under
    /// `ROOT/starts`, and fetch them in that order when the image next
    /// starts cold (default true).
    pub record_starts: Option<bool>,
    /// Hold container creation until prefetch is in, as the reference
    /// does (default false: containers start at once, their reads
    /// joining the prefetch windows in flight).
    pub prefetch_wait: Option<bool>,
    /// Unpack a layer under `ROOT/unpacked` once every file of it is
    /// stored (hard links to the store: no second copy), so that new
    /// containers' overlays read it without FUSE (default true).
    pub unpack_complete: Option<bool>,
    /// FUSE-over-io_uring and the host-wide knob
    /// `/sys/module/fuse/parameters/enable_uring`: `auto` (the ring when
    /// the knob is already on; the knob is never written), `on` (turn the
    /// knob on if needed, logged, and require the ring), `off` (classic
    /// `/dev/fuse`).
    #[serde(deserialize_with = "de_fuse_uring")]
    pub fuse_uring: Option<FuseUring>,
    /// Keep the layer mount's FUSE connection through restarts, kill -9
    /// and upgrades (default true; docs/snapshotter.md, "Restarts"). Takes
    /// the classic transport: a ring cannot be taken over.
    pub takeover: Option<bool>,
    /// Without systemd: how long the fd keeper holds the mount for the
    /// next process once a daemon is gone (default 30 s).
    pub takeover_wait_sec: Option<u64>,
}

/// `[ringstar] fuse_uring`, checked as the file is read.
fn de_fuse_uring<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<FuseUring>, D::Error> {
    FuseUringChoice::deserialize(d).map(|c| Some(c.into()))
}

/// How `fuse_uring` is spelt, in the config file (`[ringstar]
/// fuse_uring`) and on the command line (`ringstar mount --fuse-uring`):
/// the one parser of the setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FuseUringChoice {
    /// FUSE-over-io_uring if the host's
    /// /sys/module/fuse/parameters/enable_uring is already Y (never
    /// written); classic /dev/fuse otherwise.
    #[default]
    Auto,
    /// Set that host-wide knob if needed (logged) and require the ring.
    On,
    /// Classic /dev/fuse.
    Off,
}

impl From<FuseUringChoice> for FuseUring {
    fn from(c: FuseUringChoice) -> FuseUring {
        match c {
            FuseUringChoice::Auto => FuseUring::Auto,
            FuseUringChoice::On => FuseUring::On,
            FuseUringChoice::Off => FuseUring::Off,
        }
    }
}

/// `[ringstar] transport`, the older key for [`FuseUringChoice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKey {
    /// As `fuse_uring = "auto"`.
    Auto,
    /// As `fuse_uring = "on"`.
    Ring,
    /// As `fuse_uring = "off"`.
    Classic,
}

impl From<TransportKey> for FuseUring {
    fn from(t: TransportKey) -> FuseUring {
        match t {
            TransportKey::Auto => FuseUring::Auto,
            TransportKey::Ring => FuseUring::On,
            TransportKey::Classic => FuseUring::Off,
        }
    }
}

/// Keys ringstar reads; every other key is accepted and logged.
const APPLIED: &[&str] = &[
    "prefetch_timeout_sec",
    "noprefetch",
    "no_background_fetch",
    "allow_no_verification",
    "disable_verification",
    "resolve_result_entry_ttl_sec",
    "metrics_address",
    "no_prometheus",
    "debug_address",
    "resolver.request_timeout_sec",
    "resolver.host",
    "blob.max_retries",
    "blob.min_wait_msec",
    "blob.max_wait_msec",
    "fuse.passthrough",
    "snapshotter.allow_invalid_mounts_on_restart",
    "cri_keychain.enable_keychain",
    "cri_keychain.image_service_path",
    "cri_keychain.listen_path",
    "kubeconfig_keychain.enable_keychain",
    "kubeconfig_keychain.kubeconfig_path",
    "ringstar.store_size",
    "ringstar.transport",
    "ringstar.inflate_workers",
    "ringstar.tail_bytes",
    "ringstar.max_in_flight_per_host",
    "ringstar.background_bytes_per_sec",
    "ringstar.ca_file",
    "ringstar.max_read_ahead",
    "ringstar.predict",
    "ringstar.record_starts",
    "ringstar.prefetch_wait",
    "ringstar.unpack_complete",
    "ringstar.fuse_uring",
];

/// What a config file says, and which of its keys ringstar does not use.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub config: Config,
    pub not_applied: Vec<String>,
}

impl Config {
    /// Reads `path`; a missing file is the defaults only when `optional`
    /// (the default path), as the reference does.
    pub fn load(path: &Path, optional: bool) -> Result<Loaded, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loaded::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Loaded, toml::de::Error> {
        let table: toml::Table = toml::from_str(text)?;
        let config: Config = toml::Value::Table(table.clone()).try_into()?;
        let mut not_applied = Vec::new();
        collect_unapplied(&table, "", &mut not_applied);
        Ok(Loaded {
            config,
            not_applied,
        })
    }

    pub fn prefetch_timeout(&self) -> Duration {
        match self.prefetch_timeout_sec {
            Some(s) if s > 0 => Duration::from_secs(s as u64).min(NO_TIMEOUT),
            _ => defaults::PREFETCH_TIMEOUT,
        }
    }

    /// How long a layer resolved for an image but used by no snapshot is
    /// kept.
    pub fn unused_layer_ttl(&self) -> Duration {
        match self.resolve_result_entry_ttl_sec {
            Some(s) if s > 0 => Duration::from_secs(s as u64).min(NO_TIMEOUT),
            _ => defaults::UNUSED_LAYER_TTL,
        }
    }

    /// The global per-request timeout (`None`: no timeout); absent or 0
    /// is the reference's 30 s.
    pub fn request_timeout(&self) -> Option<Duration> {
        match self.resolver.request_timeout_sec {
            None | Some(0) => Some(defaults::request_timeout()),
            Some(s) => timeout_of(s),
        }
    }

    pub fn resolver_config(&self) -> ResolverConfig {
        let mut mirrors = HashMap::new();
        for (host, h) in &self.resolver.host {
            let list = h
                .mirrors
                .iter()
                .map(|m| MirrorConfig {
                    host: m.host.clone(),
                    insecure: m.insecure,
                    // 0: the global timeout; negative: none.
                    request_timeout: match m.request_timeout_sec {
                        0 => None,
                        s => Some(timeout_of(s).unwrap_or(NO_TIMEOUT)),
                    },
                    headers: m
                        .header
                        .iter()
                        .flat_map(|(k, v)| {
                            let values = match v {
                                HeaderValue::One(s) => vec![s.clone()],
                                HeaderValue::Many(l) => l.clone(),
                            };
                            values.into_iter().map(move |v| (k.clone(), v))
                        })
                        .collect(),
                })
                .collect();
            mirrors.insert(host.clone(), list);
        }
        ResolverConfig { mirrors }
    }

    /// FUSE-over-io_uring and its host-wide knob: `[ringstar] fuse_uring`,
    /// or the older `transport` key (`ring` is `on`, `classic` is `off`).
    /// Both keys are checked as the file is read.
    pub fn fuse_uring(&self) -> FuseUring {
        self.ringstar
            .fuse_uring
            .or(self.ringstar.transport.map(FuseUring::from))
            .unwrap_or(FuseUringChoice::default().into())
    }

    pub fn passthrough(&self) -> bool {
        self.fuse.passthrough.unwrap_or(defaults::PASSTHROUGH)
    }

    pub fn allow_invalid_mounts_on_restart(&self) -> bool {
        self.snapshotter
            .allow_invalid_mounts_on_restart
            .unwrap_or(defaults::ALLOW_INVALID_MOUNTS_ON_RESTART)
    }
}

/// A timeout in seconds; negative means none. No timeout is longer than
/// [`NO_TIMEOUT`], so an instant plus any of them cannot overflow.
fn timeout_of(secs: i64) -> Option<Duration> {
    u64::try_from(secs)
        .ok()
        .map(|s| Duration::from_secs(s).min(NO_TIMEOUT))
}

fn collect_unapplied(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if APPLIED.contains(&path.as_str()) {
            continue;
        }
        match v {
            toml::Value::Table(t) if APPLIED.iter().any(|a| a.starts_with(&format!("{path}."))) => {
                collect_unapplied(t, &path, out)
            }
            _ => out.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_is_accepted_and_unused_keys_named() {
        let loaded = Config::parse(
            r#"
metrics_address = "127.0.0.1:8234"
noprefetch = true
prefetch_timeout_sec = 3
[blob]
chunk_size = 50000
max_retries = 2
[directory_cache]
direct = true
[fuse]
attr_timeout = 1
[resolver]
request_timeout_sec = 12
[[resolver.host."docker.io".mirrors]]
host = "mirror.example:5000"
insecure = true
request_timeout_sec = -1
[resolver.host."docker.io".mirrors.header]
x-one = "a"
x-many = ["b", "c"]
[ringstar]
store_size = 1048576
"#,
        )
        .unwrap();
        let c = &loaded.config;
        assert!(c.noprefetch);
        assert_eq!(c.prefetch_timeout(), Duration::from_secs(3));
        assert_eq!(c.blob.max_retries, Some(2));
        assert_eq!(c.request_timeout(), Some(Duration::from_secs(12)));
        assert_eq!(c.ringstar.store_size, Some(1 << 20));
        let r = c.resolver_config();
        let m = &r.mirrors["docker.io"][0];
        assert_eq!(m.host, "mirror.example:5000");
        assert!(m.insecure);
        assert_eq!(m.request_timeout, Some(NO_TIMEOUT));
        let mut h = m.headers.clone();
        h.sort();
        assert_eq!(
            h,
            vec![
                ("x-many".to_string(), "b".to_string()),
                ("x-many".to_string(), "c".to_string()),
                ("x-one".to_string(), "a".to_string())
            ]
        );
        let mut na = loaded.not_applied.clone();
        na.sort();
        assert_eq!(
            na,
            vec!["blob.chunk_size", "directory_cache", "fuse.attr_timeout",]
        );
        assert!(c.passthrough());
        assert!(c.allow_invalid_mounts_on_restart());
    }

    #[test]
    fn the_documented_example_is_all_applied() {
        let loaded = Config::parse(include_str!("../../docs/examples/config.toml")).unwrap();
        assert_eq!(loaded.not_applied, Vec::<String>::new());
        assert_eq!(loaded.config.ringstar.store_size, Some(10 << 30));
    }

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("").unwrap().config;
        assert_eq!(c.prefetch_timeout(), Duration::from_secs(10));
        assert_eq!(c.request_timeout(), Some(Duration::from_secs(30)));
        let zero = Config::parse("[resolver]\nrequest_timeout_sec = 0\n")
            .unwrap()
            .config;
        assert_eq!(zero.request_timeout(), Some(Duration::from_secs(30)));
        let none = Config::parse("[resolver]\nrequest_timeout_sec = -1\n")
            .unwrap()
            .config;
        assert_eq!(none.request_timeout(), None);
        assert!(Config::parse("noprefetch = 3").is_err());
        assert!(Config::parse("[[[").is_err());
        // Absurd numbers are bounded: an instant plus any timeout the
        // config gives cannot overflow (it panicked the fetch task).
        let huge = Config::parse(&format!(
            "prefetch_timeout_sec = {m}\nresolve_result_entry_ttl_sec = {m}\n\
             [resolver]\nrequest_timeout_sec = {m}\n\
             [[resolver.host.\"r.example\".mirrors]]\nhost = \"m.example\"\nrequest_timeout_sec = {m}\n",
            m = i64::MAX
        ))
        .unwrap()
        .config;
        let now = std::time::Instant::now();
        for d in [
            huge.prefetch_timeout(),
            huge.unused_layer_ttl(),
            huge.request_timeout().unwrap(),
            huge.resolver_config().mirrors["r.example"][0]
                .request_timeout
                .unwrap(),
        ] {
            assert!(now.checked_add(d).is_some() && d <= NO_TIMEOUT, "{d:?}");
        }
        assert_eq!(
            Config::parse("[ringstar]\nfuse_uring = \"on\"\n")
                .unwrap()
                .config
                .ringstar
                .fuse_uring,
            Some(FuseUring::On)
        );
        assert!(Config::parse("[ringstar]\nfuse_uring = \"maybe\"\n").is_err());
        let missing = Path::new("/nonexistent/ringstar.toml");
        assert!(Config::load(missing, true).is_ok());
        assert!(Config::load(missing, false).is_err());
    }
}
