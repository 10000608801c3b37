//! What a blob is before reading it: its size (a 2-byte GET, which blob
//! storage behind a redirect is signed for, falling back to HEAD) and its
//! size with its tail in one suffix-range request.

use bytes::Bytes;
use http::StatusCode;
use http::header::CONTENT_LENGTH;

use crate::urls::redact;

use super::body::{content_range_of, read_body};
use super::transport::{Ask, LAST_BYTES};
use super::{BlobLocation, FetchError, Inner};

/// `404` as [`FetchError::NotFound`], anything else as
/// [`FetchError::Status`].
fn status_error(url: &str, status: StatusCode) -> FetchError {
    match status {
        StatusCode::NOT_FOUND => FetchError::NotFound { url: redact(url) },
        s => FetchError::Status {
            url: redact(url),
            status: s.as_u16(),
        },
    }
}

fn content_length(head: &http::response::Parts) -> Option<u64> {
    head.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

impl Inner {
    /// Runs `run` under `loc`'s request deadline.
    async fn within_deadline<T>(
        &self,
        loc: &BlobLocation,
        run: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        let timeout = self.timeout(loc);
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or(Err(FetchError::Timeout {
                url: redact(&loc.url),
                after: timeout,
            }))
    }

    /// The blob's size and its last `k` bytes in one request (a suffix
    /// range); `Ok(None)` when the server does not answer one as asked
    /// (the caller probes the size and reads the tail apart).
    pub(super) async fn blob_tail(
        &self,
        loc: &BlobLocation,
        k: u64,
    ) -> Result<Option<(u64, Bytes)>, FetchError> {
        let run = async {
            let (head, mut body) = self
                .send(loc, Ask::get(Some((LAST_BYTES, k.max(1)))))
                .await?;
            match head.status {
                StatusCode::PARTIAL_CONTENT => {}
                StatusCode::OK | StatusCode::RANGE_NOT_SATISFIABLE => return Ok(None),
                s => return Err(status_error(&loc.url, s)),
            }
            let Some((start, end, Some(total))) = content_range_of(&head) else {
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
        self.within_deadline(loc, run).await
    }

    /// The blob's size: a 2-byte GET, then HEAD when the answer carries
    /// no size.
    pub(super) async fn blob_size(&self, loc: &BlobLocation) -> Result<u64, FetchError> {
        let run = async {
            let (head, _) = self.send(loc, Ask::get(Some((0, 1)))).await?;
            let size = match head.status {
                StatusCode::OK => content_length(&head),
                StatusCode::PARTIAL_CONTENT => content_range_of(&head).and_then(|c| c.2),
                s => return Err(status_error(&loc.url, s)),
            };
            if let Some(n) = size {
                return Ok(n);
            }
            let (head, _) = self.send(loc, Ask::new(http::Method::HEAD, None)).await?;
            content_length(&head)
                .filter(|_| head.status == StatusCode::OK)
                .ok_or_else(|| FetchError::BadResponse {
                    url: redact(&loc.url),
                    reason: "no size in the response".into(),
                })
        };
        self.within_deadline(loc, run).await
    }
}
