//! The lazy read path end to end: layers written by our writer, pushed to
//! Debian's real docker-registry, mounted for real, read through
//! `std::fs`; registry requests counted by a proxy in front of it.

use ringstar_testkit::mounted as common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringstar_core::Digest;
use ringstar_core::writer::WriterOptions;
use ringstar_layerfs::{BackgroundConfig, LoaderConfig, STATE_DIR};
use ringstar_testkit::{DelayProxy, FaultProxy, Registry};

use common::{Mounted, content, estargz, no_background, tar_of};

/// Registry GETs seen by `proxy` so far.
fn gets(proxy: &FaultProxy) -> usize {
    proxy.sent().matches("GET /v2/").count()
}

#[test]
fn overlayfs_stacks_layer_directories_with_whiteouts_applied() {
    let reg = Registry::start();
    let lower = tar_of(
        &[
            ("dir/a", b"lower a"),
            ("dir/b", b"lower b"),
            ("keep", b"kept"),
            ("opq/old", b"hidden by opaque"),
        ],
        &[],
    );
    let upper = tar_of(
        &[
            ("dir/.wh.a", b""),
            ("new", b"upper new"),
            ("opq/.wh..wh..opq", b""),
            ("opq/fresh", b"fresh"),
        ],
        &[],
    );
    let (lower, lower_toc) = estargz(&lower, &WriterOptions::default());
    let (upper, upper_toc) = estargz(&upper, &WriterOptions::default());
    let (ld, ud) = (reg.push("o/img", &lower), reg.push("o/img", &upper));
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&reg.addr, "o/img", "lower", &ld, Some(&lower_toc))
        .unwrap();
    m.add(&reg.addr, "o/img", "upper", &ud, Some(&upper_toc))
        .unwrap();
    let (upper, lower) = (m.path("upper"), m.path("lower"));
    common::with_overlay(&[&upper, &lower], |merged| {
        let read = |p: &str| std::fs::read(merged.join(p));
        assert!(read("dir/a").is_err(), "whiteout not applied");
        assert_eq!(read("dir/b").unwrap(), b"lower b");
        assert_eq!(read("keep").unwrap(), b"kept");
        assert_eq!(read("new").unwrap(), b"upper new");
        assert!(read("opq/old").is_err(), "opaque dir shows the lower");
        assert_eq!(read("opq/fresh").unwrap(), b"fresh");
        let mut names: Vec<_> = std::fs::read_dir(merged.join("dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec!["b"]);
    });
}

#[test]
fn the_store_fetches_shared_files_once_and_keeps_them_across_restarts() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr.clone());
    let shared = content(300_000, 1);
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        ..WriterOptions::default()
    };
    let (a, a_toc) = estargz(
        &tar_of(&[("lib/shared.so", &shared), ("a.txt", b"in a")], &[]),
        &opts,
    );
    let (b, b_toc) = estargz(
        &tar_of(&[("b.txt", b"in b"), ("usr/lib/shared.so", &shared)], &[]),
        &opts,
    );
    let (ad, bd) = (reg.push("s/img", &a), reg.push("s/img", &b));
    let store = tempfile::tempdir().unwrap();
    let add_both = |m: &Mounted| {
        m.add(&proxy.addr, "s/img", "a", &ad, Some(&a_toc)).unwrap();
        m.add(&proxy.addr, "s/img", "b", &bd, Some(&b_toc)).unwrap();
    };
    {
        let m = Mounted::new(store.path(), 1 << 30, no_background());
        add_both(&m);
        let before = gets(&proxy);
        assert_eq!(std::fs::read(m.path("a/lib/shared.so")).unwrap(), shared);
        let after_a = gets(&proxy);
        assert!(after_a > before);
        // The same content in another layer: no request at all.
        assert_eq!(
            std::fs::read(m.path("b/usr/lib/shared.so")).unwrap(),
            shared
        );
        assert_eq!(gets(&proxy), after_a, "a shared file was fetched twice");
        let key = Digest::of(&shared);
        assert!(m.loader.store.is_complete(&key));
    }
    // A restarted daemon finds it in the store.
    {
        let m = Mounted::new(store.path(), 1 << 30, no_background());
        add_both(&m);
        let before = gets(&proxy);
        assert_eq!(
            std::fs::read(m.path("b/usr/lib/shared.so")).unwrap(),
            shared
        );
        assert_eq!(gets(&proxy), before, "a cached file was fetched again");
    }
    // A truncated cache file is absent: fetched again, right bytes.
    // Named `<content hex>.<life>` (core/src/store.rs).
    let prefix = format!("{}.", Digest::of(&shared).hex());
    let cached = std::fs::read_dir(store.path().join("complete"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cached)
        .unwrap()
        .set_len(1000)
        .unwrap();
    {
        let m = Mounted::new(store.path(), 1 << 30, no_background());
        add_both(&m);
        let before = gets(&proxy);
        assert_eq!(std::fs::read(m.path("a/lib/shared.so")).unwrap(), shared);
        assert!(gets(&proxy) > before);
    }
}

