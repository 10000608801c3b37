//! What a mount asks for: the transport, what it may do with the host's
//! `enable_uring` knob, the ring's sizes, passthrough. Plain settings: a
//! leaf that depends on nothing else in the crate.

/// Which transport serves requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// FUSE-over-io_uring when the kernel offers it (see [`UringKnob`]),
    /// classic otherwise.
    Auto,
    /// FUSE-over-io_uring or fail.
    Ring,
    /// read(2)/write(2) on cloned fds.
    Classic,
}

/// What a mount may do with the host-wide module parameter
/// [`ENABLE_URING_KNOB`], which decides whether the kernel offers
/// FUSE-over-io_uring to *every* FUSE mount on the host (it is `N` by
/// default). The caller decides; fusedev never changes it on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UringKnob {
    /// Read it, never write it: the ring is used only if the host already
    /// enabled it.
    #[default]
    Leave,
    /// Write `Y` when it is not (logged at info with the path). A write
    /// that fails counts as "not available".
    Enable,
}

/// The daemon's `fuse_uring` setting (`"auto" | "on" | "off"`), mapped to
/// a transport and a knob policy by [`FuseUring::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FuseUring {
    /// The ring only if the host already set `enable_uring=Y`; never write
    /// it; classic otherwise.
    #[default]
    Auto,
    /// Write `enable_uring=Y` if needed and require the ring (the mount
    /// fails without it).
    On,
    /// Classic; the knob is not touched.
    Off,
}

/// A `fuse_uring` value that is none of `auto`, `on`, `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fuse_uring = {0:?}: expected \"auto\", \"on\" or \"off\"")]
pub struct UnknownFuseUring(pub String);

impl std::str::FromStr for FuseUring {
    type Err = UnknownFuseUring;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(FuseUring::Auto),
            "on" => Ok(FuseUring::On),
            "off" => Ok(FuseUring::Off),
            other => Err(UnknownFuseUring(other.to_string())),
        }
    }
}

impl FuseUring {
    /// The transport and knob policy this setting stands for.
    pub fn transport(self) -> (TransportChoice, UringKnob) {
        match self {
            FuseUring::Auto => (TransportChoice::Auto, UringKnob::Leave),
            FuseUring::On => (TransportChoice::Ring, UringKnob::Enable),
            FuseUring::Off => (TransportChoice::Classic, UringKnob::Leave),
        }
    }

    /// Sets `opts.transport` and `opts.uring_knob` from this setting.
    pub fn apply(self, opts: &mut MountOptions) {
        (opts.transport, opts.uring_knob) = self.transport();
    }
}

/// The transport a session ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ring,
    Classic,
}

/// Ring entries each queue keeps free for new requests: libfuse's default
/// queue depth, enough for the requests one CPU issues at once (most are
/// answered, and their entry re-armed, within microseconds).
pub const DEFAULT_RING_DEPTH: u16 = 8;

/// The most ring entries one queue may grow to while deferred reads hold
/// entries. Each entry owns a payload buffer of `max_write` bytes (1 MiB at
/// the default 256 pages; allocated only when the entry is added, and its
/// pages touched only as far as replies fill them), and the kernel has no
/// way to unregister an entry before the connection ends, so this bounds a
/// queue's memory at 64 MiB while allowing 56 slow reads per CPU at once
/// without stalling that CPU's metadata.
pub const DEFAULT_RING_MAX_ENTRIES: u16 = 64;

/// Mount options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Shown as the mount's source.
    pub fsname: String,
    /// The type is `fuse.<subtype>`.
    pub subtype: String,
    pub transport: TransportChoice,
    /// Whether the mount may set the host-wide `enable_uring` knob.
    /// Default: [`UringKnob::Leave`].
    pub uring_knob: UringKnob,
    /// Pages per request (1 MiB at 256).
    pub max_pages: u16,
    /// Ring entries each queue keeps free for new requests (registered at
    /// mount; more are added while deferred reads hold entries).
    pub ring_depth: u16,
    /// The cap on ring entries per queue (at least `ring_depth`).
    pub ring_max_entries: u16,
    /// Negotiate passthrough (with `max_stack_depth = 1`, so overlayfs can
    /// stack on the mount).
    pub passthrough: bool,
    /// Pin data-plane threads to their CPU.
    pub pin_threads: bool,
    /// Make the session hand-over-able ([`crate::Session::handover`],
    /// [`crate::Session::resume`]): the classic transport only (an `Auto`
    /// transport becomes classic, `Ring` is refused: a ring whose owner
    /// died loses requests, docs/fusedev.md "Takeover"), the channels are
    /// non-blocking and polled with a stop eventfd, and the cloned
    /// channels are kept so all of them can go to a keeper.
    pub takeover: bool,
    /// Mount read-only (`MS_RDONLY`): the kernel refuses every change
    /// before it reaches the filesystem. Off only for a filesystem that
    /// takes [`crate::Filesystem::create`] or `rmdir` as signals (the
    /// additional layer store's `use` and release).
    pub read_only: bool,
    /// Classic transport: at least this many serving threads (one per
    /// CPU otherwise), for a filesystem whose handlers may wait (the
    /// additional layer store's lookups wait on the registry).
    pub classic_threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fsname: "ringstar".into(),
            subtype: "ringstar".into(),
            transport: TransportChoice::Auto,
            uring_knob: UringKnob::Leave,
            max_pages: 256,
            ring_depth: DEFAULT_RING_DEPTH,
            ring_max_entries: DEFAULT_RING_MAX_ENTRIES,
            passthrough: true,
            pin_threads: true,
            takeover: false,
            read_only: true,
            classic_threads: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_uring_settings() {
        use TransportChoice::*;
        use UringKnob::*;
        let parse = |s: &str| s.parse::<FuseUring>();
        assert_eq!(parse("auto").unwrap().transport(), (Auto, Leave));
        assert_eq!(parse("on").unwrap().transport(), (Ring, Enable));
        assert_eq!(parse("off").unwrap().transport(), (Classic, Leave));
        assert_eq!(parse("yes"), Err(UnknownFuseUring("yes".into())));
        let mut opts = MountOptions::default();
        assert_eq!((opts.transport, opts.uring_knob), (Auto, Leave));
        FuseUring::On.apply(&mut opts);
        assert_eq!((opts.transport, opts.uring_knob), (Ring, Enable));
    }
}
