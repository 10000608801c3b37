//! Why a fetch failed, and which failures are worth another attempt.

use std::time::Duration;

/// Why a fetch failed. Callers serving a read turn any of these into EIO.
///
/// Every URL in an error is as [`crate::urls::Shown`] shows it (no query,
/// no userinfo): errors are logged and written to state files, and a blob
/// storage URL's query is its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: range {start}-{end} is past the end of the blob")]
    RangeNotSatisfiable { url: String, start: u64, end: u64 },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    /// The registry refused a request and said why (its error JSON).
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: timed out after {0:?}", .after)]
    Timeout { url: String, after: Duration },
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    /// TLS refused (certificate, protocol): retrying will not help.
    #[error("{url}: TLS: {reason}")]
    Tls { url: String, reason: String },
    /// The server answered something that is not what was asked.
    #[error("{url}: bad response: {reason}")]
    BadResponse { url: String, reason: String },
    #[error("giving up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: u32,
        last: Box<FetchError>,
    },
    /// The registry refused us, or asked for credentials we do not have.
    #[error("{url}: unauthorized: {reason}")]
    Unauthorized { url: String, reason: String },
    /// A request the caller built wrong (a range that overflows, a URL
    /// that does not parse, no endpoint to ask): a message, never
    /// branched on.
    #[error("bad request: {0}")]
    Invalid(String),
    /// A redirect we do not follow (a downgrade from https to http, a
    /// scheme other than http/https): not retried.
    #[error("{url}: refused redirect to {target}: {reason}")]
    RedirectRefused {
        url: String,
        target: String,
        reason: String,
    },
    /// A token realm that must not receive our credentials (plain http
    /// for an https registry): not retried.
    #[error("{url}: refused token realm {realm}: {reason}")]
    RealmRefused {
        url: String,
        realm: String,
        reason: String,
    },
    /// The fetch panicked (a bug); the fetcher goes on serving.
    #[error("{url}: internal error: {reason}")]
    Internal { url: String, reason: String },
    #[error("the fetcher has stopped")]
    Stopped,
}

impl FetchError {
    /// Worth another attempt: connection trouble, timeouts, 429 and 5xx
    /// (but 501).
    pub(super) fn retryable(&self) -> bool {
        match self {
            FetchError::Transport { .. } | FetchError::Timeout { .. } => true,
            FetchError::Status { status, .. } => {
                *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy() {
        let s = |status| FetchError::Status {
            url: String::new(),
            status,
        };
        assert!(s(429).retryable() && s(503).retryable() && s(500).retryable());
        assert!(!s(501).retryable() && !s(404).retryable() && !s(403).retryable());
        assert!(!FetchError::NotFound { url: String::new() }.retryable());
        let refused = FetchError::RedirectRefused {
            url: String::new(),
            target: String::new(),
            reason: String::new(),
        };
        let realm = FetchError::RealmRefused {
            url: String::new(),
            realm: String::new(),
            reason: String::new(),
        };
        let internal = FetchError::Internal {
            url: String::new(),
            reason: String::new(),
        };
        assert!(!refused.retryable() && !realm.retryable() && !internal.retryable());
    }
}
