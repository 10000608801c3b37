//! Faults injected into the fetcher: a panic in its fetch task.

/// Makes the next `times` fetch attempts of a URL containing `needle`
/// panic inside the fetcher's fetch task: a bug the fetcher must contain.
pub fn inject_panics(needle: &str, times: usize) {
    ringstar_core::faults::arm_for("fetch", needle, times);
}

/// Disarms the panics planned for `needle`.
pub fn stop_panics(needle: &str) {
    ringstar_core::faults::disarm_for("fetch", needle);
}
