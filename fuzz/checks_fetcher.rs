// The checks of fuzz target `registry_answer`, shared (by `include!`) with
// fetcher/tests/fuzz_regressions.rs: what a registry or token server sends
// back that the fetcher parses (auth challenges, Content-Range, token JSON)
// and the scope it derives from a URL.

use ringstar_fetcher::auth::{Challenge, parse_token_answer, pull_scope};
use ringstar_fetcher::client::content_range;

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
}
