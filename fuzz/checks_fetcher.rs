// The checks of the fetcher's fuzz targets, shared (by `include!`) with
// fetcher/tests/fuzz_regressions.rs:
// - `registry_answer`: what a registry or token server sends back that the
//   fetcher parses (auth challenges, Content-Range, token JSON, a redirect's
//   Location or a challenge's realm, and how such a URL is shown) and the
//   scope it derives from a URL;
// - `token_answer`: a token server's JSON answer and the lifetime taken
//   from it;
// - `docker_config`: docker's config.json and a credential helper's answer.

use ringstar_fetcher::auth::{
    Challenge, ConfigAnswer, config_answer, parse_helper_answer, parse_token_answer, pull_scope,
    token_lifetime, MAX_TOKEN_LIFETIME,
};
use ringstar_fetcher::client::content_range;
use ringstar_fetcher::urls::{check_realm, check_redirect, redact, REDACTED_QUERY};

pub fn registry_answer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(Challenge::Bearer { realm, .. }) = Challenge::parse(text.split('\n')) {
        assert!(!realm.is_empty());
    }
    if let Some(parsed) = content_range(&text) {
        // What parses re-encodes to a header that parses the same.
        let (start, end, total) = parsed;
        let total = total.map_or("*".to_string(), |t| t.to_string());
        assert_eq!(content_range(&format!("bytes {start}-{end}/{total}")), Some(parsed));
    }
    if let Some(scope) = pull_scope(&text) {
        assert!(scope.starts_with("repository:") && scope.ends_with(":pull"));
    }
    if let Some((token, _)) = parse_token_answer(data) {
        assert!(!token.is_empty());
    }
    url_policy(&text);
}

/// A URL from the wire (a `Location`, a realm): the redirect and realm
/// policies hold, and its display carries no query, fragment or userinfo.
fn url_policy(url: &str) {
    const HTTPS: &str = "https://registry.example/v2/a/blobs/sha256:00";
    const HTTP: &str = "http://127.0.0.1:5000/v2/a/blobs/sha256:00";
    let lower = url.to_ascii_lowercase();
    if check_redirect(HTTPS, url).is_ok() {
        assert!(lower.starts_with("https://"), "{url}");
    }
    if check_redirect(HTTP, url).is_ok() {
        assert!(lower.starts_with("https://") || lower.starts_with("http://"), "{url}");
    }
    if check_realm(HTTPS, url).is_ok() {
        assert!(lower.starts_with("https://"), "{url}");
    }
    let shown = redact(url);
    if url.contains(['?', '#']) {
        assert!(shown.ends_with(REDACTED_QUERY), "{url} -> {shown}");
        assert_eq!(shown.matches(['?', '#']).count(), 1, "{url} -> {shown}");
    } else {
        assert!(!shown.contains(['?', '#']), "{url} -> {shown}");
    }
    if let Some((_, rest)) = shown.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let scheme = &shown[..shown.len() - rest.len() - 3];
        // Only a URL has userinfo: a valid scheme (what a redirect or a
        // realm must have to be used at all).
        let is_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if is_scheme {
            assert!(!authority.contains('@'), "{url} -> {shown}");
        }
    }
    assert_eq!(redact(&shown), shown, "showing is idempotent");
}

/// A token server's answer (untrusted JSON): a token is a usable header
/// value and any `expires_in` gives a lifetime within bounds that cannot
/// overflow a clock.
pub fn token_answer(data: &[u8]) {
    let Some((token, expires_in)) = parse_token_answer(data) else {
        return;
    };
    assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()), "{token:?}");
    let lifetime = token_lifetime(expires_in);
    assert!(lifetime >= std::time::Duration::from_millis(900), "{lifetime:?}");
    assert!(lifetime <= MAX_TOKEN_LIFETIME, "{lifetime:?}");
    assert!(std::time::Instant::now().checked_add(lifetime).is_some());
    // What parses is what the answer said.
    assert_eq!(parse_token_answer(data), Some((token, expires_in)));
}

/// Docker's config.json (bytes as found) asked about a few hosts and the
/// hosts it names, and the same bytes as a credential helper's answer: no
/// panic, errors that quote nothing of the input, answers that make sense.
pub fn docker_config(data: &[u8]) {
    let mut hosts: Vec<String> = ["docker.io", "registry.example:5000", "", "[::1]:5000"]
        .map(String::from)
        .to_vec();
    // The hosts the file names (its keys, with and without scheme/path).
    let text = String::from_utf8_lossy(data);
    for key in text.split('"').skip(1).step_by(2).take(64) {
        hosts.push(key.to_string());
        let bare = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        hosts.push(bare.split('/').next().unwrap_or(bare).to_string());
    }
    for host in &hosts {
        match config_answer(data, host) {
            Ok(ConfigAnswer::Helper { server, .. }) => {
                assert!(
                    server == *host || server == "https://index.docker.io/v1/",
                    "{host} -> {server}"
                );
            }
            Ok(ConfigAnswer::Credentials(c)) => {
                assert!(!c.secret.is_empty() || !c.username.is_empty(), "{c:?}");
            }
            Ok(ConfigAnswer::None) => {}
            Err(e) => no_quote(&e.to_string()),
        }
        // The same question, the same answer.
        assert_eq!(config_answer(data, host), config_answer(data, host));
    }
    match parse_helper_answer(data) {
        Ok(Some(c)) => assert!(!c.secret.is_empty()),
        Ok(None) => {}
        Err(e) => no_quote(&e.to_string()),
    }
}

/// An error about untrusted text names the problem, not the text.
fn no_quote(message: &str) {
    assert!(!message.contains('"') && message.len() < 200, "{message}");
}
