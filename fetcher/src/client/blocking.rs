//! The blocking calls, for the control thread: a range, a blob's size
//! and tail, where a blob can be read among a host's endpoints, and a
//! registry blob as a [`ringstar_core::BlobRead`]. Not for a data-plane
//! core: use [`Fetcher::read_range_then`] there.

use std::sync::Arc;

use bytes::Bytes;
use http::Version;

use crate::hosts::Endpoint;
use crate::urls::Shown;

use super::{BlobLocation, FetchError, Fetcher, Inner};

impl Fetcher {
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

    /// Finds where `repository`'s blob `digest` can be read: each endpoint
    /// in order (mirrors, then the origin) gets a size probe (a 2-byte
    /// GET, which also learns a redirect to blob storage and answers an
    /// auth challenge); the first that answers wins. Every failure is
    /// logged and the next endpoint tried.
    pub fn resolve_blob(
        &self,
        endpoints: &[Endpoint],
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
        endpoints: &[Endpoint],
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
        endpoints: &[Endpoint],
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

    /// The blob's size (a 2-byte range GET, falling back to HEAD when the
    /// answer carries no size).
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
            let (head, _) = inner
                .send(&loc, super::transport::Ask::get(Some((0, 0))))
                .await?;
            Ok(head.version)
        })
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
