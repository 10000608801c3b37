//! The HTTP client: hyper on rustls, HTTP/2 where the server offers it
//! (ALPN; one connection per host carrying many streams) and HTTP/1.1 with
//! a keep-alive pool otherwise, on a current-thread tokio runtime that
//! lives on its own thread. Callers block ([`Fetcher::read_range`]), or
//! hand a callback that runs on the fetcher thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::auth::{Challenge, CredentialSource, Credentials};
use crate::urls::{Shown, redact};

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

/// Why a fetch failed. Callers serving a read turn any of these into EIO.
///
/// Every URL in an error is as [`Shown`] shows it (no query, no
/// userinfo): errors are logged and written to state files, and a blob
/// storage URL's query is its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: range {start}-{end} is past the end of the blob")]
    RangeNotSatisfiable { url: String, start: u64, end: u64 },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: timed out after {0:?}", .after)]
    Timeout { url: String, after: Duration },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    /// TLS refused (certificate, protocol): retrying will not help.
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    /// The server answered something that is not what was asked.
    #[error("{url}: bad response: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("giving up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: u32,
        last: Box<FetchError>,
    },
    /// The registry refused us, or asked for credentials we do not have.
    #[error("{url}: unauthorized: {reason}")]
    Unauthorized { url: String, reason: String },
    #[error("bad request: {0}")]
    Invalid(String),
    /// A redirect we do not follow (a downgrade from https to http, a
    /// scheme other than http/https): not retried.
    #[error("{url}: refused redirect to {target}: {reason}")]
    RedirectRefused {
        url: String,
        target: String,
        reason: String,
    },
    /// A token realm that must not receive our credentials (plain http
    /// for an https registry): not retried.
    #[error("{url}: refused token realm {realm}: {reason}")]
    RealmRefused {
        url: String,
        realm: String,
        reason: String,
    },
    /// The fetch panicked (a bug); the fetcher goes on serving.
    #[error("{url}: internal error: {reason}")]
    Internal { url: String, reason: String },
    #[error("the fetcher has stopped")]
    Stopped,
}

impl FetchError {
    /// Worth another attempt: connection trouble, timeouts, 429 and 5xx
    /// (but 501).
    fn retryable(&self) -> bool {
        match self {
            FetchError::Transport { .. } | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }
}

/// A blob's location: its URL and the headers to send with it. Its
/// `Debug` shows the URL redacted and the headers' names only (a mirror's
/// headers may carry credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Overrides the fetcher's request timeout (per-mirror setting).
    pub request_timeout: Option<Duration>,
}

impl std::fmt::Debug for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("BlobLocation")
            .field("url", &Shown(&self.url))
            .field("headers", &names)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Locks a std mutex of the fetcher's, taking over one a panic poisoned:
/// every critical section leaves its state consistent between statements,
/// and a panicking fetch must not stop the fetcher.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The message of a caught panic.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Inner {
    client: HttpsClient,
    config: FetcherConfig,
    sched: std::sync::Mutex<Sched>,
    auth: AuthState,
    /// Registry blob URL → the blob-storage URL it redirected to, used
    /// until that refuses us (an expired signed URL) and is asked again.
    redirects: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// A bearer token and when to stop using it.
struct Token {
    header: String,
    expires: std::time::Instant,
}

/// One token per (host, scope); the async lock makes concurrent requests
/// that need a new token wait for one token request.
type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// What each host asked for, and the tokens we hold.
#[derive(Default)]
struct AuthState {
    challenges: std::sync::Mutex<std::collections::HashMap<String, Challenge>>,
    tokens: std::sync::Mutex<std::collections::HashMap<(String, String), TokenSlot>>,
}

/// Someone waiting for `[start, end]` (inclusive) of a fetch.
struct Waiter {
    start: u64,
    end: u64,
    tx: tokio::sync::oneshot::Sender<Result<Bytes, FetchError>>,
}

/// One range request to make, and who waits for parts of it.
struct Fetch {
    loc: BlobLocation,
    start: u64,
    end: u64,
    waiters: Vec<Waiter>,
}

#[derive(Default)]
struct HostState {
    in_flight: usize,
    queue: std::collections::VecDeque<Fetch>,
    /// A request to this host has completed, so a connection exists and
    /// its protocol is known. Until then one request runs at a time: a
    /// burst of first requests would each open a TLS connection before
    /// ALPN could tell they may share one HTTP/2 connection.
    warmed: bool,
}

impl HostState {
    fn limit(&self, max: usize) -> usize {
        if self.warmed { max.max(1) } else { 1 }
    }
}

/// Fetches running and waiting, per host: what single-flight and
/// coalescing look at.
#[derive(Default)]
struct Sched {
    hosts: std::collections::HashMap<String, HostState>,
    running: std::collections::HashMap<u64, Fetch>,
    next_id: u64,
}

fn host_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or(url)
        .to_string()
}

type Job = Box<dyn FnOnce(Arc<Inner>) + Send>;

/// The registry client. Cheap to clone; all clones share one runtime
/// thread and its connections.
#[derive(Clone)]
pub struct Fetcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

