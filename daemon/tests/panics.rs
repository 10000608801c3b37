//! Panics are contained (#14): a panic while serving one read, or while
//! resolving one layer, fails that read or that layer, releases what it
//! held, and leaves the daemon's threads serving. Panics are injected at
//! named points (`ringstar_core::faults`); this is a test binary of
//! its own because the points are process-wide.

use ringstar_testkit::mounted as common;

use std::time::{Duration, Instant};

use common::{Mounted, content, estargz, no_background, tar_of};
use ringstar_core::faults;
use ringstar_core::writer::WriterOptions;
use ringstar_daemon::remote::{Remote, RemoteSettings, Wanted};
use ringstar_fetcher::{Reference, ResolverConfig};
use ringstar_layerfs::resolve::LayerSource;
use ringstar_testkit::Registry;

#[test]
fn panics_are_contained() {
    let reg = Registry::start();
    let big = content(200_000, 7);
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        ..WriterOptions::default()
    };
    let (blob, toc) = estargz(&tar_of(&[("a.bin", &big), ("b.txt", b"hello")], &[]), &opts);
    let digest = reg.push("p/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());

    // Panics inflating chunks: each fails that chunk's waiters (EIO, or a
    // retry by the kernel's own read after a failed readahead) and
    // releases its single-flight entry; more panics than the pool has
    // workers leave it serving.
    m.add(&reg.addr, "p/img", "l", &digest, Some(&toc)).unwrap();
    let failures = || {
        m.loader
            .stats
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    faults::arm("inflate", 6);
    for _ in 0..6 {
        match std::fs::read(m.path("l/a.bin")) {
            Ok(data) => assert!(data == big, "wrong bytes"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        }
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
    assert!(failures() >= 6, "the panics did not happen: {}", failures());
    assert!(std::fs::read(m.path("l/a.bin")).unwrap() == big);
    assert_eq!(std::fs::read(m.path("l/b.txt")).unwrap(), b"hello");

    // A panic resolving a layer: its Prepare fails at once (not after the
    // resolve timeout), and the resolvers resolve the next.
    let store2 = tempfile::tempdir().unwrap();
    let mut m2 = Mounted::new(store2.path(), 1 << 30, no_background());
    let session = m2.session.take().unwrap();
    let remote = Remote::new(
        m2.fs.clone(),
        Some(session),
        m2.dir.path().to_path_buf(),
        m2.fetcher.clone(),
        ResolverConfig::default(),
        RemoteSettings::default(),
    )
    .unwrap();
    let wanted = Wanted {
        source: LayerSource {
            reference: format!("{}/p/img:latest", reg.addr)
                .parse::<Reference>()
                .unwrap(),
            digest: digest.parse().unwrap(),
            size: None,
            toc_digest: Some(toc.parse().unwrap()),
        },
        verify: true,
        others: Vec::new(),
    };
    // Ten panics, more than the four resolvers: claims fail (at once, not
    // after the resolve timeout) until the panics are used up, and then
    // the resolvers resolve the layer.
    faults::arm("resolve", 10);
    let mut failed = 0;
    while failed < 20 {
        let started = Instant::now();
        let Err(e) = remote.claim(&wanted) else { break };
        assert!(e.to_string().contains("panicked"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        failed += 1;
    }
    assert!((5..=10).contains(&failed), "{failed} claims failed");
    let layer = remote.claim(&wanted).unwrap();
    // The loop's last claim already succeeded; this one finds it ready.
    assert_eq!(
        std::fs::read(m2.path(&layer.name).join("b.txt")).unwrap(),
        b"hello"
    );
    remote.shutdown();
}
