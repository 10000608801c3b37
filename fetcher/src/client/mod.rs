//! The HTTP client: hyper on rustls, HTTP/2 where the server offers it
//! (ALPN; one connection per host carrying many streams) and HTTP/1.1 with
//! a keep-alive pool otherwise, on a current-thread tokio runtime that
//! lives on its own thread. Callers block ([`Fetcher::read_range`]), or
//! hand a callback that runs on the fetcher thread.
//!
//! A request goes down these modules: `runtime` (the thread, jobs in)
//! → `scheduler` (single-flight, per-host limits, coalescing) → `range`
//! (attempts, retries, the answer checked against the range asked;
//! `probe` for sizes and tails) → `redirect` (registry or blob storage,
//! one 401 answered through `authorize` and `token_fetch`) → `transport`
//! (one HTTP exchange) → `body` (the bytes). `config` and `error` hold
//! the settings and failures every layer shares; `blocking` the calls for
//! the control thread. `registry`, `upload` and `stream` are the rest of
//! the distribution API, for the image tools: manifests, blob uploads and
//! mounts, a blob read as a stream.

use std::sync::Arc;

use host_stats::HostTable;

mod authorize;
mod blocking;
mod body;
mod config;
mod error;
mod host_stats;
mod location;
mod panics;
mod probe;
mod range;
mod redirect;
mod registry;
mod runtime;
mod scheduler;
mod stream;
mod token_fetch;
mod transport;
mod upload;

pub use blocking::RemoteBlob;
pub use body::content_range;
pub use config::FetcherConfig;
pub use error::FetchError;
pub use host_stats::HostStats;
pub use location::BlobLocation;
pub use registry::FetchedManifest;
pub use runtime::Fetcher;
pub use stream::BlobReader;
pub use upload::{BlobUpload, Mounted, UPLOAD_CHUNK};

/// What the fetcher thread's tasks share: the HTTP client, the settings,
/// the scheduler's state, what hosts asked for and where registries
/// redirected. Every std mutex here guards in-memory state only and is
/// never held across an `.await`.
struct Inner {
    client: transport::HttpsClient,
    hosts: Arc<HostTable>,
    config: FetcherConfig,
    sched: std::sync::Mutex<scheduler::Sched>,
    auth: authorize::AuthState,
    redirects: redirect::Redirects,
}

impl Inner {
    fn new(client: transport::HttpsClient, config: FetcherConfig, hosts: Arc<HostTable>) -> Inner {
        Inner {
            client,
            hosts,
            config,
            sched: Default::default(),
            auth: Default::default(),
            redirects: Default::default(),
        }
    }
}

/// Locks a std mutex of the fetcher's, taking over one a panic poisoned:
/// every critical section leaves its state consistent between statements,
/// and a panicking fetch must not stop the fetcher.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `host[:port]` of a URL: what per-host limits and authorization
/// are keyed by.
fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(url)
        .to_string()
}
