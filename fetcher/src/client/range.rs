//! Reading one range of a blob: an attempt checks the answer is the
//! range asked (206 with the right `Content-Range`, or the whole blob),
//! and attempts are repeated with per-attempt timeouts and bounded
//! retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::RETRY_AFTER;

use crate::urls::{Shown, redact};

use super::body::{content_range_of, read_body};
use super::panics::caught;
use super::transport::Ask;
use super::{BlobLocation, FetchError, Inner};

/// A failed attempt, and how long the server asked us to wait.
struct Failed {
    error: FetchError,
    retry_after: Option<Duration>,
}

impl From<FetchError> for Failed {
    fn from(error: FetchError) -> Failed {
        Failed {
            error,
            retry_after: None,
        }
    }
}

/// The server's `Retry-After` in seconds. Any number of seconds is a
/// valid Duration; the wait is capped at `backoff_max`.
fn retry_after(head: &http::response::Parts) -> Option<Duration> {
    head.headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Where the asked bytes `[start, end]` begin in this answer's body (0
/// for a matching 206, `start` for the whole blob), or why the answer is
/// not the range asked.
fn body_skip(head: &http::response::Parts, url: &str, start: u64, end: u64) -> Result<u64, Failed> {
    let bad = |reason: String| FetchError::BadResponse {
        url: redact(url),
        reason,
    };
    let past_end = || FetchError::RangeNotSatisfiable {
        url: redact(url),
        start,
        end,
    };
    match head.status {
        StatusCode::PARTIAL_CONTENT => {
            let (from, to, total) = content_range_of(head)
                .ok_or_else(|| bad("206 without a usable Content-Range".into()))?;
            if from == start && to >= end {
                return Ok(0);
            }
            // Cut at the blob's end: the asked range runs past it.
            if from == start && total.is_some_and(|total| to.checked_add(1) == Some(total)) {
                return Err(past_end().into());
            }
            Err(bad(format!("asked bytes {start}-{end}, got {from}-{to}")).into())
        }
        // The whole blob: read only what was asked, then stop.
        StatusCode::OK => Ok(start),
        StatusCode::NOT_FOUND => Err(FetchError::NotFound { url: redact(url) }.into()),
        StatusCode::RANGE_NOT_SATISFIABLE => Err(past_end().into()),
        s => Err(Failed {
            error: FetchError::Status {
                url: redact(url),
                status: s.as_u16(),
            },
            retry_after: retry_after(head),
        }),
    }
}

impl Inner {
    /// The request deadline for `loc`: its own, else the fetcher's.
    pub(super) fn timeout(&self, loc: &BlobLocation) -> Duration {
        loc.request_timeout.unwrap_or(self.config.request_timeout)
    }

    /// [`Inner::fetch_range`] with a panic caught as an error (see
    /// [`caught`]).
    pub(super) async fn fetch_caught(
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
        let timeout = self.timeout(loc);
        let mut attempt = 0u32;
        loop {
            ringstar_core::faults::point_for("fetch", &loc.url);
            let failed = match tokio::time::timeout(timeout, self.attempt(loc, start, end)).await {
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(failed)) => failed,
                Err(_) => Failed::from(FetchError::Timeout {
                    url: redact(&loc.url),
                    after: timeout,
                }),
            };
            let err = failed.error;
            if !err.retryable() {
                return Err(err);
            }
            if attempt >= self.config.max_retries {
                return Err(FetchError::Exhausted {
                    attempts: attempt + 1,
                    last: Box::new(err),
                });
            }
            let wait = self.config.backoff(attempt, failed.retry_after);
            tracing::debug!(url = %Shown(&loc.url), attempt, error = %err, wait_ms = wait.as_millis() as u64, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One attempt at `[start, end]` (inclusive; `end >= start`, as the
    /// scheduler builds them).
    async fn attempt(&self, loc: &BlobLocation, start: u64, end: u64) -> Result<Bytes, Failed> {
        let (head, mut body) = self.send(loc, Ask::get(Some((start, end)))).await?;
        let skip = body_skip(&head, &loc.url, start, end)?;
        Ok(read_body(&mut body, &loc.url, skip, end - start + 1).await?)
    }
}