fn tls_config(config: &FetcherConfig) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_file_iter(path).map_err(std::io::Error::other)? {
            roots
                .add(cert.map_err(std::io::Error::other)?)
                .map_err(std::io::Error::other)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2, http/1.1) is set by the connector builder from the
    // protocols it enables.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Fetcher {
    /// Starts the fetcher thread.
    pub fn new(config: FetcherConfig) -> std::io::Result<Fetcher> {
        let tls = tls_config(&config)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("fetcher".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut http = HttpConnector::new();
                    http.enforce_http(false);
                    http.set_connect_timeout(Some(config.connect_timeout));
                    http.set_nodelay(true);
                    let builder = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls)
                        .https_or_http()
                        .enable_http1();
                    let https = if config.http2 {
                        builder.enable_http2().wrap_connector(http)
                    } else {
                        builder.wrap_connector(http)
                    };
                    let client = Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(90))
                        .pool_max_idle_per_host(16)
                        .build(https);
                    let inner = Arc::new(Inner {
                        client,
                        config,
                        sched: std::sync::Mutex::new(Sched::default()),
                        auth: AuthState::default(),
                        redirects: std::sync::Mutex::new(Default::default()),
                    });
                    let _ = ready_tx.send(Ok(()));
                    while let Some(job) = rx.recv().await {
                        job(inner.clone());
                    }
                });
            })?;
        ready_rx.recv().map_err(std::io::Error::other)??;
        Ok(Fetcher { jobs: tx })
    }

    /// Runs `f(result)` on the fetcher thread once `[offset, offset+len)`
    /// of the blob has arrived (or failed for good). `f` must not block.
    pub fn read_range_then(
        &self,
        loc: &BlobLocation,
        offset: u64,
        len: u64,
        f: impl FnOnce(Result<Bytes, FetchError>) + Send + 'static,
    ) {
        let loc = loc.clone();
        let job: Job = Box::new(move |inner: Arc<Inner>| {
            tokio::spawn(async move {
                let result = inner.read_range(&loc, offset, len).await;
                // The caller's callback runs on the fetcher's runtime: its
                // panic is contained here and logged, nothing else is owed.
                let run = std::panic::AssertUnwindSafe(move || f(result));
                if let Err(p) = std::panic::catch_unwind(run) {
                    tracing::error!(url = %Shown(&loc.url), panic = %panic_message(&*p), "a read_range_then callback panicked; the fetcher goes on");
                }
            });
        });
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            drop(job);
        }
    }

    /// Fetches `[offset, offset+len)` of the blob, blocking the caller.
    /// Not for a data-plane core: use [`Fetcher::read_range_then`] there.
    pub fn read_range(
        &self,
        loc: &BlobLocation,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, FetchError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.read_range_then(loc, offset, len, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| FetchError::Stopped)?
    }

    /// Runs `f` on the fetcher thread and blocks the caller for its result.
    fn block_on<T, Fut>(
        &self,
        f: impl FnOnce(Arc<Inner>) -> Fut + Send + 'static,
    ) -> Result<T, FetchError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, FetchError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::new(move |inner: Arc<Inner>| {
            tokio::spawn(async move {
                let _ = tx.send(caught("", f(inner)).await);
            });
        });
        self.jobs.send(job).map_err(|_| FetchError::Stopped)?;
        rx.recv().map_err(|_| FetchError::Stopped)?
    }

    /// Finds where `repository`'s blob `digest` can be read: each endpoint
    /// in order (mirrors, then the origin) gets a size probe (a 2-byte
    /// GET, which also learns a redirect to blob storage and answers an
    /// auth challenge); the first that answers wins. Every failure is
    /// logged and the next endpoint tried.
    pub fn resolve_blob(
        &self,
        endpoints: &[crate::hosts::Endpoint],
        repository: &str,
        digest: &str,
    ) -> Result<(BlobLocation, u64), FetchError> {
        self.first_endpoint(endpoints, repository, digest, |inner, loc| async move {
            let size = inner.blob_size(&loc).await?;
            Ok((loc, size))
        })
    }

    /// Like [`Fetcher::resolve_blob`], with the blob's last `k` bytes
    /// from the same request when the endpoint answers a suffix range
    /// (one round trip to find the blob, its size, footer and TOC);
    /// `None` for the tail when it does not.
    pub fn resolve_blob_tail(
        &self,
        endpoints: &[crate::hosts::Endpoint],
        repository: &str,
        digest: &str,
        k: u64,
    ) -> Result<(BlobLocation, u64, Option<Bytes>), FetchError> {
        self.first_endpoint(
            endpoints,
            repository,
            digest,
            move |inner, loc| async move {
                match inner.blob_tail(&loc, k).await? {
                    Some((size, tail)) => Ok((loc, size, Some(tail))),
                    None => {
                        let size = inner.blob_size(&loc).await?;
                        Ok((loc, size, None))
                    }
                }
            },
        )
    }

    /// The first answer of `ask` over the endpoints in order; each failure
    /// is logged and the next endpoint tried.
    fn first_endpoint<T, F, Fut>(
        &self,
        endpoints: &[crate::hosts::Endpoint],
        repository: &str,
        digest: &str,
        ask: F,
    ) -> Result<T, FetchError>
    where
        T: Send + 'static,
        F: Fn(Arc<Inner>, BlobLocation) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<T, FetchError>> + Send + 'static,
    {
        let mut last = FetchError::Invalid("no endpoints".into());
        for e in endpoints {
            let loc = BlobLocation {
                url: e.blob_url(repository, digest),
                headers: e.headers.clone(),
                request_timeout: e.request_timeout,
            };
            let ask = ask.clone();
            match self.block_on(move |inner| ask(inner, loc)) {
                Ok(found) => return Ok(found),
                Err(err) => {
                    tracing::info!(endpoint = %Shown(&e.base), error = %err, "blob not available here, trying the next endpoint");
                    last = err;
                }
            }
        }
        Err(last)
    }

    /// The blob's size (HEAD, or a 2-byte range GET when HEAD is refused).
    pub fn blob_size(&self, loc: &BlobLocation) -> Result<u64, FetchError> {
        let loc = loc.clone();
        self.block_on(move |inner| async move { inner.blob_size(&loc).await })
    }

    /// The last `k` bytes of a `size`-byte blob, in one request: footer and
    /// (usually) TOC together.
    pub fn read_tail(&self, loc: &BlobLocation, size: u64, k: u64) -> Result<Bytes, FetchError> {
        let k = k.min(size);
        self.read_range(loc, size - k, k)
    }

    /// The HTTP version the last response for `loc` came over (for tests
    /// and logs).
    pub fn probe_version(&self, loc: &BlobLocation) -> Result<Version, FetchError> {
        let loc = loc.clone();
        self.block_on(move |inner| async move {
            let (head, _) = inner.send(&loc, Some((0, 0)), http::Method::GET).await?;
            Ok(head.version)
        })
    }
}

