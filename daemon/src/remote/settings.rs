//! The remote side's settings.

use std::time::Duration;

use crate::defaults;

/// What the remote side is told by the config (resolved in
/// [`crate::settings::Settings`]; the defaults are [`crate::defaults`]).
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub tail_bytes: u64,
    pub noprefetch: bool,
    /// Hold a container's create until its layers' prefetch is in (as
    /// the reference does), up to `prefetch_timeout`. Off by default: the
    /// container starts at once and its reads join the prefetch windows
    /// in flight (hellobench, WAN, esgz: node 2.48 s → 2.08 s, gcc 1.72 →
    /// 1.57).
    pub prefetch_wait: bool,
    pub prefetch_timeout: Duration,
    pub allow_no_verification: bool,
    pub disable_verification: bool,
    /// How long a resolve may take before Prepare falls back (the
    /// reference: 30 s).
    pub resolve_timeout: Duration,
    /// How long a layer no snapshot uses is kept (pre-resolved for an
    /// image, then not used).
    pub unused_ttl: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            tail_bytes: defaults::TAIL_BYTES,
            noprefetch: false,
            prefetch_wait: false,
            prefetch_timeout: defaults::PREFETCH_TIMEOUT,
            allow_no_verification: false,
            disable_verification: false,
            resolve_timeout: defaults::RESOLVE_TIMEOUT,
            unused_ttl: defaults::UNUSED_LAYER_TTL,
        }
    }
}
