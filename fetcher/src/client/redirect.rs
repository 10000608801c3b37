//! Sending a request for a blob as a registry client must: to the
//! registry with its headers and the host's authorization (answering one
//! 401 challenge), following one redirect to blob storage with none of
//! the registry's headers, and remembering where it went.

use std::collections::HashMap;

use http::StatusCode;
use http::header::{LOCATION, WWW_AUTHENTICATE};

use crate::urls::{Shown, redact};

use super::transport::{Ask, Response};
use super::{BlobLocation, FetchError, Inner, lock};

/// Registry blob URL → the blob-storage URL it redirected to, used until
/// that refuses us (an expired signed URL) and the registry is asked
/// again.
#[derive(Default)]
pub(super) struct Redirects(std::sync::Mutex<HashMap<String, String>>);

impl Redirects {
    fn get(&self, url: &str) -> Option<String> {
        lock(&self.0).get(url).cloned()
    }

    fn remember(&self, url: &str, target: &str) {
        lock(&self.0).insert(url.to_string(), target.to_string());
    }

    fn forget(&self, url: &str) {
        lock(&self.0).remove(url);
    }
}

impl Inner {
    /// Sends one request for the blob at `loc`: straight to blob storage
    /// when the registry redirected there before (asking the registry
    /// again when storage refuses: a signed URL expired); otherwise to
    /// the registry (see [`Inner::send_to_registry`]).
    pub(super) async fn send(&self, loc: &BlobLocation, ask: Ask) -> Result<Response, FetchError> {
        if let Some(target) = self.redirects.get(&loc.url) {
            let (head, body) = self.send_to(&target, &[], None, &ask).await?;
            if head.status != StatusCode::FORBIDDEN && head.status != StatusCode::UNAUTHORIZED {
                return Ok((head, body));
            }
            tracing::info!(url = %Shown(&loc.url), status = head.status.as_u16(), "blob storage refused the redirect URL; asking the registry again");
            self.redirects.forget(&loc.url);
        }
        self.send_to_registry(loc, ask).await
    }

    /// To the registry with its headers and the host's authorization,
    /// answering one 401 challenge, and following one redirect (absolute
    /// only).
    async fn send_to_registry(&self, loc: &BlobLocation, ask: Ask) -> Result<Response, FetchError> {
        let push = ask.pushes();
        let mut authorization = self.authorization(&loc.url, push).await?;
        let mut answered = false;
        loop {
            let (head, body) = self
                .send_to(&loc.url, &loc.headers, authorization.as_deref(), &ask)
                .await?;
            if head.status == StatusCode::UNAUTHORIZED {
                if answered {
                    return Err(FetchError::Unauthorized {
                        url: redact(&loc.url),
                        reason: "the registry refused the credentials".into(),
                    });
                }
                drop(body);
                let header = self
                    .answer_challenge(&loc.url, &head, authorization.as_deref(), push)
                    .await?;
                authorization = Some(header);
                answered = true;
                continue;
            }
            if head.status.is_redirection()
                && let Some(target) = head.headers.get(LOCATION).and_then(|v| v.to_str().ok())
            {
                let target = target.to_string();
                drop(body);
                return self.follow_redirect(loc, &target, ask).await;
            }
            return Ok((head, body));
        }
    }

    /// A new `Authorization` for the challenges of a 401 (`failed` is the
    /// one it refused).
    async fn answer_challenge(
        &self,
        url: &str,
        head: &http::response::Parts,
        failed: Option<&str>,
        push: bool,
    ) -> Result<String, FetchError> {
        let challenges: Vec<String> = head
            .headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        self.reauthorize(url, &challenges, failed, push).await
    }

    /// Sends `ask` to where the registry redirected, with none of its
    /// headers, and remembers the target for later reads of the blob.
    /// Only to http(s), never down from https to http: the refusal is
    /// final (a retry would be redirected the same).
    async fn follow_redirect(
        &self,
        loc: &BlobLocation,
        target: &str,
        ask: Ask,
    ) -> Result<Response, FetchError> {
        if let Err(reason) = crate::urls::check_redirect(&loc.url, target) {
            tracing::warn!(url = %Shown(&loc.url), target = %Shown(target), reason = %reason, "refused a redirect");
            return Err(FetchError::RedirectRefused {
                url: redact(&loc.url),
                target: redact(target),
                reason: reason.to_string(),
            });
        }
        self.redirects.remember(&loc.url, target);
        self.send_to(target, &[], None, &ask).await
    }
}
