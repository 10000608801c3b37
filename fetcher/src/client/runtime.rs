//! The fetcher thread: a current-thread tokio runtime that owns the
//! connections and the scheduler, fed jobs through a channel by every
//! [`Fetcher`] clone. Callers block on an answer, or hand a callback that
//! runs on this thread.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::urls::Shown;

use super::host_stats::{HostStats, HostTable};
use super::panics::{caught, panic_message};
use super::transport::{https_client, tls_config};
use super::{BlobLocation, FetchError, FetcherConfig, Inner};

type Job = Box<dyn FnOnce(Arc<Inner>) + Send>;

/// The registry client. Cheap to clone; all clones share one runtime
/// thread and its connections.
#[derive(Clone)]
pub struct Fetcher {
    jobs: mpsc::UnboundedSender<Job>,
    hosts: Arc<HostTable>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

/// The fetcher thread's body: builds the runtime and the client, says it
/// is ready, then runs jobs until every [`Fetcher`] is dropped.
fn serve(
    config: FetcherConfig,
    hosts: Arc<HostTable>,
    tls: rustls::ClientConfig,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let inner = Arc::new(Inner::new(https_client(&config, tls), config, hosts));
        let _ = ready.send(Ok(()));
        while let Some(job) = jobs.recv().await {
            job(inner.clone());
        }
    });
}

impl Fetcher {
    /// Starts the fetcher thread.
    pub fn new(config: FetcherConfig) -> std::io::Result<Fetcher> {
        let tls = tls_config(&config)?;
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let hosts = Arc::new(HostTable::default());
        let h = hosts.clone();
        std::thread::Builder::new()
            .name("fetcher".into())
            .spawn(move || serve(config, h, tls, rx, ready_tx))?;
        ready_rx.recv().map_err(std::io::Error::other)??;
        Ok(Fetcher { jobs: tx, hosts })
    }

    /// Requests, bytes and failures by registry host so far.
    pub fn host_stats(&self) -> Vec<(String, HostStats)> {
        self.hosts.snapshot()
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

    /// Runs `f` on the fetcher thread and blocks the caller for its result.
    pub(super) fn block_on<T, Fut>(
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
}