#[test]
fn eviction_keeps_the_store_under_its_bound() {
    let reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}"), content(100_000, 10 + i)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let (blob, toc) = estargz(&tar_of(&refs, &[]), &WriterOptions::default());
    let digest = reg.push("e/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let capacity = 350_000;
    let m = Mounted::new(
        store.path(),
        capacity,
        LoaderConfig {
            read_ahead: 0,
            ..no_background()
        },
    );
    m.add(&reg.addr, "e/img", "l", &digest, Some(&toc)).unwrap();
    for (name, data) in &files {
        assert_eq!(&std::fs::read(m.path(&format!("l/{name}"))).unwrap(), data);
        let usage = m.loader.store.usage();
        assert!(usage.bytes <= capacity, "{usage:?}");
    }
    let on_disk: u64 = walk_sizes(store.path());
    assert!(on_disk <= capacity, "{on_disk} bytes on disk");
    // Evicted files read again (from the registry), correctly.
    assert_eq!(std::fs::read(m.path("l/f0")).unwrap(), files[0].1);
}

fn walk_sizes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            total += walk_sizes(&e.path());
        } else if e.path().extension().is_none_or(|x| x != "idx") {
            // Allocated bytes: partial files are sparse.
            total += meta.blocks() * 512;
        }
    }
    total
}

