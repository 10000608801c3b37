//! Asking a token server for a bearer token: with credentials, the OAuth2
//! form POST (password or refresh-token grant), falling back to the
//! classic GET with Basic credentials when the server has no OAuth2
//! endpoint; anonymous, a plain GET.

use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::auth::Credentials;
use crate::urls::{Shown, redact};

use super::{FetchError, Inner};

/// A bearer token and when to stop using it.
pub(super) struct Token {
    pub(super) header: String,
    pub(super) expires: Instant,
}

/// What a `Bearer` challenge asked for.
pub(super) struct Bearer<'a> {
    pub(super) realm: &'a str,
    pub(super) service: Option<&'a str>,
    pub(super) scope: Option<&'a str>,
}

/// The most of a token server's answer we read.
const MAX_ANSWER: usize = 1 << 20;

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

fn unauthorized(url: &str, reason: String) -> FetchError {
    FetchError::Unauthorized {
        url: redact(url),
        reason,
    }
}

/// What the OAuth2 POST came to.
enum OAuth {
    Token(Token),
    /// No OAuth2 endpoint there (or it does not take these credentials):
    /// the status it answered; try the classic GET.
    FallBack(StatusCode),
}

/// Whether the challenge's realm may have our credentials (the password
/// grant): never over plain http for an https registry. A refusal is
/// final: not retried.
pub(super) fn check_realm(url: &str, bearer: &Bearer<'_>) -> Result<(), FetchError> {
    crate::urls::check_realm(url, bearer.realm).map_err(|reason| {
        tracing::warn!(url = %Shown(url), realm = %Shown(bearer.realm), reason = %reason, "refused a token realm; no credentials sent");
        FetchError::RealmRefused {
            url: redact(url),
            realm: redact(bearer.realm),
            reason: reason.to_string(),
        }
    })
}

impl Inner {
    /// The token flow for `url`'s pull scope and the challenge's, at a
    /// realm [`check_realm`] allowed.
    pub(super) async fn fetch_token(
        &self,
        url: &str,
        bearer: &Bearer<'_>,
        creds: Option<&Credentials>,
        push: bool,
    ) -> Result<Token, FetchError> {
        let mut scopes: Vec<String> = crate::auth::scope_for(url, push).into_iter().collect();
        // A challenge may name several scopes (a mount's source
        // repository besides the target), space separated.
        for s in bearer.scope.unwrap_or_default().split_whitespace() {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
        let mut oauth_status = None;
        if let Some(c) = creds {
            match self.oauth_token(url, bearer, c, &scopes).await? {
                OAuth::Token(token) => return Ok(token),
                OAuth::FallBack(status) => oauth_status = Some(status),
            }
        }
        self.classic_token(url, bearer, creds, &scopes, oauth_status)
            .await
    }

    /// The OAuth2 form POST.
    async fn oauth_token(
        &self,
        url: &str,
        bearer: &Bearer<'_>,
        c: &Credentials,
        scopes: &[String],
    ) -> Result<OAuth, FetchError> {
        let realm = bearer.realm;
        let form = token_form(c, bearer.service, scopes);
        let req = Request::post(realm)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::from(form))
            .map_err(|e| unauthorized(url, format!("token realm {}: {e}", Shown(realm))))?;
        let (head, body) = self.request(realm, req).await?;
        match head.status {
            StatusCode::OK => Ok(OAuth::Token(self.token_from(realm, body, url).await?)),
            StatusCode::BAD_REQUEST
            | StatusCode::UNAUTHORIZED
            | StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
                if !c.username.is_empty() =>
            {
                Ok(OAuth::FallBack(head.status))
            }
            s => Err(unauthorized(
                url,
                format!("token server {} answered {}", Shown(realm), s.as_u16()),
            )),
        }
    }

    /// The classic GET (with Basic credentials when there are any);
    /// `oauth_status` is what the OAuth2 POST answered before, if it was
    /// tried.
    async fn classic_token(
        &self,
        url: &str,
        bearer: &Bearer<'_>,
        creds: Option<&Credentials>,
        scopes: &[String],
        oauth_status: Option<StatusCode>,
    ) -> Result<Token, FetchError> {
        let realm = bearer.realm;
        let query = token_query(bearer.service, scopes);
        let sep = if realm.contains('?') { '&' } else { '?' };
        let token_url = format!("{realm}{sep}{query}");
        let authorization = creds.map(crate::auth::basic_header);
        let (head, body) = self
            .send_to(
                &token_url,
                &[],
                authorization.as_deref(),
                &super::transport::Ask::get(None),
            )
            .await?;
        if head.status != StatusCode::OK {
            return Err(unauthorized(
                url,
                format!(
                    "token server {} answered {}{}",
                    Shown(realm),
                    head.status.as_u16(),
                    oauth_status.map_or(String::new(), |s| format!(
                        " (and {} to the OAuth2 form)",
                        s.as_u16()
                    ))
                ),
            ));
        }
        self.token_from(realm, body, url).await
    }

    /// The token in a token server's answer (untrusted), and until when
    /// to use it.
    async fn token_from(
        &self,
        realm: &str,
        body: hyper::body::Incoming,
        url: &str,
    ) -> Result<Token, FetchError> {
        let realm = Shown(realm);
        let limited = http_body_util::Limited::new(body, MAX_ANSWER);
        let bytes: Bytes = limited
            .collect()
            .await
            .map_err(|e| unauthorized(url, format!("token server {realm}: {e}")))?
            .to_bytes();
        let (token, expires_in) = crate::auth::parse_token_answer(&bytes)
            .ok_or_else(|| unauthorized(url, format!("token server {realm} sent no token")))?;
        // expires_in is untrusted: clamped (u64::MAX seconds overflowed
        // the Instant, a panic in the fetch task).
        let now = Instant::now();
        Ok(Token {
            header: format!("Bearer {token}"),
            expires: now
                .checked_add(crate::auth::token_lifetime(expires_in))
                .unwrap_or(now),
        })
    }
}
