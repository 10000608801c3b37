//! The distribution API beyond range reads, for the image tools: a
//! manifest by tag or digest, a small blob whole (a config), whether a
//! blob is there, a manifest put. Each is one request under the request
//! deadline, retried like a range read when the failure is worth it.
//! Everything a registry answers is untrusted: bodies are read up to a
//! bound the caller gives, digests are checked.

use bytes::Bytes;
use http::StatusCode;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::BodyExt;
use ringstar_core::Digest;

use crate::repository::Repository;
use crate::urls::{Shown, redact};

use super::transport::{Ask, Response};
use super::{BlobLocation, FetchError, Fetcher, Inner};

/// The most of a registry's error body kept for a message.
const MAX_ERROR_BODY: usize = 16 << 10;

/// A manifest or index as the registry sent it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its `Content-Type`.
    pub media_type: String,
    /// The digest of `bytes` (checked against a digest reference).
    pub digest: Digest,
    pub bytes: Bytes,
}

impl Inner {
    /// Sends `ask` to `url` (the repository's endpoint headers, auth,
    /// redirects) under the request deadline, retrying retryable
    /// failures with backoff; `check` turns a response into the answer.
    pub(super) async fn exchange<T, F, Fut>(
        &self,
        repo: &Repository,
        url: &str,
        ask: Ask,
        check: F,
    ) -> Result<T, FetchError>
    where
        F: Fn(Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        let loc = BlobLocation {
            url: url.to_string(),
            headers: repo.endpoint.headers.clone(),
            request_timeout: repo.endpoint.request_timeout,
        };
        let timeout = self.timeout(&loc);
        let mut attempt = 0u32;
        loop {
            let once = async { check(self.send(&loc, ask.clone()).await?).await };
            let err = match tokio::time::timeout(timeout, once).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => FetchError::Timeout {
                    url: redact(url),
                    after: timeout,
                },
            };
            // A POST or PATCH that failed may have been applied: sent
            // again, it would start a second session or append twice.
            let idempotent = !matches!(ask.method, http::Method::POST | http::Method::PATCH);
            if !idempotent || !err.retryable() || attempt >= self.config.max_retries {
                return Err(err);
            }
            let wait = self.config.backoff(attempt, None);
            tracing::debug!(url = %Shown(url), attempt, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// A body read whole, refused past `max` bytes.
pub(super) async fn body_upto(
    url: &str,
    body: hyper::body::Incoming,
    max: usize,
) -> Result<Bytes, FetchError> {
    http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| FetchError::BadResponse {
            url: redact(url),
            reason: format!("body: {e} (limit {max} bytes)"),
        })
}

/// The error for an answer that is not the one wanted: the registry's
/// own words (its error JSON's first code and message) when it gave any.
pub(super) async fn refusal(url: &str, (head, body): Response) -> FetchError {
    let status = head.status;
    if status == StatusCode::NOT_FOUND {
        return FetchError::NotFound { url: redact(url) };
    }
    let said = body_upto(url, body, MAX_ERROR_BODY)
        .await
        .ok()
        .and_then(|b| registry_message(&b));
    match said {
        Some(message) if !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS => {
            FetchError::Refused {
                url: redact(url),
                status: status.as_u16(),
                message,
            }
        }
        _ => FetchError::Status {
            url: redact(url),
            status: status.as_u16(),
        },
    }
}

/// `CODE: message` from a distribution error body
/// (`{"errors":[{"code":…,"message":…}]}`), shortened and printable.
fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.get(0)?;
    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or("");
    let msg = e.get("message").and_then(|c| c.as_str()).unwrap_or("");
    let text: String = format!("{code}: {msg}")
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    Some(text)
}

fn content_length(head: &http::response::Parts) -> Option<u64> {
    head.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

impl Fetcher {
    /// Manifest or index `reference` (tag or digest) of `repo`, accepting
    /// `accept` media types, refused past `max` bytes. A digest reference
    /// is checked against the bytes.
    pub fn fetch_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        accept: &[&str],
        max: usize,
    ) -> Result<FetchedManifest, FetchError> {
        let (repo, url) = (repo.clone(), repo.manifest_url(reference));
        let mut ask = Ask::get(None);
        if !accept.is_empty() {
            ask = ask.with_header(ACCEPT, accept.join(", "));
        }
        let want: Option<Digest> = reference.parse().ok();
        self.block_on(move |inner| async move {
            inner
                .exchange(&repo, &url, ask, |(head, body)| {
                    let url = url.clone();
                    async move {
                        if head.status != StatusCode::OK {
                            return Err(refusal(&url, (head, body)).await);
                        }
                        let media_type = head
                            .headers
                            .get(CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string();
                        let bytes = body_upto(&url, body, max).await?;
                        let digest = Digest::of(&bytes);
                        if want.is_some_and(|w| w != digest) {
                            return Err(FetchError::BadResponse {
                                url: redact(&url),
                                reason: format!("manifest digest is {digest}"),
                            });
                        }
                        Ok(FetchedManifest {
                            media_type,
                            digest,
                            bytes,
                        })
                    }
                })
                .await
        })
    }

    /// Blob `digest` of `repo` whole (a config), refused past `max`
    /// bytes or when its bytes are not `digest`'s.
    pub fn fetch_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        max: usize,
    ) -> Result<Bytes, FetchError> {
        let (repo, url, digest) = (repo.clone(), repo.blob_url(&digest.to_string()), *digest);
        self.block_on(move |inner| async move {
            inner
                .exchange(&repo, &url, Ask::get(None), |(head, body)| {
                    let url = url.clone();
                    async move {
                        if head.status != StatusCode::OK {
                            return Err(refusal(&url, (head, body)).await);
                        }
                        let bytes = body_upto(&url, body, max).await?;
                        if Digest::of(&bytes) != digest {
                            return Err(FetchError::BadResponse {
                                url: redact(&url),
                                reason: format!("blob is not {digest}"),
                            });
                        }
                        Ok(bytes)
                    }
                })
                .await
        })
    }

    /// The size of blob `digest` in `repo` if the registry has it there
    /// (HEAD); `None` when it does not.
    pub fn blob_exists(
        &self,
        repo: &Repository,
        digest: &Digest,
    ) -> Result<Option<u64>, FetchError> {
        let (repo, url) = (repo.clone(), repo.blob_url(&digest.to_string()));
        self.block_on(move |inner| async move {
            let ask = Ask::new(http::Method::HEAD, None);
            inner
                .exchange(&repo, &url, ask, |(head, body)| {
                    let url = url.clone();
                    async move {
                        match head.status {
                            StatusCode::OK => Ok(content_length(&head)),
                            StatusCode::NOT_FOUND => Ok(None),
                            _ => Err(refusal(&url, (head, body)).await),
                        }
                    }
                })
                .await
        })
    }

    /// Whether `repo`'s endpoint answers the distribution API's base
    /// (`GET /v2/`) at all: any HTTP status counts (401 included); a TLS
    /// or connection failure does not. One attempt, no retries.
    pub fn ping(&self, repo: &Repository) -> Result<(), FetchError> {
        let url = format!("{}/v2/", repo.endpoint.base);
        let headers = repo.endpoint.headers.clone();
        self.block_on(move |inner| async move {
            let timeout = inner.config.connect_timeout;
            let ask = Ask::get(None);
            let send = inner.send_to(&url, &headers, None, &ask);
            match tokio::time::timeout(timeout, send).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(FetchError::Timeout {
                    url: redact(&url),
                    after: timeout,
                }),
            }
        })
    }

    /// Puts `bytes` as manifest `reference` (a tag or its digest) of
    /// `repo`, with `media_type`.
    pub fn put_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), FetchError> {
        let (repo, url) = (repo.clone(), repo.manifest_url(reference));
        let ask = Ask::new(http::Method::PUT, None)
            .with_header(CONTENT_TYPE, media_type)
            .with_body(bytes);
        self.block_on(move |inner| async move {
            inner
                .exchange(&repo, &url, ask, |(head, body)| {
                    let url = url.clone();
                    async move {
                        match head.status {
                            StatusCode::CREATED | StatusCode::OK => Ok(()),
                            _ => Err(refusal(&url, (head, body)).await),
                        }
                    }
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_messages_are_short_and_printable() {
        let body = br#"{"errors":[{"code":"MANIFEST_INVALID","message":"bad\nthing"}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("MANIFEST_INVALID: badthing")
        );
        assert_eq!(registry_message(b"<html>"), None);
        let long = format!(
            r#"{{"errors":[{{"code":"X","message":"{}"}}]}}"#,
            "y".repeat(5000)
        );
        assert_eq!(registry_message(long.as_bytes()).unwrap().len(), 300);
    }
}