/// Bytes `[skip, skip + want)` of a response body; a body that ends
/// sooner is a transport error (the connection broke).
async fn read_body(
    body: &mut hyper::body::Incoming,
    url: &str,
    skip: u64,
    want: u64,
) -> Result<Bytes, FetchError> {
    // `want` is the caller's length (never a number from the wire); the
    // first allocation is bounded all the same.
    let mut out = Vec::with_capacity(want.min(MAX_BODY_PREALLOC) as usize);
    let mut skipped = 0u64;
    while (out.len() as u64) < want {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| FetchError::Transport {
            url: redact(url),
            reason: format!("body: {e}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut data: &[u8] = &data;
        if skipped < skip {
            let n = (skip - skipped).min(data.len() as u64) as usize;
            skipped += n as u64;
            data = &data[n..];
        }
        let n = ((want - out.len() as u64) as usize).min(data.len());
        out.extend_from_slice(&data[..n]);
    }
    if (out.len() as u64) < want {
        return Err(FetchError::Transport {
            url: redact(url),
            reason: format!("body ended after {} of {want} bytes", out.len()),
        });
    }
    Ok(Bytes::from(out))
}

/// The most a response body buffer is allocated for up front (it grows
/// as bytes arrive): 64 MiB, more than any chunk or TOC read.
const MAX_BODY_PREALLOC: u64 = 64 << 20;

/// Runs `fut` as its own task, so that a panic in it (a bug) becomes
/// [`FetchError::Internal`], logged once, instead of unwinding through the
/// scheduler's bookkeeping or dropping the answer.
async fn caught<T: Send + 'static>(
    url: &str,
    fut: impl std::future::Future<Output = Result<T, FetchError>> + Send + 'static,
) -> Result<T, FetchError> {
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_panic() {
                format!("panicked: {}", panic_message(&*e.into_panic()))
            } else {
                "cancelled".to_string()
            };
            tracing::error!(url = %Shown(url), reason, "a fetch task failed; its waiters get an error and the fetcher goes on");
            Err(FetchError::Internal {
                url: redact(url),
                reason,
            })
        }
    }
}

/// A range `(LAST_BYTES, n)` asks for the blob's last `n` bytes
/// (`Range: bytes=-n`).
const LAST_BYTES: u64 = u64::MAX;

/// The rustls error behind a request failure, if TLS is what failed
/// (tokio-rustls wraps it in an io::Error somewhere down the chain).
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error::source() skips the error it wraps: step into it.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

/// The OAuth2 token form: the password grant, or the refresh-token grant
/// for an identity token (no username).
fn token_form(c: &Credentials, service: Option<&str>, scopes: &[String]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    if c.username.is_empty() {
        form.append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &c.secret);
    } else {
        form.append_pair("grant_type", "password")
            .append_pair("username", &c.username)
            .append_pair("password", &c.secret);
    }
    if let Some(s) = service {
        form.append_pair("service", s);
    }
    form.append_pair("scope", &scopes.join(" "))
        .append_pair("client_id", "ringstar");
    form.finish()
}

/// The classic token GET's query: `service` and one `scope` each.
fn token_query(service: Option<&str>, scopes: &[String]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = service {
        query.append_pair("service", s);
    }
    for s in scopes {
        query.append_pair("scope", s);
    }
    query.finish()
}