#[test]
fn prefetch_takes_one_request_and_background_fetch_reaches_everything() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr.clone());
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("lib/m{i:02}.py"),
                content(20_000 + i * 100, i as u32),
            )
        })
        .collect();
    files.push(("bin/app".into(), content(50_000, 99)));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let prioritized: Vec<String> = ["bin/app", "lib/m03.py", "lib/m07.py"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (blob, toc) = estargz(
        &tar_of(&refs, &[]),
        &WriterOptions {
            chunk_size: 16 << 10,
            prioritized: prioritized.clone(),
            ..WriterOptions::default()
        },
    );
    let digest = reg.push("p/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            read_ahead: 0,
            ..no_background()
        },
    );
    let layer = m
        .add(&proxy.addr, "p/img", "l", &digest, Some(&toc))
        .unwrap();
    let before = gets(&proxy);
    m.loader.prefetch(&layer);
    assert!(layer.wait_prefetch(Duration::from_secs(10)));
    assert_eq!(gets(&proxy) - before, 1, "prefetch in one request");
    for p in &prioritized {
        let want = &files.iter().find(|(n, _)| n == p).unwrap().1;
        assert_eq!(&std::fs::read(m.path(&format!("l/{p}"))).unwrap(), want);
    }
    assert_eq!(
        gets(&proxy) - before,
        1,
        "prioritized files read from the store"
    );

    // Background fetch, on another mount of the same blob with a fresh
    // store: the state file reaches 100 % and then nothing is fetched.
    let store2 = tempfile::tempdir().unwrap();
    let m2 = Mounted::new(
        store2.path(),
        1 << 30,
        LoaderConfig {
            read_ahead: 0,
            max_read_ahead: 0,
            predict: false,
            start_records: None,
            background: BackgroundConfig {
                enabled: true,
                window: 64 << 10,
                idle: Duration::from_millis(20),
                bytes_per_sec: 0,
            },
        },
    );
    let layer2 = m2
        .add(&proxy.addr, "p/img", "l", &digest, Some(&toc))
        .unwrap();
    m2.loader.start_background(&layer2);
    let state = m2.path("l").join(STATE_DIR).join(format!("{digest}.json"));
    let started = Instant::now();
    loop {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        if json["fetchedPercent"].as_f64().unwrap() >= 100.0 {
            assert_eq!(json["fetchedSize"], json["size"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "background fetch stuck at {json}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        m2.loader
            .stats
            .background_fetches
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    let before = gets(&proxy);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(m2.path(&format!("l/{name}"))).unwrap(), data);
    }
    assert_eq!(gets(&proxy), before, "all was fetched in the background");
}

#[test]
fn a_foreground_read_does_not_wait_for_the_background() {
    let reg = Registry::start();
    // Incompressible content: a background that takes seconds at the
    // link's rate.
    let big: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            let mut d = vec![0u8; 1 << 20];
            let mut x = 0x9E37_79B9u32.wrapping_add(i);
            for b in d.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            (format!("big{i}"), d)
        })
        .collect();
    let mut refs: Vec<(&str, &[u8])> = big
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    refs.push(("zz-small", b"small file at the end"));
    let (blob, toc) = estargz(&tar_of(&refs, &[]), &WriterOptions::default());
    let digest = reg.push("b/img", &blob);
    // 40 ms RTT, 16 Mbit/s: the background needs ~3 s for 6 MiB.
    let wan = DelayProxy::start(reg.addr.clone(), Duration::from_millis(40), 16_000_000);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            read_ahead: 0,
            max_read_ahead: 0,
            predict: false,
            start_records: None,
            background: BackgroundConfig {
                enabled: true,
                window: 1 << 20,
                idle: Duration::from_millis(20),
                bytes_per_sec: 0,
            },
        },
    );
    let layer = m.add(&wan.addr, "b/img", "l", &digest, Some(&toc)).unwrap();
    m.loader.start_background(&layer);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(
        std::fs::read(m.path("l/zz-small")).unwrap(),
        b"small file at the end"
    );
    let latency = t.elapsed();
    let done_then = layer.fully_fetched();
    eprintln!("foreground read during background fetch: {latency:?}");
    assert!(
        !done_then,
        "the background finished first; the test proves nothing"
    );
    assert!(
        latency < Duration::from_secs(2),
        "foreground waited {latency:?}"
    );
}

