//! The fetcher's settings and their defaults, in one place.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::CredentialSource;

/// Fetcher settings (snapshotter-protocol.md §7.3 defaults).
#[derive(Debug, Clone)]
pub struct FetcherConfig {
    /// Per-attempt deadline for headers and body.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Requests in flight per host; more wait, and merge while waiting.
    pub max_in_flight_per_host: usize,
    /// Waiting ranges of one blob closer than this are fetched as one.
    pub coalesce_gap: u64,
    /// Largest merged range.
    pub max_coalesced: u64,
    /// Offer HTTP/2 in ALPN (off: HTTP/1.1 only, for comparison and for
    /// servers with broken HTTP/2).
    pub http2: bool,
    /// Where credentials for a host come from when it asks (401); `None`:
    /// anonymous only.
    pub credentials: Option<Arc<dyn CredentialSource>>,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 5,
            backoff_min: Duration::from_millis(30),
            backoff_max: Duration::from_secs(30),
            ca_file: None,
            max_in_flight_per_host: 16,
            coalesce_gap: 64 << 10,
            max_coalesced: 16 << 20,
            http2: true,
            credentials: None,
        }
    }
}

impl FetcherConfig {
    /// The wait before retry `attempt` (0 for the first retry):
    /// exponential from `backoff_min`, with jitter in `[d, 2d)`, or the
    /// server's `Retry-After`; never more than `backoff_max`.
    pub(super) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self
            .backoff_min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.backoff_max);
        retry_after
            .unwrap_or_else(|| backoff.saturating_add(backoff.mul_f64(fastrand::f64())))
            .min(self.backoff_max)
    }
}
