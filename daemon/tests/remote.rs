//! The daemon's remote layers against the real registry (#14): resolves
//! run a few at a time however many layers an image's labels name, and a
//! layer whose TOC nobody has vouched for (pre-resolved from an image's
//! layer list) fetches nothing until its own Prepare verifies it.

use ringstar_testkit::mounted as common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Mounted, content, estargz, no_background, tar_of};
use ringstar_core::writer::WriterOptions;
use ringstar_daemon::remote::{Remote, RemoteSettings, Wanted};
use ringstar_fetcher::{Reference, ResolverConfig};
use ringstar_layerfs::resolve::LayerSource;
use ringstar_testkit::{Fault, FaultProxy, Registry};

fn source(registry: &str, digest: &str, toc: Option<&str>) -> LayerSource {
    LayerSource {
        reference: format!("{registry}/r/img:latest")
            .parse::<Reference>()
            .unwrap(),
        digest: digest.parse().unwrap(),
        size: None,
        toc_digest: toc.map(|t| t.parse().unwrap()),
    }
}

/// The tests of this binary one at a time: one counts the resolver
/// threads of the process, which the other's daemon would add to.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Threads of this process whose name starts with `prefix`.
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

fn remote_over(m: &mut Mounted) -> std::sync::Arc<Remote> {
    let session = m.session.take().unwrap();
    Remote::new(
        m.fs.clone(),
        Some(session),
        m.dir.path().to_path_buf(),
        m.fetcher.clone(),
        ResolverConfig::default(),
        RemoteSettings {
            resolve_timeout: Duration::from_secs(5),
            ..RemoteSettings::default()
        },
    )
    .unwrap()
}

/// An image naming 24 layers on a registry that never answers: four
/// resolver threads, not one per layer (before: a thread per layer, with
/// no limit).
#[test]
fn resolves_run_a_few_at_a_time() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let reg = Registry::start();
    let stalled = FaultProxy::start(reg.addr.clone());
    stalled.plan(std::iter::repeat_n(Fault::Stall, 64));
    let store = tempfile::tempdir().unwrap();
    let mut m = Mounted::new(store.path(), 1 << 30, no_background());
    // The other test's resolvers may still be winding down (they only
    // go away, never come, while this one runs). Counted by the pool's
    // names ("resolve-N"): threads this test spawns unnamed inherit the
    // test thread's name, "resolves_run_a_", and must not count.
    let before = threads("resolve-");
    let remote = remote_over(&mut m);
    let digests: Vec<String> = (0..25).map(|i| format!("sha256:{i:064x}")).collect();
    let wanted = Wanted {
        source: source(&stalled.addr, &digests[0], Some(&digests[0])),
        verify: true,
        others: digests[1..]
            .iter()
            .map(|d| source(&stalled.addr, d, None))
            .collect(),
    };
    let claim = {
        let remote = remote.clone();
        std::thread::spawn(move || remote.claim(&wanted))
    };
    let started = Instant::now();
    while stalled.connections.load(Ordering::SeqCst) < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no resolve started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let now = threads("resolve-");
    assert!(now <= before + 4, "{now} resolver threads, {before} before");
    assert!(
        claim.join().unwrap().is_err(),
        "a stalled registry resolved"
    );
    remote.shutdown();
}

/// A layer pre-resolved from the image's layer list (no TOC digest known)
/// is resolved but not prefetched; its own Prepare verifies the TOC and
/// starts its prefetch.
#[test]
fn nothing_is_prefetched_before_the_toc_is_verified() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let reg = Registry::start();
    let opts = WriterOptions::default();
    let (first, first_toc) = estargz(&tar_of(&[("a.txt", b"a")], &[]), &opts);
    let big = content(600_000, 3);
    let (second, second_toc) = estargz(
        &tar_of(&[("hot.bin", &big)], &[]),
        &WriterOptions {
            prioritized: vec!["hot.bin".into()],
            ..WriterOptions::default()
        },
    );
    let (d1, d2) = (reg.push("r/img", &first), reg.push("r/img", &second));
    let store = tempfile::tempdir().unwrap();
    let mut m = Mounted::new(store.path(), 1 << 30, no_background());
    let fetches = m.loader.clone();
    let fetches = move || fetches.stats.fetches.load(Ordering::Relaxed);
    let remote = remote_over(&mut m);
    let first_wanted = Wanted {
        source: source(&reg.addr, &d1, Some(&first_toc)),
        verify: true,
        others: vec![source(&reg.addr, &d2, None)],
    };
    remote.claim(&first_wanted).unwrap();
    // The second layer resolves (its TOC is fetched) ...
    let second = source(&reg.addr, &d2, Some(&second_toc));
    let started = Instant::now();
    while !m.fs.layer_names().contains(&second.layer_name())
        && started.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // ... but no chunk of it is fetched before its TOC is vouched for.
    assert_eq!(
        fetches(),
        0,
        "a layer with an unverified TOC was prefetched"
    );
    remote
        .claim(&Wanted {
            source: second,
            verify: true,
            others: Vec::new(),
        })
        .unwrap();
    let started = Instant::now();
    while fetches() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no prefetch after the claim"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    remote.shutdown();
}
