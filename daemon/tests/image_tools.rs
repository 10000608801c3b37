//! The image tools under containerd and runc, with Debian's registry.
//! - An image no one here wrote: Debian bookworm minbase by debootstrap
//!   (scripts/bench-images.sh, as shared/bench-env builds its images),
//!   converted by `ringstar_image::convert` (what `ringstar image
//!   convert` runs). Every layer opens in the reference reader; the
//!   reference daemon (containerd-stargz-grpc, built from Debian's
//!   sources) pulls it lazily with `ctr-remote image rpull` and runs it;
//!   `ringstar_image::rpull` (what `ringstar image rpull` runs) pulls it
//!   lazily through ringstar and `ctr run` runs it.
//! - The same image optimized by `ringstar_image::optimize` (what
//!   `ringstar image optimize` runs) with Debian's runc: the files its
//!   workload opens (the shell, the loader, libc, what it reads) come
//!   before `.prefetch.landmark`, the layer opens in the reference
//!   reader, and ringstar pulls it lazily and runs it.
//! - rpull of a plain gzip image: every layer fetched, applied by
//!   containerd's differ and committed, and the image runs.

mod world;

use std::path::PathBuf;

use ringstar_fetcher::{Fetcher, FetcherConfig};
use ringstar_image::convert::{ConvertOptions, convert, progress::Silent};
use ringstar_image::layout::Layout;
use ringstar_image::rpull::{RpullOptions, rpull};
use ringstar_image::{ImageStore, RootRef};
use world::World;

/// `ringstar_image::rpull` of `repo:tag` from the world's registry into
/// its containerd through `snapshotter`.
fn rpull_into(
    w: &World,
    repo: &str,
    tag: &str,
    snapshotter: &str,
) -> ringstar_image::rpull::Pulled {
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let src = ImageStore::repository(&fetcher, &w.registry.addr, repo);
    let reference: ringstar_fetcher::Reference =
        format!("{}/{repo}:{tag}", w.registry.addr).parse().unwrap();
    let opts = RpullOptions {
        address: w.dir.path().join("containerd.sock"),
        namespace: w.namespace.clone(),
        snapshotter: snapshotter.into(),
        platform: ringstar_image::platform::host_platform(),
    };
    rpull(&src, &reference, &RootRef::Tag(tag.into()), &opts)
        .unwrap_or_else(|e| panic!("rpull {reference}: {e}\n{}", w.logs()))
}

/// What scripts/bench-images.sh made (test.sh sets these; CI must).
fn bench_parts() -> Option<(PathBuf, PathBuf)> {
    let oci = std::env::var_os("RINGSTAR_BENCH_OCI").map(PathBuf::from);
    let reference = std::env::var_os("STARGZ_REFERENCE_BIN").map(PathBuf::from);
    match (oci, reference) {
        (Some(o), Some(r)) => Some((o, r)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run scripts/bench-images.sh (test.sh does)"
            );
            eprintln!("skipped: RINGSTAR_BENCH_OCI / STARGZ_REFERENCE_BIN unset (see test.sh)");
            None
        }
    }
}

/// Converts bench image `name` (tag org) into `repo:esgz` of the
/// world's registry; returns the converted layers' (digest, TOC digest).
fn convert_bench_image(
    w: &World,
    oci: &std::path::Path,
    name: &str,
    repo: &str,
) -> Vec<(String, String)> {
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let src = ImageStore::Layout(Layout::open(&oci.join(name)).unwrap());
    let dst = ImageStore::repository(&fetcher, &w.registry.addr, repo);
    let opts = ConvertOptions {
        writer: Default::default(),
        jobs: 2,
        cache: None,
    };
    let done = convert(
        &src,
        &RootRef::Tag("org".into()),
        &dst,
        Some("esgz"),
        &opts,
        &Silent,
    )
    .unwrap();
    let (_, layers) = &done.manifests[0];
    layers
        .iter()
        .map(|l| {
            let toc = l
                .descriptor
                .annotation(ringstar_image::TOC_DIGEST_ANNOTATION)
                .unwrap();
            let blob = dst.blob_bytes(&l.descriptor.digest, 512 << 20).unwrap();
            ringstar_testkit::reference_reads(&blob, toc);
            (l.descriptor.digest.to_string(), toc.to_string())
        })
        .collect()
}

/// containerd's content store holds none of these layer blobs: the pull
/// was lazy.
fn never_downloaded(w: &World, digests: impl IntoIterator<Item = String>) {
    let content = w.ctr_ok(&["content", "ls", "-q"]);
    for digest in digests {
        assert!(
            !content.contains(&digest),
            "{digest} was downloaded: {content}"
        );
    }
}

