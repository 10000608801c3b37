//! Containing panics: a bug in one fetch (or in a caller's callback) must
//! not unwind through the scheduler's bookkeeping or stop the fetcher.

use crate::urls::{Shown, redact};

use super::FetchError;

/// The message of a caught panic.
pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `fut` as its own task, so that a panic in it (a bug) becomes
/// [`FetchError::Internal`], logged once, instead of unwinding through the
/// scheduler's bookkeeping or dropping the answer.
pub(super) async fn caught<T: Send + 'static>(
    url: &str,
    fut: impl std::future::Future<Output = Result<T, FetchError>> + Send + 'static,
) -> Result<T, FetchError> {
    match tokio::spawn(fut).await {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_panic() {
                format!("panicked: {}", panic_message(&*e.into_panic()))
            } else {
                "cancelled".to_string()
            };
            tracing::error!(url = %Shown(url), reason, "a fetch task failed; its waiters get an error and the fetcher goes on");
            Err(FetchError::Internal {
                url: redact(url),
                reason,
            })
        }
    }
}
