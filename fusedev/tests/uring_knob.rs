//! The host-wide `enable_uring` knob is the caller's to change, on a real
//! mount: by default (and with `fuse_uring = "auto"`) a mount reads it and
//! never writes it. A test binary of its own, so that no other test of
//! this crate mounts while the knob is switched off (cargo runs test
//! binaries one after another). It puts the knob back as it found it.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{TestFs, init_logging};
use ringstar_fusedev::{
    ENABLE_URING_KNOB, FuseUring, MountOptions, Session, Transport, TransportChoice, UringKnob,
};

fn knob() -> String {
    fs::read_to_string(ENABLE_URING_KNOB)
        .unwrap()
        .trim()
        .to_string()
}

fn set_knob(v: &str) {
    fs::write(ENABLE_URING_KNOB, v).unwrap();
}

/// Puts the knob back when the test ends, passed or not.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = fs::write(ENABLE_URING_KNOB, &self.0);
    }
}

fn mount(dir: &Path, opts: &MountOptions) -> std::io::Result<Session> {
    Session::mount(Arc::new(TestFs::new()), dir, opts)
}

fn serves(s: &Session, dir: &Path) {
    assert_eq!(
        fs::read(dir.join("small.txt")).unwrap(),
        b"hello from ringstar\n",
        "{:?}",
        s.transport()
    );
}

fn opts(setting: &str) -> MountOptions {
    let mut o = MountOptions::default();
    setting.parse::<FuseUring>().unwrap().apply(&mut o);
    o
}

/// One round of the checks with the knob off; false when the knob was
/// found on afterwards (turned on by someone, this round says nothing).
fn knob_off_round(mnt: &Path) -> bool {
    set_knob("N");
    // The default options and "auto" leave it off: classic.
    for o in [MountOptions::default(), opts("auto")] {
        let s = mount(mnt, &o).unwrap();
        let transport = s.transport();
        serves(&s, mnt);
        s.unmount().unwrap();
        if knob() != "N" {
            return false;
        }
        assert_eq!(transport, Transport::Classic);
    }
    // The ring required without leave to enable it: refused, knob off,
    // nothing mounted.
    let refused = mount(
        mnt,
        &MountOptions {
            transport: TransportChoice::Ring,
            uring_knob: UringKnob::Leave,
            ..MountOptions::default()
        },
    );
    if knob() != "N" {
        if let Ok(s) = refused {
            s.unmount().unwrap();
        }
        return false;
    }
    let e = refused.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!(" {} ", mnt.display())));
    // "off": classic, the knob untouched.
    let s = mount(mnt, &opts("off")).unwrap();
    let transport = s.transport();
    s.unmount().unwrap();
    if knob() != "N" {
        return false;
    }
    assert_eq!(transport, Transport::Classic);
    true
}

#[test]
fn the_host_knob_is_the_callers_choice() {
    init_logging();
    let Ok(original) = fs::read_to_string(ENABLE_URING_KNOB) else {
        eprintln!("SKIPPED: this kernel has no FUSE-over-io_uring ({ENABLE_URING_KNOB})");
        return;
    };
    let _restore = Restore(original.trim().to_string());
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();

    // Knob off: every mount but "on" leaves it off. The knob is the
    // host's: a daemon starting elsewhere on this machine may turn it on
    // in the middle of a round, which then proves nothing and is run
    // again; a mount of ours that wrote it would do so in every round.
    let rounds = 5;
    assert!(
        (0..rounds).any(|_| knob_off_round(mnt)),
        "the knob was on after each of {rounds} rounds: a mount wrote it"
    );

    // "on": the mount may enable it, and does; the ring serves.
    let s = mount(mnt, &opts("on")).unwrap();
    assert_eq!(knob(), "Y");
    assert_eq!(s.transport(), Transport::Ring);
    serves(&s, mnt);
    s.unmount().unwrap();

    // Knob on (by the host): "auto" uses the ring, "off" does not, and
    // neither changes it.
    let s = mount(mnt, &opts("auto")).unwrap();
    assert_eq!(s.transport(), Transport::Ring);
    serves(&s, mnt);
    s.unmount().unwrap();
    let s = mount(mnt, &opts("off")).unwrap();
    assert_eq!(s.transport(), Transport::Classic);
    s.unmount().unwrap();
    assert_eq!(knob(), "Y");
}