#[test]
fn debian_minbase_converted_by_ringstar_is_pulled_lazily_and_run_by_the_reference_daemon() {
    let Some((oci, reference)) = bench_parts() else {
        return;
    };
    let mut w = World::start_with_reference(&reference);
    let t = std::time::Instant::now();
    let layers = convert_bench_image(&w, &oci, "minbase", "bench/minbase");
    eprintln!("converted in {:?}", t.elapsed());
    let image = format!("{}/bench/minbase:esgz", w.registry.addr);

    w.rpull_on("stargz", &image);
    let out = w.run_on(
        "stargz",
        &image,
        &["sh", "-c", "echo hello from $(cat /etc/debian_version)"],
    );
    assert!(out.starts_with("hello from 12"), "{out}\n{}", w.logs());
    // Lazily: containerd's content store never held a layer blob; the
    // reference daemon mounted each layer remotely.
    never_downloaded(&w, layers.iter().map(|(d, _)| d.clone()));
    let stargz_log = std::fs::read_to_string(w.dir.path().join("stargz.log")).unwrap_or_default();
    let remote = stargz_log
        .matches(r#""remote-snapshot-prepared":"true""#)
        .count();
    assert_eq!(
        remote,
        layers.len(),
        "the reference did not mount every layer remotely:\n{}",
        w.logs()
    );

    // The same image through ringstar, pulled by our rpull.
    let pulled = rpull_into(&w, "bench/minbase", "esgz", "ringstar");
    assert!(pulled.layers.iter().all(|l| l.remote), "{pulled:?}");
    let out = w.run_container(
        &image,
        &["sh", "-c", "echo hello from $(cat /etc/debian_version)"],
    );
    assert!(out.starts_with("hello from 12"), "{out}\n{}", w.logs());
    never_downloaded(&w, layers.iter().map(|(d, _)| d.clone()));
}

#[test]
fn debian_minbase_optimized_by_ringstar_has_its_workload_first_and_runs_lazily() {
    use ringstar_image::optimize::{OptimizeOptions, SandboxOptions, WorkloadOverrides, optimize};
    let Some((oci, _)) = bench_parts() else {
        return;
    };
    let mut w = World::start();
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let src = ImageStore::Layout(Layout::open(&oci.join("minbase")).unwrap());
    let dst = ImageStore::repository(&fetcher, &w.registry.addr, "bench/minbase");
    let scratch = tempfile::tempdir().unwrap();
    let opts = OptimizeOptions {
        convert: ConvertOptions {
            writer: Default::default(),
            jobs: 2,
            cache: None,
        },
        platform: ringstar_image::platform::host_platform(),
        workload: WorkloadOverrides {
            args: Some(
                ["sh", "-c", "echo hello from $(cat /etc/debian_version)"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..Default::default()
        },
        sandbox: SandboxOptions {
            runtime: "runc".into(),
            period: std::time::Duration::from_secs(120),
            net_host: false,
        },
        scratch: scratch.path().to_path_buf(),
    };
    let done = optimize(
        &src,
        &RootRef::Tag("org".into()),
        &dst,
        Some("esgz-opt"),
        &opts,
        &Silent,
    )
    .unwrap();
    assert_eq!(done.end, ringstar_image::optimize::RunEnd::Exited(Some(0)));
    let recorded: Vec<&str> = done.recorded.iter().map(|(p, _)| p.as_str()).collect();
    for want in ["usr/bin/dash", "etc/debian_version"] {
        assert!(recorded.contains(&want), "{want} not in {recorded:?}");
    }
    assert!(
        recorded.iter().any(|p| p.contains("libc.so")),
        "{recorded:?}"
    );
    let layer = &done.layers[0].descriptor;
    let blob = dst.blob_bytes(&layer.digest, 512 << 20).unwrap();
    let toc = layer
        .annotation(ringstar_image::TOC_DIGEST_ANNOTATION)
        .unwrap();
    ringstar_testkit::reference_reads(&blob, toc);
    // The blob's order: exactly what the workload opened (with the
    // directories above), then the landmark, then everything else.
    let order = ringstar_testkit::entry_order(&blob);
    let landmark = order
        .iter()
        .position(|n| n == ".prefetch.landmark")
        .expect("landmark");
    let first: Vec<&String> = order[..landmark]
        .iter()
        .filter(|n| recorded.iter().all(|r| r != n))
        .filter(|n| {
            !order[..landmark]
                .iter()
                .any(|m| m.starts_with(&format!("{n}/")))
        })
        .collect();
    assert!(
        first.is_empty(),
        "before the landmark, not opened: {first:?}"
    );
    assert!(landmark >= recorded.len(), "{order:?}");

    let image = format!("{}/bench/minbase:esgz-opt", w.registry.addr);
    let pulled = rpull_into(&w, "bench/minbase", "esgz-opt", "ringstar");
    assert!(pulled.layers.iter().all(|l| l.remote), "{pulled:?}");
    let out = w.run_container(
        &image,
        &["sh", "-c", "echo hello from $(cat /etc/debian_version)"],
    );
    assert!(out.starts_with("hello from 12"), "{out}\n{}", w.logs());
    never_downloaded(&w, [layer.digest.to_string()]);
}

#[test]
fn rpull_of_a_gzip_image_applies_each_layer_and_of_an_estargz_one_mounts_each() {
    let mut w = World::start();
    w.push(
        "lib/plain",
        "v1",
        &ringstar_image::LayerFormat::Gzip,
        &["sh", "-c", world::SCRIPT],
    );
    let image = w.push(
        "lib/lazy",
        "v1",
        &world::estargz(),
        &["sh", "-c", world::SCRIPT],
    );

    let plain = rpull_into(&w, "lib/plain", "v1", "ringstar");
    assert!(plain.layers.iter().all(|l| !l.remote), "{plain:?}");
    let out = w.run_container(&format!("{}/lib/plain:v1", w.registry.addr), &[]);
    assert!(
        out.contains("hello from ringstar") && out.contains("whiteout-applied"),
        "{out}"
    );

    let lazy = rpull_into(&w, "lib/lazy", "v1", "ringstar");
    assert!(lazy.layers.iter().all(|l| l.remote), "{lazy:?}");
    let out = w.run_container(&format!("{}/lib/lazy:v1", w.registry.addr), &[]);
    assert!(
        out.contains("hello from ringstar") && out.contains("whiteout-applied"),
        "{out}"
    );
    // Lazily: no layer blob in containerd's content store, the manifest
    // and config are.
    never_downloaded(&w, image.layers.iter().map(|l| l.digest.to_string()));
    let content = w.ctr_ok(&["content", "ls", "-q"]);
    assert!(
        content.contains(&image.manifest_digest().to_string()),
        "{content}"
    );
    // Again: every snapshot is there, nothing is prepared twice.
    let again = rpull_into(&w, "lib/lazy", "v1", "ringstar");
    assert_eq!(again.layers, lazy.layers);
}

/// Pushes the test image (busybox layers, gzip) as `lib/plain:v1` and
/// converts it into `dst_repo:v1` in `format`; returns the target, the
/// options used and what was converted.
fn convert_world_image(
    w: &World,
    dst_repo: &str,
    format: ringstar_core::writer::OutputFormat,
    level: i32,
) -> (
    ImageStore,
    ConvertOptions,
    ringstar_image::convert::Converted,
) {
    w.push(
        "lib/plain",
        "v1",
        &ringstar_image::LayerFormat::Gzip,
        &["sh", "-c", world::SCRIPT],
    );
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let src = ImageStore::repository(&fetcher, &w.registry.addr, "lib/plain");
    let dst = ImageStore::repository(&fetcher, &w.registry.addr, dst_repo);
    let opts = ConvertOptions {
        writer: ringstar_core::writer::WriterOptions {
            format,
            compression_level: level,
            ..Default::default()
        },
        jobs: 2,
        cache: None,
    };
    let done = convert(
        &src,
        &RootRef::Tag("v1".into()),
        &dst,
        Some("v1"),
        &opts,
        &Silent,
    )
    .unwrap();
    (dst, opts, done)
}

/// `ringstar image convert --zstdchunked`'s output (here through the
/// library it runs) is read lazily by both daemons: ringstar, through our
/// rpull, and the reference, through ctr-remote. Neither downloads a
/// layer, and the container sees the layers as they were (the whiteout
/// included).
#[test]
fn zstd_chunked_images_are_pulled_lazily_by_ringstar_and_the_reference() {
    let Some((_, reference)) = bench_parts() else {
        return;
    };
    let mut w = World::start_with_reference(&reference);
    let (dst, _, done) = convert_world_image(
        &w,
        "lib/zstd",
        ringstar_core::writer::OutputFormat::ZstdChunked,
        ringstar_core::writer::DEFAULT_ZSTD_LEVEL,
    );
    let layers = &done.manifests[0].1;
    for l in layers {
        let d = &l.descriptor;
        assert_eq!(d.media_type, ringstar_image::media::OCI_LAYER_ZSTD);
        assert!(
            d.annotation(ringstar_image::media::ZSTD_CHUNKED_POSITION_ANNOTATION)
                .is_some()
        );
        let blob = dst.blob_bytes(&d.digest, 64 << 20).unwrap();
        ringstar_testkit::reference_reads(
            &blob,
            d.annotation(ringstar_image::TOC_DIGEST_ANNOTATION).unwrap(),
        );
    }
    let digests = || layers.iter().map(|l| l.descriptor.digest.to_string());
    let image = format!("{}/lib/zstd:v1", w.registry.addr);

    w.rpull_on("stargz", &image);
    let out = w.run_on("stargz", &image, &[]);
    assert!(
        out.contains("hello from ringstar") && out.contains("whiteout-applied"),
        "{out}\n{}",
        w.logs()
    );
    never_downloaded(&w, digests());

    let pulled = rpull_into(&w, "lib/zstd", "v1", "ringstar");
    assert!(pulled.layers.iter().all(|l| l.remote), "{pulled:?}");
    let out = w.run_container(&image, &[]);
    assert!(
        out.contains("hello from ringstar") && out.contains("whiteout-applied"),
        "{out}\n{}",
        w.logs()
    );
    never_downloaded(&w, digests());
}

/// `ringstar image convert --external-toc` (the library it runs): the
/// layers carry no TOC, the TOC image `v1-esgztoc` holds them, and
/// ringstar finds each layer's TOC there, checks it and mounts the layer
/// lazily. The same manifest under a tag with no TOC image falls back to
/// a normal pull, and still runs. (Debian's reference, 0.12, predates
/// external TOCs: nothing to compare with here.)
#[test]
fn external_toc_images_are_pulled_lazily_through_their_toc_image() {
    let mut w = World::start();
    let (dst, opts, done) = convert_world_image(
        &w,
        "lib/ext",
        ringstar_core::writer::OutputFormat::ExternalToc,
        ringstar_core::writer::DEFAULT_COMPRESSION_LEVEL,
    );
    let layers = &done.manifests[0].1;
    let toc_image = done.toc_image.clone().expect("a TOC image");
    let toc_doc = dst.root(&RootRef::Tag("v1-esgztoc".into())).unwrap();
    assert_eq!(toc_doc.digest, toc_image.digest);
    let toc_manifest: serde_json::Value = serde_json::from_slice(&toc_doc.bytes).unwrap();
    for l in layers {
        let d = &l.descriptor.digest;
        let blob = dst.blob_bytes(d, 64 << 20).unwrap();
        assert!(
            blob.ends_with(
                b"STARGZEXTERNALTOC\x01\x00\x00\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"
            )
        );
        let listed = toc_manifest["layers"].as_array().unwrap().iter().any(|t| {
            t["annotations"][ringstar_image::media::LAYER_DIGEST_ANNOTATION] == d.to_string()
        });
        assert!(listed, "no TOC for {d} in {toc_manifest}");
    }
    let digests = || layers.iter().map(|l| l.descriptor.digest.to_string());

    let pulled = rpull_into(&w, "lib/ext", "v1", "ringstar");
    assert!(
        pulled.layers.iter().all(|l| l.remote),
        "{pulled:?}\n{}",
        w.logs()
    );
    let image = format!("{}/lib/ext:v1", w.registry.addr);
    let out = w.run_container(&image, &[]);
    assert!(
        out.contains("hello from ringstar") && out.contains("whiteout-applied"),
        "{out}\n{}",
        w.logs()
    );
    never_downloaded(&w, digests());

    // An image whose tag has no TOC image (its layer is one no pull here
    // has seen): a normal pull, the layer being gzip.
    let unique = ringstar_testkit::images::TarBuilder::default()
        .file("only-here.txt", 0o644, b"a layer of its own\n")
        .finish();
    w.push_layers(
        "lib/other",
        "v1",
        &[unique],
        &ringstar_image::LayerFormat::Gzip,
        &["true"],
    );
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let src = ImageStore::repository(&fetcher, &w.registry.addr, "lib/other");
    let done = convert(
        &src,
        &RootRef::Tag("v1".into()),
        &dst,
        Some("elsewhere"),
        &opts,
        &Silent,
    )
    .unwrap();
    let manifest = dst.document(&done.root).unwrap();
    dst.put_document(&manifest.bytes, &manifest.media_type, Some("lonely"))
        .unwrap();
    let pulled = rpull_into(&w, "lib/ext", "lonely", "ringstar");
    assert!(pulled.layers.iter().all(|l| !l.remote), "{pulled:?}");
}
