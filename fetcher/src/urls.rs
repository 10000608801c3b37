//! URL policy: how a URL is shown (logs, errors), where a registry's
//! redirect may send us, and which token realm may receive credentials.
//!
//! Blob storage behind a registry hands out presigned URLs whose query
//! carries the signature: a bearer credential for the blob. Errors end up
//! in logs and in state files readable inside containers, so a URL is only
//! ever shown as `scheme://host/path` with any query (and fragment)
//! replaced by `?REDACTED` and any userinfo dropped.

use std::fmt;

/// What replaces a URL's query (and fragment) when it is shown.
pub const REDACTED_QUERY: &str = "?REDACTED";

/// A URL for display: `scheme://host[:port]/path`, no userinfo, the query
/// replaced by [`REDACTED_QUERY`]. Use it for every URL in a log field or
/// an error message.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.0;
        // The query and fragment go first: userinfo-looking text after a
        // `?` is part of the query, not the authority.
        let (base, cut) = match url.find(['?', '#']) {
            Some(i) => (&url[..i], true),
            None => (url, false),
        };
        match base.split_once("://").filter(|(s, _)| is_scheme(s)) {
            Some((scheme, rest)) => {
                let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                write!(f, "{scheme}://{host}{path}")?;
            }
            None => f.write_str(base)?,
        }
        if cut {
            f.write_str(REDACTED_QUERY)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `url` as it may be shown (see [`Shown`]).
pub fn redact(url: &str) -> String {
    Shown(url).to_string()
}

/// RFC 3986's `scheme`: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The scheme of an absolute URL, lowercased (`None`: not absolute).
fn scheme(url: &str) -> Option<String> {
    let (s, _) = url.split_once("://")?;
    is_scheme(s).then(|| s.to_ascii_lowercase())
}

/// Why a redirect target or a token realm was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefusal {
    #[error("not an http or https URL")]
    NotHttp,
    #[error("not an absolute URL")]
    NotAbsolute,
    #[error("not a valid URL")]
    Invalid,
    #[error("no host")]
    NoHost,
    #[error("a downgrade from https to plain http")]
    Downgrade,
    #[error("plain http for an https registry")]
    PlainRealm,
}

/// May a response to a request for `from` redirect us to `to` (an
/// untrusted `Location`)? Only to an absolute http or https URL with a
/// host, and never from https down to plain http. Another host over https
/// is fine: that is how registries send clients to blob storage (S3, CDNs).
/// `Err` says why not.
pub fn check_redirect(from: &str, to: &str) -> Result<(), UrlRefusal> {
    let target = match scheme(to).as_deref() {
        Some(s @ ("http" | "https")) => s.to_string(),
        Some(_) => return Err(UrlRefusal::NotHttp),
        None => return Err(UrlRefusal::NotAbsolute),
    };
    let uri: http::Uri = to.parse().map_err(|_| UrlRefusal::Invalid)?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(UrlRefusal::NoHost);
    }
    if target == "http" && scheme(from).as_deref() != Some("http") {
        return Err(UrlRefusal::Downgrade);
    }
    Ok(())
}

/// May the token realm `realm` (from a registry's `WWW-Authenticate`
/// challenge, untrusted) receive our credentials for the registry at
/// `registry_url`? Over https always (Docker Hub's realm is
/// auth.docker.io); over plain http only when the registry itself is plain
/// http (a local or declared-insecure registry), never for an https one.
pub fn check_realm(registry_url: &str, realm: &str) -> Result<(), UrlRefusal> {
    match scheme(realm).as_deref() {
        Some("https") => {}
        Some("http") if scheme(registry_url).as_deref() == Some("http") => {}
        Some("http") => return Err(UrlRefusal::PlainRealm),
        Some(_) => return Err(UrlRefusal::NotHttp),
        None => return Err(UrlRefusal::NotAbsolute),
    }
    let uri: http::Uri = realm.parse().map_err(|_| UrlRefusal::Invalid)?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(UrlRefusal::NoHost);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_carry_no_query_fragment_or_userinfo() {
        let s = |u| redact(u);
        assert_eq!(
            s("https://s3.example/bucket/blob?X-Amz-Signature=abc&X-Amz-Credential=k"),
            "https://s3.example/bucket/blob?REDACTED"
        );
        assert_eq!(
            s("https://user:pw@cdn.example:8443/p/q#frag"),
            "https://cdn.example:8443/p/q?REDACTED"
        );
        assert_eq!(s("http://r.example"), "http://r.example");
        assert_eq!(s("http://r.example?sig=x@y/z"), "http://r.example?REDACTED");
        assert_eq!(s("not a url?secret"), "not a url?REDACTED");
        assert_eq!(s("u:p@h/x://y/z"), "u:p@h/x://y/z");
        assert_eq!(
            format!("{:?}", Shown("https://a/b?c")),
            "\"https://a/b?REDACTED\""
        );
    }

    #[test]
    fn redirects_never_downgrade_or_leave_http() {
        let https = "https://registry.example/v2/a/blobs/sha256:00";
        let http = "http://127.0.0.1:5000/v2/a/blobs/sha256:00";
        // Cross-host https (presigned storage URLs) and upgrades are fine.
        assert_eq!(check_redirect(https, "https://s3.example/b?sig=1"), Ok(()));
        assert_eq!(check_redirect(https, "HTTPS://cdn.example/b"), Ok(()));
        assert_eq!(check_redirect(http, "https://s3.example/b"), Ok(()));
        assert_eq!(check_redirect(http, "http://other:9000/b"), Ok(()));
        // A downgrade, another scheme, a relative or hostless target: no.
        assert!(check_redirect(https, "http://s3.example/b").is_err());
        assert!(check_redirect(https, "HTTP://s3.example/b").is_err());
        assert!(check_redirect(https, "file:///etc/passwd").is_err());
        assert!(check_redirect(http, "ftp://x/y").is_err());
        assert!(check_redirect(http, "/v2/elsewhere").is_err());
        assert!(check_redirect(http, "http:///nohost").is_err());
        assert!(check_redirect(http, "").is_err());
    }

    #[test]
    fn realms_get_credentials_over_https_or_from_a_plain_registry() {
        let https = "https://registry.example/v2/a/blobs/sha256:00";
        let http = "http://127.0.0.1:5000/v2/a/blobs/sha256:00";
        assert_eq!(check_realm(https, "https://auth.docker.io/token"), Ok(()));
        assert_eq!(check_realm(http, "http://127.0.0.1:5001/token"), Ok(()));
        assert_eq!(check_realm(http, "https://auth.example/token"), Ok(()));
        assert_eq!(
            check_realm(https, "http://auth.example/token"),
            Err(UrlRefusal::PlainRealm)
        );
        assert!(check_realm(https, "ftp://auth.example/token").is_err());
        assert!(check_realm(https, "/token").is_err());
    }
}