/// Parses `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`), as
/// a server sends it (untrusted).
pub fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

impl Inner {
    fn timeout(&self, loc: &BlobLocation) -> Duration {
        loc.request_timeout.unwrap_or(self.config.request_timeout)
    }

    /// Sends one request to `url` with these headers; returns the
    /// response head and the rest of it.
    async fn send_to(
        &self,
        url: &str,
        headers: &[(String, String)],
        authorization: Option<&str>,
        range: Option<(u64, u64)>,
        method: http::Method,
    ) -> Result<(http::response::Parts, hyper::body::Incoming), FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| FetchError::Invalid(format!("{}: {e}", Shown(url))))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT_ENCODING, "identity");
        match range {
            Some((LAST_BYTES, n)) => req = req.header(RANGE, format!("bytes=-{n}")),
            Some((start, end)) => req = req.header(RANGE, format!("bytes={start}-{end}")),
            None => {}
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Full::default())
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        self.request(url, req).await
    }

    async fn request(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, hyper::body::Incoming), FetchError> {
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| match tls_error(&e) {
                Some(reason) => FetchError::Tls {
                    url: redact(url),
                    reason,
                },
                None => FetchError::Transport {
                    url: redact(url),
                    reason: format!("{e:?}"),
                },
            })?;
        Ok(resp.into_parts())
    }

    /// Sends one request for the blob at `loc`, as a registry client
    /// must: straight to blob storage when the registry redirected there
    /// before (asking the registry again when storage refuses: a signed
    /// URL expired); otherwise to the registry with its headers and the
    /// host's authorization, answering one 401 challenge, and following
    /// one redirect (absolute only) with none of the registry's headers.
    async fn send(
        &self,
        loc: &BlobLocation,
        range: Option<(u64, u64)>,
        method: http::Method,
    ) -> Result<(http::response::Parts, hyper::body::Incoming), FetchError> {
        let cached = lock(&self.redirects).get(&loc.url).cloned();
        if let Some(target) = cached {
            let (head, body) = self
                .send_to(&target, &[], None, range, method.clone())
                .await?;
            if head.status != StatusCode::FORBIDDEN && head.status != StatusCode::UNAUTHORIZED {
                return Ok((head, body));
            }
            tracing::info!(url = %Shown(&loc.url), status = head.status.as_u16(), "blob storage refused the redirect URL; asking the registry again");
            lock(&self.redirects).remove(&loc.url);
        }
        let mut authorization = self.authorization(&loc.url).await?;
        let mut answered = false;
        loop {
            let (head, body) = self
                .send_to(
                    &loc.url,
                    &loc.headers,
                    authorization.as_deref(),
                    range,
                    method.clone(),
                )
                .await?;
            if head.status == StatusCode::UNAUTHORIZED {
                if answered {
                    return Err(FetchError::Unauthorized {
                        url: redact(&loc.url),
                        reason: "the registry refused the credentials".into(),
                    });
                }
                let challenges: Vec<String> = head
                    .headers
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                drop(body);
                authorization = Some(
                    self.reauthorize(&loc.url, &challenges, authorization.as_deref())
                        .await?,
                );
                answered = true;
                continue;
            }
            if head.status.is_redirection()
                && let Some(target) = head.headers.get(LOCATION).and_then(|v| v.to_str().ok())
            {
                // Only to http(s), never down from https to http: the
                // refusal is final (a retry would be redirected the same).
                if let Err(reason) = crate::urls::check_redirect(&loc.url, target) {
                    tracing::warn!(url = %Shown(&loc.url), target = %Shown(target), reason, "refused a redirect");
                    return Err(FetchError::RedirectRefused {
                        url: redact(&loc.url),
                        target: redact(target),
                        reason: reason.to_string(),
                    });
                }
                let target = target.to_string();
                drop(body);
                lock(&self.redirects).insert(loc.url.clone(), target.clone());
                return self.send_to(&target, &[], None, range, method).await;
            }
            return Ok((head, body));
        }
    }

    /// The `Authorization` header for `url` from what its host asked for
    /// before (nothing until it asks).
    async fn authorization(&self, url: &str) -> Result<Option<String>, FetchError> {
        let host = host_of(url);
        let challenge = lock(&self.auth.challenges).get(&host).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => self.basic_authorization(&host, url).await.map(Some),
            Some(challenge) => {
                let slot = self.token_slot(&host, url);
                let mut token = slot.lock().await;
                if let Some(t) = token
                    .as_ref()
                    .filter(|t| t.expires > std::time::Instant::now())
                {
                    return Ok(Some(t.header.clone()));
                }
                let t = self.fetch_token(&host, url, &challenge).await?;
                let header = t.header.clone();
                *token = Some(t);
                Ok(Some(header))
            }
        }
    }

    /// Answers a 401: remembers the host's challenge and returns a new
    /// `Authorization` (a token another request fetched meanwhile, or a
    /// fresh one). `failed` is what was refused.
    async fn reauthorize(
        &self,
        url: &str,
        challenges: &[String],
        failed: Option<&str>,
    ) -> Result<String, FetchError> {
        let host = host_of(url);
        let challenge =
            Challenge::parse(challenges.iter().map(String::as_str)).ok_or_else(|| {
                FetchError::Unauthorized {
                    url: redact(url),
                    reason: "401 without a Basic or Bearer challenge".into(),
                }
            })?;
        lock(&self.auth.challenges).insert(host.clone(), challenge.clone());
        if challenge == Challenge::Basic {
            let header = self.basic_authorization(&host, url).await?;
            if failed == Some(header.as_str()) {
                return Err(FetchError::Unauthorized {
                    url: redact(url),
                    reason: "the registry refused the credentials".into(),
                });
            }
            return Ok(header);
        }
        let slot = self.token_slot(&host, url);
        let mut token = slot.lock().await;
        if let Some(t) = token
            .as_ref()
            .filter(|t| Some(t.header.as_str()) != failed && t.expires > std::time::Instant::now())
        {
            return Ok(t.header.clone());
        }
        let t = self.fetch_token(&host, url, &challenge).await?;
        let header = t.header.clone();
        *token = Some(t);
        Ok(header)
    }

    fn token_slot(&self, host: &str, url: &str) -> TokenSlot {
        let scope = crate::auth::pull_scope(url).unwrap_or_default();
        lock(&self.auth.tokens)
            .entry((host.to_string(), scope))
            .or_default()
            .clone()
    }

    /// Credentials for `host`, looked up off the runtime (a helper program
    /// may run). Errors are the source's words, which carry no secret.
    async fn credentials(&self, host: &str, url: &str) -> Result<Option<Credentials>, FetchError> {
        let Some(source) = self.config.credentials.clone() else {
            return Ok(None);
        };
        let h = host.to_string();
        tokio::task::spawn_blocking(move || source.lookup(&h))
            .await
            .map_err(|e| FetchError::Internal {
                url: redact(url),
                reason: format!("credential lookup: {e}"),
            })?
            .map_err(|e| FetchError::Unauthorized {
                url: redact(url),
                reason: e.to_string(),
            })
    }

    async fn basic_authorization(&self, host: &str, url: &str) -> Result<String, FetchError> {
        match self.credentials(host, url).await? {
            Some(c) if !c.username.is_empty() => Ok(crate::auth::basic_header(&c)),
            _ => Err(FetchError::Unauthorized {
                url: redact(url),
                reason: format!("{host} asks for a username and password and none is configured"),
            }),
        }
    }

    /// The token flow: with credentials, the OAuth2 form POST (password or
    /// refresh-token grant), falling back to a GET with Basic credentials
    /// when the server has no OAuth2 endpoint; anonymous, a plain GET.
    async fn fetch_token(
        &self,
        host: &str,
        url: &str,
        challenge: &Challenge,
    ) -> Result<Token, FetchError> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = challenge
        else {
            return Err(FetchError::Invalid("not a bearer challenge".into()));
        };
        // The realm gets our credentials (the password grant): never over
        // plain http for an https registry. Final: not retried.
        if let Err(reason) = crate::urls::check_realm(url, realm) {
            tracing::warn!(url = %Shown(url), realm = %Shown(realm), reason, "refused a token realm; no credentials sent");
            return Err(FetchError::RealmRefused {
                url: redact(url),
                realm: redact(realm),
                reason: reason.to_string(),
            });
        }
        let mut scopes: Vec<String> = crate::auth::pull_scope(url).into_iter().collect();
        if let Some(s) = scope
            && !scopes.contains(s)
        {
            scopes.push(s.clone());
        }
        let creds = self.credentials(host, url).await?;
        let unauthorized = |reason: String| FetchError::Unauthorized {
            url: redact(url),
            reason,
        };
        let shown_realm = Shown(realm);
        let mut status = None;
        if let Some(c) = &creds {
            let form = token_form(c, service.as_deref(), &scopes);
            let req = Request::post(realm.as_str())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::from(form))
                .map_err(|e| unauthorized(format!("token realm {shown_realm}: {e}")))?;
            let (head, body) = self.request(realm, req).await?;
            match head.status {
                StatusCode::OK => return self.token_from(realm, body, url).await,
                // No OAuth2 endpoint here (or it does not take these
                // credentials): the classic GET with Basic credentials.
                StatusCode::BAD_REQUEST
                | StatusCode::UNAUTHORIZED
                | StatusCode::NOT_FOUND
                | StatusCode::METHOD_NOT_ALLOWED
                    if !c.username.is_empty() =>
                {
                    status = Some(head.status);
                }
                s => {
                    return Err(unauthorized(format!(
                        "token server {shown_realm} answered {}",
                        s.as_u16()
                    )));
                }
            }
        }
        let query = token_query(service.as_deref(), &scopes);
        let sep = if realm.contains('?') { '&' } else { '?' };
        let token_url = format!("{realm}{sep}{query}");
        let authorization = creds.as_ref().map(crate::auth::basic_header);
        let (head, body) = self
            .send_to(
                &token_url,
                &[],
                authorization.as_deref(),
                None,
                http::Method::GET,
            )
            .await?;
        if head.status != StatusCode::OK {
            return Err(unauthorized(format!(
                "token server {shown_realm} answered {}{}",
                head.status.as_u16(),
                status.map_or(String::new(), |s| format!(
                    " (and {} to the OAuth2 form)",
                    s.as_u16()
                ))
            )));
        }
        self.token_from(realm, body, url).await
    }

    async fn token_from(
        &self,
        realm: &str,
        body: hyper::body::Incoming,
        url: &str,
    ) -> Result<Token, FetchError> {
        const MAX_ANSWER: usize = 1 << 20;
        let unauthorized = |reason: String| FetchError::Unauthorized {
            url: redact(url),
            reason,
        };
        let realm = Shown(realm);
        let limited = http_body_util::Limited::new(body, MAX_ANSWER);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| unauthorized(format!("token server {realm}: {e}")))?
            .to_bytes();
        let (token, expires_in) = crate::auth::parse_token_answer(&bytes)
            .ok_or_else(|| unauthorized(format!("token server {realm} sent no token")))?;
        // expires_in is untrusted: clamped (u64::MAX seconds overflowed
        // the Instant, a panic in the fetch task).
        let now = std::time::Instant::now();
        Ok(Token {
            header: format!("Bearer {token}"),
            expires: now
                .checked_add(crate::auth::token_lifetime(expires_in))
                .unwrap_or(now),
        })
    }

    /// One attempt at `[start, end]` (inclusive).
    async fn attempt(
        &self,
        loc: &BlobLocation,
        start: u64,
        end: u64,
    ) -> Result<Bytes, (FetchError, Option<Duration>)> {
        let url = &loc.url;
        let (head, body) = self
            .send(loc, Some((start, end)), http::Method::GET)
            .await
            .map_err(|e| (e, None))?;
        // Any number of seconds is a valid Duration; fetch_range caps the
        // wait at backoff_max.
        let retry_after = head
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // end >= start: read_range builds them so.
        let want = end - start + 1;
        let bad = |reason: String| {
            (
                FetchError::BadResponse {
                    url: redact(url),
                    reason,
                },
                None,
            )
        };
        let past_end = || {
            (
                FetchError::RangeNotSatisfiable {
                    url: redact(url),
                    start,
                    end,
                },
                None,
            )
        };
        let skip = match head.status {
            StatusCode::PARTIAL_CONTENT => {
                let cr = head
                    .headers
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range)
                    .ok_or_else(|| bad("206 without a usable Content-Range".into()))?;
                if cr.0 != start || cr.1 < end {
                    // Cut at the blob's end: the asked range runs past it.
                    if cr.0 == start && cr.2.is_some_and(|total| cr.1.checked_add(1) == Some(total))
                    {
                        return Err(past_end());
                    }
                    return Err(bad(format!(
                        "asked bytes {start}-{end}, got {}-{}",
                        cr.0, cr.1
                    )));
                }
                0
            }
            // The whole blob: read only what was asked, then stop.
            StatusCode::OK => start,
            StatusCode::NOT_FOUND => return Err((FetchError::NotFound { url: redact(url) }, None)),
            StatusCode::RANGE_NOT_SATISFIABLE => return Err(past_end()),
            s => {
                return Err((
                    FetchError::Status {
                        url: redact(url),
                        status: s.as_u16(),
                    },
                    retry_after,
                ));
            }
        };
        let mut body = body;
        read_body(&mut body, url, skip, want)
            .await
            .map_err(|e| (e, None))
    }

    /// `[offset, offset+len)` through the scheduler: joins a running fetch
    /// that covers it (single-flight), or a waiting one of the same blob
    /// near it (coalescing), or starts or queues its own.
    async fn read_range(
        self: Arc<Self>,
        loc: &BlobLocation,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, FetchError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| FetchError::Invalid("range overflows".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = Waiter {
            start: offset,
            end,
            tx,
        };
        let start_now = {
            let mut s = lock(&self.sched);
            self.enqueue(&mut s, loc, waiter)
        };
        if let Some((id, fetch_loc, start, end)) = start_now {
            self.clone().spawn_fetch(id, fetch_loc, start, end);
        }
        rx.await.map_err(|_| FetchError::Stopped)?
    }

    /// Places a waiter; returns a fetch to start now, if any.
    fn enqueue(
        &self,
        s: &mut Sched,
        loc: &BlobLocation,
        w: Waiter,
    ) -> Option<(u64, BlobLocation, u64, u64)> {
        if let Some(f) = s
            .running
            .values_mut()
            .find(|f| f.loc == *loc && f.start <= w.start && w.end <= f.end)
        {
            f.waiters.push(w);
            return None;
        }
        let (gap, max) = (self.config.coalesce_gap, self.config.max_coalesced);
        let host = s.hosts.entry(host_of(&loc.url)).or_default();
        if let Some(f) = host.queue.iter_mut().find(|f| {
            let (lo, hi) = (f.start.min(w.start), f.end.max(w.end));
            f.loc == *loc
                && w.start <= f.end.saturating_add(gap)
                && f.start <= w.end.saturating_add(gap)
                && hi - lo < max
        }) {
            f.start = f.start.min(w.start);
            f.end = f.end.max(w.end);
            f.waiters.push(w);
            return None;
        }
        let fetch = Fetch {
            loc: loc.clone(),
            start: w.start,
            end: w.end,
            waiters: vec![w],
        };
        if host.in_flight >= host.limit(self.config.max_in_flight_per_host) {
            host.queue.push_back(fetch);
            return None;
        }
        host.in_flight += 1;
        Some(Self::run(s, fetch))
    }

    fn run(s: &mut Sched, fetch: Fetch) -> (u64, BlobLocation, u64, u64) {
        let id = s.next_id;
        s.next_id += 1;
        let r = (id, fetch.loc.clone(), fetch.start, fetch.end);
        s.running.insert(id, fetch);
        r
    }

    fn spawn_fetch(self: Arc<Self>, id: u64, loc: BlobLocation, start: u64, end: u64) {
        tokio::spawn(async move {
            // A panic in the fetch (a bug) is caught as an error here, so
            // the bookkeeping below always runs: the host's in-flight count
            // and the single-flight entry are released and every waiter is
            // answered.
            let result = self.clone().fetch_caught(&loc, start, end).await;
            let (done, next) = {
                let mut s = lock(&self.sched);
                let done = s.running.remove(&id);
                let max = self.config.max_in_flight_per_host;
                let host = s.hosts.entry(host_of(&loc.url)).or_default();
                host.warmed = true;
                host.in_flight = host.in_flight.saturating_sub(1);
                let mut start = Vec::new();
                while host.in_flight < host.limit(max)
                    && let Some(f) = host.queue.pop_front()
                {
                    host.in_flight += 1;
                    start.push(f);
                }
                let next: Vec<_> = start.into_iter().map(|f| Self::run(&mut s, f)).collect();
                (done, next)
            };
            for (nid, nloc, ns, ne) in next {
                self.clone().spawn_fetch(nid, nloc, ns, ne);
            }
            let Some(done) = done else { return };
            match result {
                Ok(bytes) => {
                    for w in done.waiters {
                        // fetch_range returns exactly end - start + 1
                        // bytes and every waiter lies inside; checked all
                        // the same, since a slice out of range panics.
                        let (lo, hi) = (w.start - start, w.end - start);
                        let part = if hi < bytes.len() as u64 {
                            Ok(bytes.slice(lo as usize..=hi as usize))
                        } else {
                            Err(FetchError::Internal {
                                url: redact(&loc.url),
                                reason: format!("{} bytes for range {start}-{end}", bytes.len()),
                            })
                        };
                        let _ = w.tx.send(part);
                    }
                }
                // A merged range can fail for one part (past the end) that
                // alone would; each waiter then tries its own range.
                Err(e)
                    if done
                        .waiters
                        .iter()
                        .any(|w| (w.start, w.end) != (start, end)) =>
                {
                    tracing::debug!(url = %Shown(&loc.url), error = %e, "merged range failed; retrying parts alone");
                    for w in done.waiters {
                        let inner = self.clone();
                        let loc = loc.clone();
                        tokio::spawn(async move {
                            let _ = w.tx.send(inner.fetch_caught(&loc, w.start, w.end).await);
                        });
                    }
                }
                Err(e) => {
                    for w in done.waiters {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }

    /// [`Inner::fetch_range`] with a panic caught as an error (see
    /// [`caught`]).
    async fn fetch_caught(
        self: Arc<Self>,
        loc: &BlobLocation,
        start: u64,
        end: u64,
    ) -> Result<Bytes, FetchError> {
        let l = loc.clone();
        caught(
            &loc.url,
            async move { self.fetch_range(&l, start, end).await },
        )
        .await
    }

    /// `[start, end]` (inclusive) with per-attempt timeouts and bounded
    /// retries (exponential backoff with jitter, honouring Retry-After).
    async fn fetch_range(
        &self,
        loc: &BlobLocation,
        start: u64,
        end: u64,
    ) -> Result<Bytes, FetchError> {
        let offset = start;
        let timeout = self.timeout(loc);
        let mut attempt = 0u32;
        loop {
            ringstar_core::faults::point_for("fetch", &loc.url);
            let result = match tokio::time::timeout(timeout, self.attempt(loc, offset, end)).await {
                Ok(r) => r,
                Err(_) => Err((
                    FetchError::Timeout {
                        url: redact(&loc.url),
                        after: timeout,
                    },
                    None,
                )),
            };
            let (err, retry_after) = match result {
                Ok(b) => return Ok(b),
                Err(e) => e,
            };
            if !err.retryable() {
                return Err(err);
            }
            if attempt >= self.config.max_retries {
                return Err(FetchError::Exhausted {
                    attempts: attempt + 1,
                    last: Box::new(err),
                });
            }
            let backoff = self
                .config
                .backoff_min
                .saturating_mul(1u32 << attempt.min(20))
                .min(self.config.backoff_max);
            // Jitter: wait in [d, 2d).
            let wait = retry_after
                .unwrap_or_else(|| backoff.saturating_add(backoff.mul_f64(fastrand::f64())))
                .min(self.config.backoff_max);
            tracing::debug!(url = %Shown(&loc.url), attempt, error = %err, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// A 2-byte GET (what blob storage behind a redirect is signed for),
    /// falling back to HEAD when the answer carries no size.
    /// The blob's size and its last `k` bytes in one request (a suffix
    /// range); `Ok(None)` when the server does not answer one as asked
    /// (the caller probes the size and reads the tail apart).
    async fn blob_tail(
        &self,
        loc: &BlobLocation,
        k: u64,
    ) -> Result<Option<(u64, Bytes)>, FetchError> {
        let timeout = self.timeout(loc);
        let url = redact(&loc.url);
        let run = async {
            let (head, mut body) = self
                .send(loc, Some((LAST_BYTES, k.max(1))), http::Method::GET)
                .await?;
            match head.status {
                StatusCode::PARTIAL_CONTENT => {}
                StatusCode::NOT_FOUND => return Err(FetchError::NotFound { url: url.clone() }),
                StatusCode::OK | StatusCode::RANGE_NOT_SATISFIABLE => return Ok(None),
                s => {
                    return Err(FetchError::Status {
                        url: url.clone(),
                        status: s.as_u16(),
                    });
                }
            }
            let Some((start, end, Some(total))) = head
                .headers
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range)
            else {
                return Ok(None);
            };
            // What a suffix range must be: the end of the blob, at most k
            // bytes (numbers from the wire: checked).
            let len = match end.checked_sub(start).and_then(|d| d.checked_add(1)) {
                Some(len) if end.checked_add(1) == Some(total) && len <= k.max(1) => len,
                _ => return Ok(None),
            };
            let tail = read_body(&mut body, &loc.url, 0, len).await?;
            Ok(Some((total, tail)))
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(FetchError::Timeout {
                url: redact(&loc.url),
                after: timeout,
            }))
    }

    async fn blob_size(&self, loc: &BlobLocation) -> Result<u64, FetchError> {
        let timeout = self.timeout(loc);
        let url = redact(&loc.url);
        let run = async {
            let (head, _) = self.send(loc, Some((0, 1)), http::Method::GET).await?;
            let size = match head.status {
                StatusCode::OK => head
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
                StatusCode::PARTIAL_CONTENT => head
                    .headers
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range)
                    .and_then(|c| c.2),
                StatusCode::NOT_FOUND => return Err(FetchError::NotFound { url: url.clone() }),
                s => {
                    return Err(FetchError::Status {
                        url: url.clone(),
                        status: s.as_u16(),
                    });
                }
            };
            if let Some(n) = size {
                return Ok(n);
            }
            let (head, _) = self.send(loc, None, http::Method::HEAD).await?;
            head.headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .filter(|_| head.status == StatusCode::OK)
                .ok_or_else(|| FetchError::BadResponse {
                    url: url.clone(),
                    reason: "no size in the response".into(),
                })
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(FetchError::Timeout {
                url: redact(&loc.url),
                after: timeout,
            }))
    }
}

/// A remote blob as a [`ringstar_core::BlobRead`], so a layer opens
/// straight from a registry. Blocking: for the control thread.
#[derive(Debug, Clone)]
pub struct RemoteBlob {
    pub fetcher: Fetcher,
    pub location: BlobLocation,
}

impl ringstar_core::BlobRead for RemoteBlob {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.fetcher
            .read_range(&self.location, offset, len as u64)
            .map(|b| b.to_vec())
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9, Some(100))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(content_range("bytes x-9/100"), None);
        assert_eq!(content_range("items 0-9/100"), None);
    }

    #[test]
    fn locations_and_errors_show_no_query_userinfo_or_header_values() {
        let loc = BlobLocation {
            url: "https://u:pw@s3.example/b/o?X-Amz-Signature=SIG".into(),
            headers: vec![("authorization".into(), "Bearer TOKEN".into())],
            request_timeout: None,
        };
        let shown = format!("{loc:?}");
        assert!(shown.contains("https://s3.example/b/o?REDACTED"), "{shown}");
        for secret in ["SIG", "TOKEN", "pw@"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn retry_policy() {
        let s = |status| FetchError::Status {
            url: String::new(),
            status,
        };
        assert!(s(429).retryable() && s(503).retryable() && s(500).retryable());
        assert!(!s(501).retryable() && !s(404).retryable() && !s(403).retryable());
        assert!(!FetchError::NotFound { url: String::new() }.retryable());
        let refused = FetchError::RedirectRefused {
            url: String::new(),
            target: String::new(),
            reason: String::new(),
        };
        let realm = FetchError::RealmRefused {
            url: String::new(),
            realm: String::new(),
            reason: String::new(),
        };
        let internal = FetchError::Internal {
            url: String::new(),
            reason: String::new(),
        };
        assert!(!refused.retryable() && !realm.retryable() && !internal.retryable());
    }
}
