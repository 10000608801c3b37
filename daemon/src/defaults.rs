//! Every default the daemon and `ringstar mount` start from, in one
//! place. A default that belongs to a lower crate (the fetcher's request
//! timeout, the loader's read-ahead) is read from it, not copied.

use std::time::Duration;

use ringstar_fetcher::FetcherConfig;
use ringstar_layerfs::LoaderConfig;

/// Bytes of fetched file contents the store keeps (10 GiB).
pub const STORE_SIZE: u64 = 10 << 30;

/// Bytes of a blob's tail fetched at once to find its footer and TOC
/// (512 KiB: the TOC of most layers comes with the footer).
pub const TAIL_BYTES: u64 = 512 << 10;

/// How long a Prepare waits for its layer's resolve before falling back
/// to a normal pull (the reference: 30 s).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for prefetch at create, with `prefetch_wait` (the
/// reference: 10 s).
pub const PREFETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a layer resolved for an image but used by no snapshot is
/// kept (the reference's `resolve_result_entry_ttl_sec`: 120 s).
pub const UNUSED_LAYER_TTL: Duration = Duration::from_secs(120);

/// Complete files are handed to the kernel (FUSE passthrough): reads of
/// them never reach the daemon. On in the daemon and in `ringstar mount`
/// alike; a kernel that refuses it is served as without.
pub const PASSTHROUGH: bool = true;

/// Start even when a stored remote snapshot's layer cannot be restored
/// (the reference refuses to; its snapshots are unavailable until then).
pub const ALLOW_INVALID_MOUNTS_ON_RESTART: bool = true;

/// Keep the layer mount's FUSE connection through restarts (#16).
pub const TAKEOVER: bool = true;

/// How long a SIGTERM'd daemon lets reads in flight finish before it
/// hands the connection over; the rest are resent to the next process.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(250);

/// How long the fd keeper holds a mount for the next process once a
/// daemon is gone (SIGTERM, kill -9). Reads of the mount wait meanwhile;
/// after it they fail, as with no takeover. systemd's fd store has no
/// such limit: it holds until the unit is stopped.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

/// How long `--takeover` waits for the daemon it replaces to exit.
pub const REPLACE_WAIT: Duration = Duration::from_secs(30);

/// An fd keeper holding nothing exits after this long.
pub const KEEPER_IDLE_EXIT: Duration = Duration::from_secs(600);

/// "No timeout", as a duration the fetcher can add to an instant: no
/// timeout a config gives is longer, so an instant plus any of them
/// cannot overflow.
pub const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The per-request registry timeout: the fetcher's (30 s, the
/// reference's).
pub fn request_timeout() -> Duration {
    FetcherConfig::default().request_timeout
}

/// Requests in flight per registry host: the fetcher's.
pub fn max_in_flight_per_host() -> usize {
    FetcherConfig::default().max_in_flight_per_host
}

/// How far a stream of misses may read ahead: the loader's.
pub fn max_read_ahead() -> u64 {
    LoaderConfig::default().max_read_ahead
}

/// Whether complete layers are unpacked for overlayfs (docs/layerfs.md,
/// "Unpacked layers").
pub const UNPACK_COMPLETE: bool = true;

/// Whether starts are recorded and replayed (docs/layerfs.md).
pub const RECORD_STARTS: bool = true;

/// Whether executed files' next opens are predicted: the loader's.
pub fn predict() -> bool {
    LoaderConfig::default().predict
}

/// Threads inflating and verifying fetched chunks: one per CPU.
pub fn inflate_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `[cri_keychain] image_service_path`: containerd's socket, where its
/// CRI plugin serves (the reference's default).
pub const CRI_IMAGE_SERVICE_PATH: &str = "/run/containerd/containerd.sock";

/// `[cri_keychain] listen_path` when unset. The reference serves the
/// ImageService on its snapshots socket; ringstar's snapshots API is
/// another gRPC stack, so the ImageService has a socket of its own.
pub const CRI_LISTEN_PATH: &str = "/run/ringstar/cri.sock";

/// How long credentials from a `PullImage` are kept after it: long
/// enough for the image's layers to be fetched whole in the background.
pub const CRI_CREDENTIALS_TTL: Duration = Duration::from_secs(24 * 3600);
