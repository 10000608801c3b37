//! The host-wide `enable_uring` knob: reading it (and, only when the
//! caller allows it, writing it) to decide whether a mount asks for
//! FUSE-over-io_uring. Depends only on `options`.

use std::io;
use std::path::Path;

use crate::options::{TransportChoice, UringKnob};

/// The host-wide switch for FUSE-over-io_uring (fs/fuse/dev_uring.c
/// `module_param(enable_uring, bool, 0644)`).
pub const ENABLE_URING_KNOB: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether to ask for FUSE-over-io_uring, reading (and, with
/// [`UringKnob::Enable`], setting) the module parameter at `knob`. Logs
/// what it found and did. Errors only when the ring is required and
/// cannot be had.
pub(crate) fn want_ring(
    choice: TransportChoice,
    policy: UringKnob,
    knob: &Path,
) -> io::Result<bool> {
    if choice == TransportChoice::Classic {
        tracing::info!("FUSE transport: classic, as asked");
        return Ok(false);
    }
    let available = match std::fs::read_to_string(knob) {
        Ok(s) if s.trim() == "Y" => {
            tracing::info!(knob = %knob.display(), "FUSE-over-io_uring is enabled on this host");
            true
        }
        Ok(s) => match policy {
            UringKnob::Leave => {
                tracing::info!(
                    knob = %knob.display(),
                    value = s.trim(),
                    "FUSE-over-io_uring is off on this host; left as it is (uring knob: leave)"
                );
                false
            }
            UringKnob::Enable => match std::fs::write(knob, b"Y") {
                Ok(()) => {
                    tracing::info!(
                        knob = %knob.display(),
                        was = s.trim(),
                        "enabled FUSE-over-io_uring host-wide: wrote Y (uring knob: enable)"
                    );
                    true
                }
                Err(e) => {
                    tracing::info!(knob = %knob.display(), error = %e, "cannot enable FUSE-over-io_uring");
                    false
                }
            },
        },
        Err(e) => {
            tracing::info!(knob = %knob.display(), error = %e, "this kernel has no FUSE-over-io_uring");
            false
        }
    };
    if !available && choice == TransportChoice::Ring {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "FUSE-over-io_uring is required but not available ({} is not Y{})",
                knob.display(),
                if policy == UringKnob::Leave {
                    " and this mount may not set it"
                } else {
                    ""
                }
            ),
        ));
    }
    if !available {
        tracing::info!("FUSE transport: classic (the ring is not available)");
    }
    Ok(available)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A stand-in for the module parameter: a file holding `value`, or no
    /// file at all (a kernel without FUSE-over-io_uring).
    fn knob(dir: &Path, value: Option<&str>) -> PathBuf {
        let p = dir.join("enable_uring");
        let _ = std::fs::remove_file(&p);
        if let Some(v) = value {
            std::fs::write(&p, format!("{v}\n")).unwrap();
        }
        p
    }

    fn value(p: &Path) -> Option<String> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    #[test]
    fn the_knob_is_written_only_when_the_caller_allows_it() {
        use TransportChoice::*;
        use UringKnob::*;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // Leave: never written; the ring only if already on.
        let p = knob(d, Some("N"));
        assert!(!want_ring(Auto, Leave, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("N"));
        let e = want_ring(Ring, Leave, &p).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert_eq!(value(&p).as_deref(), Some("N"));
        let p = knob(d, Some("Y"));
        assert!(want_ring(Auto, Leave, &p).unwrap());
        assert!(want_ring(Ring, Leave, &p).unwrap());

        // Enable: written when off.
        let p = knob(d, Some("N"));
        assert!(want_ring(Auto, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("Y"));
        let p = knob(d, Some("N"));
        assert!(want_ring(Ring, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("Y"));

        // Classic never reads or writes it.
        let p = knob(d, Some("N"));
        assert!(!want_ring(Classic, Enable, &p).unwrap());
        assert_eq!(value(&p).as_deref(), Some("N"));

        // No knob (no FUSE-over-io_uring in this kernel): classic, or an
        // error when the ring is required; nothing is created.
        let p = knob(d, None);
        assert!(!want_ring(Auto, Enable, &p).unwrap());
        assert!(want_ring(Ring, Enable, &p).is_err());
        assert_eq!(value(&p), None);
    }
}
