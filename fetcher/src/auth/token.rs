//! A bearer token server's answer (untrusted), and how long to use the
//! token it holds.

use std::time::Duration;

/// The longest a bearer token is used for, whatever its server says
/// (`expires_in` is untrusted: u64::MAX overflowed the expiry instant).
/// Registries issue tokens for minutes; asking again hourly costs one
/// request per hour and scope.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Docker's default when a token answer has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A token server's JSON answer (untrusted): the token and its
/// `expires_in`, if it holds a token.
pub fn parse_token_answer(json: &[u8]) -> Option<(String, Option<u64>)> {
    serde_json::from_slice::<TokenAnswer>(json).ok()?.token()
}

/// How long to use a token whose answer said `expires_in` seconds
/// (untrusted): Docker's default when absent, clamped to
/// [1 s, [`MAX_TOKEN_LIFETIME`]], less a margin (a tenth, at most 10 s) so
/// that a request does not leave with a token about to lapse.
pub fn token_lifetime(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_TOKEN_LIFETIME);
    let margin = (lifetime / 10).min(Duration::from_secs(10));
    lifetime.saturating_sub(margin)
}

/// A bearer token server's answer.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenAnswer {
    /// `token`, else `access_token`: the first that is a usable bearer
    /// token (RFC 6750's token68 is printable ASCII without spaces; other
    /// bytes could not go into an `Authorization` header).
    fn token(self) -> Option<(String, Option<u64>)> {
        let usable = |t: &String| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic());
        let t = self
            .token
            .filter(usable)
            .or(self.access_token.filter(usable))?;
        Some((t, self.expires_in))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn token_lifetimes_are_clamped() {
        assert_eq!(token_lifetime(None), Duration::from_secs(54));
        assert_eq!(token_lifetime(Some(0)), Duration::from_millis(900));
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(290));
        assert_eq!(
            token_lifetime(Some(u64::MAX)),
            MAX_TOKEN_LIFETIME - Duration::from_secs(10)
        );
        // What the fetcher does with it must not overflow either.
        assert!(
            Instant::now()
                .checked_add(token_lifetime(Some(u64::MAX)))
                .is_some()
        );
        assert_eq!(
            parse_token_answer(br#"{"token":"t","expires_in":18446744073709551615}"#),
            Some(("t".into(), Some(u64::MAX)))
        );
        // A token that cannot be a header value is no token; the other
        // field may still hold one.
        assert_eq!(parse_token_answer(br#"{"token":"a\nb"}"#), None);
        assert_eq!(
            parse_token_answer(br#"{"token":"a b","access_token":"ok"}"#),
            Some(("ok".into(), None))
        );
    }
}
