//! The auth flow of a request: what each host asked for (its 401
//! challenge), the `Authorization` header that answers it, and the bearer
//! tokens held per (host, scope).
//!
//! No lock is held across a token request: a slot's std mutex guards its
//! state only, and requests that need the token being fetched wait on a
//! channel the fetching request closes when it is done (single-flight
//! without a lock held across network I/O).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::auth::{Challenge, Credentials};
use crate::urls::redact;

use super::token_fetch::{self, Bearer, Token};
use super::{FetchError, Inner, host_of, lock};

/// What each host asked for, and the tokens we hold.
#[derive(Default)]
pub(super) struct AuthState {
    challenges: std::sync::Mutex<HashMap<String, Challenge>>,
    tokens: std::sync::Mutex<HashMap<(String, String), TokenSlot>>,
}

/// One token per (host, scope).
type TokenSlot = Arc<std::sync::Mutex<SlotState>>;

enum SlotState {
    Empty,
    Ready(Token),
    /// A request is fetching a token; its sender is dropped when that
    /// request is done or gone (cancelled by its timeout).
    Fetching(watch::Receiver<()>),
}

/// What a request does about a token slot.
enum Turn {
    Use(String),
    /// Wait for the request fetching one, then look again.
    Wait(watch::Receiver<()>),
    /// Fetch one; drop the sender when done.
    Fetch(watch::Sender<()>),
}

/// Takes a slot's turn: its token when usable (not expired, not the one
/// `refused`), else a wait for the fetch under way, else the fetch.
fn take_turn(slot: &TokenSlot, refused: Option<&str>) -> Turn {
    let mut state = lock(slot);
    match &*state {
        SlotState::Ready(t) if Some(t.header.as_str()) != refused && t.expires > Instant::now() => {
            return Turn::Use(t.header.clone());
        }
        // A closed channel with the state still `Fetching`: the fetching
        // request was cancelled before it finished.
        SlotState::Fetching(rx) if rx.has_changed().is_ok() => return Turn::Wait(rx.clone()),
        _ => {}
    }
    let (tx, rx) = watch::channel(());
    *state = SlotState::Fetching(rx);
    Turn::Fetch(tx)
}

impl Inner {
    /// The `Authorization` header for `url` from what its host asked for
    /// before (nothing until it asks).
    pub(super) async fn authorization(
        &self,
        url: &str,
        push: bool,
    ) -> Result<Option<String>, FetchError> {
        let host = host_of(url);
        let challenge = lock(&self.auth.challenges).get(&host).cloned();
        match challenge {
            None => Ok(None),
            Some(challenge) => self
                .answer(&host, url, &challenge, None, push)
                .await
                .map(Some),
        }
    }

    /// Answers a 401: remembers the host's challenge and returns a new
    /// `Authorization` (a token another request fetched meanwhile, or a
    /// fresh one). `failed` is what was refused.
    pub(super) async fn reauthorize(
        &self,
        url: &str,
        challenges: &[String],
        failed: Option<&str>,
        push: bool,
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
        let header = self.answer(&host, url, &challenge, failed, push).await?;
        if challenge == Challenge::Basic && failed == Some(header.as_str()) {
            return Err(FetchError::Unauthorized {
                url: redact(url),
                reason: "the registry refused the credentials".into(),
            });
        }
        Ok(header)
    }

    /// The `Authorization` answering `challenge`; a bearer token other
    /// than `refused`.
    async fn answer(
        &self,
        host: &str,
        url: &str,
        challenge: &Challenge,
        refused: Option<&str>,
        push: bool,
    ) -> Result<String, FetchError> {
        match challenge {
            Challenge::Basic => self.basic_authorization(host, url).await,
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let bearer = Bearer {
                    realm,
                    service: service.as_deref(),
                    scope: scope.as_deref(),
                };
                self.bearer_authorization(host, url, &bearer, refused, push)
                    .await
            }
        }
    }

    /// A usable token from the slot of (`host`, `url`'s scope): the one
    /// held, the one another request is fetching, or a fresh one.
    async fn bearer_authorization(
        &self,
        host: &str,
        url: &str,
        bearer: &Bearer<'_>,
        refused: Option<&str>,
        push: bool,
    ) -> Result<String, FetchError> {
        let slot = self.token_slot(host, url, push);
        loop {
            match take_turn(&slot, refused) {
                Turn::Use(header) => return Ok(header),
                Turn::Wait(mut rx) => {
                    // Nothing is ever sent: this returns when the fetching
                    // request drops its sender.
                    let _ = rx.changed().await;
                }
                Turn::Fetch(done) => {
                    let fetched = self.fresh_token(host, url, bearer, push).await;
                    let mut state = lock(&slot);
                    let result = match fetched {
                        Ok(token) => {
                            let header = token.header.clone();
                            *state = SlotState::Ready(token);
                            Ok(header)
                        }
                        Err(e) => {
                            *state = SlotState::Empty;
                            Err(e)
                        }
                    };
                    drop(state);
                    // Wakes the requests waiting for this token.
                    drop(done);
                    return result;
                }
            }
        }
    }

    /// A new token for `url` from the challenge's realm, with the host's
    /// credentials if it has any.
    async fn fresh_token(
        &self,
        host: &str,
        url: &str,
        bearer: &Bearer<'_>,
        push: bool,
    ) -> Result<Token, FetchError> {
        token_fetch::check_realm(url, bearer)?;
        let creds = self.credentials(host, url).await?;
        self.fetch_token(url, bearer, creds.as_ref(), push).await
    }

    fn token_slot(&self, host: &str, url: &str, push: bool) -> TokenSlot {
        let scope = crate::auth::scope_for(url, push).unwrap_or_default();
        lock(&self.auth.tokens)
            .entry((host.to_string(), scope))
            .or_insert_with(|| Arc::new(std::sync::Mutex::new(SlotState::Empty)))
            .clone()
    }

    /// Credentials for `host`, looked up off the runtime (a helper program
    /// may run). Errors are the source's words, which carry no secret.
    async fn credentials(&self, host: &str, url: &str) -> Result<Option<Credentials>, FetchError> {
        let Some(source) = self.config.credentials.clone() else {
            return Ok(None);
        };
        let h = host.to_string();
        let repo = crate::auth::repository_of(url).map(str::to_string);
        tokio::task::spawn_blocking(move || source.lookup_for(&h, repo.as_deref()))
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
}
