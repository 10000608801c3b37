//! Where a blob is read from: its URL and the headers that go with it.

use std::time::Duration;

use crate::urls::Shown;

/// A blob's location: its URL and the headers to send with it. Its
/// `Debug` shows the URL redacted and the headers' names only (a mirror's
/// headers may carry credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// Overrides the fetcher's request timeout (per-mirror setting).
    pub request_timeout: Option<Duration>,
}

impl std::fmt::Debug for BlobLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("BlobLocation")
            .field("url", &Shown(&self.url))
            .field("headers", &names)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_errors_show_no_query_userinfo_or_header_values() {
        let loc = BlobLocation {
            url: "https://u:pw@s3.example/b/o?X-Amz-Signature=SIG".into(),
            headers: vec![("authorization".into(), "Bearer TOKEN".into())],
            request_timeout: None,
        };
        let shown = format!("{loc:?}");
        assert!(shown.contains("https://s3.example/b/o?REDACTED"), "{shown}");
        for secret in ["SIG", "TOKEN", "pw@"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
