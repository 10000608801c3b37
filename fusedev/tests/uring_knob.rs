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

    // Knob off. The default options and "auto" leave it off: classic.
    set_knob("N");
    for o in [MountOptions::default(), opts("auto")] {
        let s = mount(mnt, &o).unwrap();
        assert_eq!(s.transport(), Transport::Classic);
        assert_eq!(knob(), "N", "a mount wrote the knob");
        serves(&s, mnt);
        s.unmount().unwrap();
    }
    // The ring required without leave to enable it: refused, knob off,
    // nothing mounted.
    let e = mount(
        mnt,
        &MountOptions {
            transport: TransportChoice::Ring,
            uring_knob: UringKnob::Leave,
            ..MountOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::Unsupported, "{e}");
    assert_eq!(knob(), "N");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&format!(" {} ", mnt.display())));
    // "off": classic, the knob untouched.
    let s = mount(mnt, &opts("off")).unwrap();
    assert_eq!(s.transport(), Transport::Classic);
    assert_eq!(knob(), "N");
    s.unmount().unwrap();

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