#[test]
fn a_dead_registry_is_eio_within_the_timeout_and_reads_recover() {
    let mut reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}"), content(200_000, 50 + i)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let (blob, toc) = estargz(&tar_of(&refs, &[]), &WriterOptions::default());
    let digest = reg.push("d/img", &blob);
    let proxy = FaultProxy::start(reg.addr.clone());
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            read_ahead: 0,
            ..no_background()
        },
    );
    m.add(&proxy.addr, "d/img", "l", &digest, Some(&toc))
        .unwrap();
    // The next connection hangs (the request is in flight), then the
    // registry dies.
    proxy.plan([ringstar_testkit::Fault::Stall]);
    proxy.cut_all();
    std::thread::sleep(Duration::from_millis(100));
    let path = m.path("l/f0");
    let reader = std::thread::spawn(move || {
        let t = Instant::now();
        (std::fs::read(path).map(|d| d.len()), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    reg.kill();
    let (result, took) = reader.join().unwrap();
    let err = match result {
        Ok(n) => panic!("read {n} bytes through a dead registry"),
        Err(e) => e,
    };
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Timeout 3 s × 3 attempts plus backoff is the budget.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    // The filesystem is still there, and the state file says why.
    assert!(m.path("l/f1").metadata().is_ok());
    let state = m.path("l").join(STATE_DIR).join(format!("{digest}.json"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(json["error"].is_string(), "{json}");
    // The registry comes back: the same file reads.
    reg.restart();
    assert_eq!(std::fs::read(m.path("l/f0")).unwrap(), files[0].1);
    assert_eq!(std::fs::read(m.path("l/f3")).unwrap(), files[3].1);
}

#[test]
fn concurrent_misses_of_one_chunk_make_one_request() {
    let reg = Registry::start();
    let proxy = FaultProxy::start(reg.addr.clone());
    let data = content(1 << 20, 3);
    let (blob, toc) = estargz(&tar_of(&[("big", &data)], &[]), &WriterOptions::default());
    let digest = reg.push("c/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&proxy.addr, "c/img", "l", &digest, Some(&toc))
        .unwrap();
    let before = gets(&proxy);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let path = m.path("l/big");
            std::thread::spawn(move || {
                use std::io::{Read, Seek, SeekFrom};
                let mut f = std::fs::File::open(path).unwrap();
                f.seek(SeekFrom::Start(i * 100_000)).unwrap();
                let mut buf = vec![0u8; 4096];
                f.read_exact(&mut buf).unwrap();
                (i, buf)
            })
        })
        .collect();
    for t in threads {
        let (i, buf) = t.join().unwrap();
        let at = (i * 100_000) as usize;
        assert_eq!(buf, data[at..at + 4096]);
    }
    assert_eq!(gets(&proxy) - before, 1, "one chunk, one request");
}

#[test]
fn complete_files_are_read_through_passthrough() {
    let reg = Registry::start();
    let data = content(2 << 20, 4);
    let (blob, toc) = estargz(
        &tar_of(&[("lib.so", &data)], &[]),
        &WriterOptions::default(),
    );
    let digest = reg.push("pt/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&reg.addr, "pt/img", "l", &digest, Some(&toc))
        .unwrap();
    assert_eq!(std::fs::read(m.path("l/lib.so")).unwrap(), data);
    let served = m.fs.reads_served();
    assert!(served > 0);
    assert!(m.loader.store.is_complete(&Digest::of(&data)));
    // Drop the page cache: a new open must get its bytes from somewhere.
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    assert_eq!(std::fs::read(m.path("l/lib.so")).unwrap(), data);
    assert_eq!(
        m.fs.reads_served(),
        served,
        "a complete file was read through the daemon, not passthrough"
    );
}

/// The kernel fixes an inode's io mode while it is open: a second
/// passthrough open with another backing file, or a passthrough open of an
/// inode open in cached mode, is EIO. A binary running from a file (an
/// open file, mapped) that its own process execs again is exactly that.
#[test]
fn opens_of_an_inode_in_use_share_its_io_mode() {
    use std::io::Read;
    let reg = Registry::start();
    let data = content(3 << 20, 5);
    let (blob, toc) = estargz(&tar_of(&[("bin", &data)], &[]), &WriterOptions::default());
    let digest = reg.push("iomode/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&reg.addr, "iomode/img", "l", &digest, Some(&toc))
        .unwrap();
    // Opened while not yet fetched: cached mode.
    let mut first = std::fs::File::open(m.path("l/bin")).unwrap();
    let mut head = vec![0u8; 4096];
    first.read_exact(&mut head).unwrap();
    // Fetch the rest through another open, so the file completes while
    // the first stays open.
    assert_eq!(std::fs::read(m.path("l/bin")).unwrap(), data);
    assert!(m.loader.store.is_complete(&Digest::of(&data)));
    // A new open while the cached one lasts must stay cached.
    assert_eq!(std::fs::read(m.path("l/bin")).unwrap(), data);
    drop(first);
    // Now two passthrough opens at once: one backing file for both.
    let mut a = std::fs::File::open(m.path("l/bin")).unwrap();
    let mut b = std::fs::File::open(m.path("l/bin")).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.read_to_end(&mut x).unwrap();
    b.read_to_end(&mut y).unwrap();
    assert_eq!(x, data);
    assert_eq!(y, data);
}

#[test]
fn layers_come_and_go_while_others_are_read() {
    let reg = Registry::start();
    let data = content(300_000, 5);
    let (blob, toc) = estargz(
        &tar_of(&[("f", &data)], &[]),
        &WriterOptions {
            chunk_size: 16 << 10,
            ..WriterOptions::default()
        },
    );
    let digest = reg.push("g/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Arc::new(Mounted::new(store.path(), 1 << 30, no_background()));
    m.add(&reg.addr, "g/img", "steady", &digest, Some(&toc))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop, data) = (m.path("steady/f"), stop.clone(), data.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(std::fs::read(&path).unwrap(), data);
                n += 1;
            }
            n
        })
    };
    for i in 0..5 {
        let name = format!("l{i}");
        m.add(&reg.addr, "g/img", &name, &digest, Some(&toc))
            .unwrap();
        let listed: Vec<String> = std::fs::read_dir(m.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(listed.contains(&name), "{listed:?}");
        assert_eq!(std::fs::read(m.path(&format!("{name}/f"))).unwrap(), data);
        m.remove(&name);
        assert!(!m.path(&name).exists(), "{name} still visible");
        let listed: Vec<String> = std::fs::read_dir(m.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(listed, vec!["steady".to_string()]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[test]
fn a_sequential_reader_is_followed_with_growing_windows() {
    let reg = Registry::start();
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("seq/f{i:04}"), content(32 << 10, i)))
        .collect();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let (blob, toc) = estargz(&tar_of(&refs, &[]), &WriterOptions::default());
    let digest = reg.push("s/img", &blob);
    let proxy = FaultProxy::start(reg.addr.clone());
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(
        store.path(),
        1 << 30,
        LoaderConfig {
            max_read_ahead: 8 << 20,
            ..no_background()
        },
    );
    m.add(&proxy.addr, "s/img", "l", &digest, Some(&toc))
        .unwrap();
    let before = gets(&proxy);
    for (name, data) in &files {
        let got = std::fs::read(m.path("l").join(name)).unwrap();
        assert!(got == *data, "{name} differs");
    }
    let requests = gets(&proxy) - before;
    // Chunk by chunk would be 200 requests, the fixed 128 KiB read-ahead
    // about 40; windows doubling up to 8 MiB take a handful.
    let blob_mib = blob.len() >> 20;
    assert!(
        requests <= 10,
        "{requests} requests for {blob_mib} MiB read in blob order"
    );
    assert_eq!(
        m.loader
            .stats
            .failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// An image that declares another image's layer (same digest, same TOC)
/// from a registry of its own that stalls: its reads fail, and the
/// victim's reads of the very same chunks do not wait for, or fail with,
/// the attacker's fetch (#14). Before, both waited on one fetch keyed by
/// what the bytes are, and the victim got the attacker's EIO.
#[test]
fn a_failing_source_fails_only_its_own_reads() {
    let reg = Registry::start();
    let data = content(300_000, 77);
    let (blob, toc) = estargz(
        &tar_of(&[("lib/shared.so", &data)], &[]),
        &WriterOptions::default(),
    );
    let victim_digest = reg.push("victim/app", &blob);
    let evil_digest = reg.push("evil/app", &blob);
    assert_eq!(victim_digest, evil_digest);
    let evil = FaultProxy::start(reg.addr.clone());
    let store = tempfile::tempdir().unwrap();
    // The attacker's stalled fetch fails only after this timeout: long
    // enough that the victim's read finishing first is no race.
    let m = Mounted::with_fetcher(
        store.path(),
        1 << 30,
        no_background(),
        ringstar_fetcher::FetcherConfig {
            request_timeout: Duration::from_secs(15),
            max_retries: 0,
            ..common::fetcher_config()
        },
    );
    m.add(&evil.addr, "evil/app", "evil", &evil_digest, Some(&toc))
        .unwrap();
    m.add(
        &reg.addr,
        "victim/app",
        "victim",
        &victim_digest,
        Some(&toc),
    )
    .unwrap();
    // Every new connection to the attacker's registry hangs.
    evil.plan(std::iter::repeat_n(ringstar_testkit::Fault::Stall, 16));
    evil.cut_all();
    let path = m.path("evil/lib/shared.so");
    let attacker = std::thread::spawn(move || std::fs::read(path).map(|d| d.len()));
    // The attacker's fetch of those chunks is in flight ...
    let started = Instant::now();
    while m
        .loader
        .stats
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no fetch started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // ... and the victim reads the same chunks from its own registry.
    let got = std::fs::read(m.path("victim/lib/shared.so")).unwrap();
    assert!(got == data, "the victim read wrong bytes");
    assert!(
        !attacker.is_finished(),
        "the victim's read waited for the attacker's fetch"
    );
    // The attacker's read ends: EIO from its stalled fetch, or (the
    // kernel retrying) the verified bytes the victim stored.
    match attacker.join().unwrap() {
        Ok(n) => assert_eq!(n, data.len()),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
}

/// overlayfs looks every name up in every lower layer, and each
/// container's overlay asks again: a name a layer lacks is answered once
/// and the kernel keeps the answer (a negative entry; layers never change
/// and slots are never reused). The mount's root, where layers come and
/// go, keeps answering ENOENT (`layers_come_and_go_while_others_are_read`).
#[test]
fn absent_names_in_a_layer_are_asked_once() {
    let reg = Registry::start();
    let (blob, toc) = estargz(
        &tar_of(&[("bin/sh", b"#!"), ("etc/os-release", b"x")], &[]),
        &WriterOptions::default(),
    );
    let digest = reg.push("neg/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&reg.addr, "neg/img", "l", &digest, Some(&toc))
        .unwrap();
    let requests = || {
        m.session
            .as_ref()
            .unwrap()
            .stats()
            .classic
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert!(m.path("l/bin").metadata().is_ok());
    assert!(m.path("l/bin/python3").metadata().is_err());
    let before = requests();
    for _ in 0..20 {
        assert!(m.path("l/bin/python3").metadata().is_err());
        assert!(m.path("l/usr").metadata().is_err());
    }
    // `l/usr` once, `l/bin/python3` never again.
    assert!(
        requests() - before <= 1,
        "{} requests for 40 lookups of absent names",
        requests() - before
    );
}

/// A complete file opened again and again keeps one backing file between
/// its opens (no open(2) + ioctl and close + ioctl each time), and is
/// still read through passthrough every time.
#[test]
fn a_reopened_complete_file_reuses_its_backing_file() {
    let reg = Registry::start();
    let data = content(256 << 10, 6);
    let (blob, toc) = estargz(
        &tar_of(&[("lib.so", &data)], &[]),
        &WriterOptions::default(),
    );
    let digest = reg.push("reuse/img", &blob);
    let store = tempfile::tempdir().unwrap();
    let m = Mounted::new(store.path(), 1 << 30, no_background());
    m.add(&reg.addr, "reuse/img", "l", &digest, Some(&toc))
        .unwrap();
    assert_eq!(std::fs::read(m.path("l/lib.so")).unwrap(), data);
    assert!(m.loader.store.is_complete(&Digest::of(&data)));
    // The first passthrough open makes one.
    std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    assert_eq!(std::fs::read(m.path("l/lib.so")).unwrap(), data);
    let (made, served) = (m.fs.backing_files_made(), m.fs.reads_served());
    assert_eq!(made, 1);
    for _ in 0..10 {
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        assert_eq!(std::fs::read(m.path("l/lib.so")).unwrap(), data);
    }
    assert_eq!(
        m.fs.backing_files_made(),
        1,
        "each open made a backing file of its own"
    );
    assert_eq!(m.fs.reads_served(), served, "not read through passthrough");
}
