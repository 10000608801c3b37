//! `ringstar image convert` as users run it, against Debian's real
//! docker-registry: a multi-platform image between repositories of a TLS
//! registry with htpasswd (credentials from a docker config), a Docker
//! image from an OCI layout to a plain registry and back to a layout.
//! Every converted layer opens in the reference reader and in ours, its
//! DiffID is its decompressed digest, and blobs the target has (or a
//! layer converted before) are not sent again.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use ringstar_core::writer::{WriterOptions, build_to_vec};
use ringstar_core::{Digest, Layer, OpenOptions};
use ringstar_fetcher::{Fetcher, FetcherConfig};
use ringstar_image::ImageStore;
use ringstar_image::media::{self, Descriptor};
use ringstar_testkit::images::TarBuilder;
use ringstar_testkit::mounted::content;
use ringstar_testkit::{Registry, RegistryAuth, write_htpasswd};

fn tar_a() -> Vec<u8> {
    TarBuilder::default()
        .dir("etc")
        .file("etc/motd", 0o644, b"converted by ringstar\n")
        .dir("usr/bin")
        .file("usr/bin/tool", 0o755, &content(300_000, 3))
        .symlink("usr/bin/alias", "tool")
        .finish()
}

fn tar_c() -> Vec<u8> {
    TarBuilder::default()
        .file("data/blob.bin", 0o644, &content(70_000, 5))
        .finish()
}

fn tar_d() -> Vec<u8> {
    TarBuilder::default()
        .file("arm/only", 0o644, b"arm64 layer\n")
        .finish()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::of(bytes),
        size: bytes.len() as u64,
        annotations: Default::default(),
        rest: Default::default(),
    }
}

/// A source layer: media type, blob, DiffID, an annotation.
type SourceLayer<'a> = (&'a str, Vec<u8>, Digest, Option<(&'a str, String)>);

/// Puts a manifest of `layers` into `store`.
fn put_manifest(
    store: &ImageStore,
    manifest_type: &str,
    config_type: &str,
    layers: &[SourceLayer<'_>],
    tag: Option<&str>,
) -> Descriptor {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/usr/bin/tool"], "Env": ["A=b"]},
        "history": [{"created_by": "test"}],
        "rootfs": {"type": "layers",
                   "diff_ids": layers.iter().map(|l| l.2.to_string()).collect::<Vec<_>>()},
    }))
    .unwrap();
    store.put_blob(&config).unwrap();
    let mut descs = Vec::new();
    for (mt, blob, _, annotation) in layers {
        store.put_blob(blob).unwrap();
        let mut d = descriptor(mt, blob);
        if let Some((k, v)) = annotation {
            d.annotations.insert(k.to_string(), v.clone().into());
        }
        descs.push(d);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": descriptor(config_type, &config),
        "layers": descs,
    }))
    .unwrap();
    store.put_document(&manifest, manifest_type, tag).unwrap()
}

fn run_convert(args: &[&str], env: &[(&str, &Path)]) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringstar"));
    cmd.args(["image", "convert"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "convert {args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"))
}

/// Every layer of the manifest `m` of `store`: eStargz that opens (TOC
/// digest checked) in both readers, its DiffID in the config its
/// decompressed digest. Returns (layer digest, file name → content
/// sha256) per layer.
fn check_manifest(store: &ImageStore, m: &Descriptor) -> Vec<(Digest, Vec<(String, String)>)> {
    let doc = store.document(m).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&doc.bytes).unwrap();
    assert_eq!(manifest["mediaType"], media::OCI_MANIFEST);
    let config: Descriptor = serde_json::from_value(manifest["config"].clone()).unwrap();
    assert_eq!(config.media_type, media::OCI_CONFIG);
    let cfg: serde_json::Value =
        serde_json::from_slice(&store.blob_bytes(&config.digest, 1 << 20).unwrap()).unwrap();
    assert_eq!(cfg["config"]["Env"][0], "A=b", "config fields kept");
    let layers: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone()).unwrap();
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l.media_type, media::OCI_LAYER_GZIP);
        let toc = l
            .annotation(media::TOC_DIGEST_ANNOTATION)
            .expect("toc digest");
        let blob = store.blob_bytes(&l.digest, 64 << 20).unwrap();
        let mut raw = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][i], Digest::of(&raw).to_string());
        // Converted layers carry their size (kept ones what they had).
        if let Some(size) = l.annotation(media::UNCOMPRESSED_SIZE_ANNOTATION) {
            assert_eq!(size, raw.len().to_string());
        }
        ringstar_testkit::reference_reads(&blob, toc);
        let opts = OpenOptions {
            toc_digest: Some(toc.parse().unwrap()),
            ..OpenOptions::default()
        };
        let layer = Layer::open(&blob[..], blob.len() as u64, &opts).unwrap();
        let files = ringstar_core::inspect::inspect(&layer, &blob[..])
            .into_iter()
            .inspect(|r| assert!(r.error.is_none(), "{r:?}"))
            .filter_map(|r| r.sha256.map(|s| (r.name, s)))
            .collect();
        out.push((l.digest, files));
    }
    out
}

/// How many requests the registry has logged once one matches `last`.
fn logged_after(reg: &Registry, last: impl Fn(&(String, String, u16)) -> bool) -> usize {
    let start = std::time::Instant::now();
    loop {
        let reqs = reg.requests();
        if reqs.iter().any(&last) {
            return reqs.len();
        }
        // Generous: the registry logs late on a loaded machine.
        assert!(start.elapsed().as_secs() < 60, "not logged: {reqs:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn has_file(files: &[(String, String)], name: &str, data: &[u8]) -> bool {
    files
        .iter()
        .any(|(n, s)| n == name && *s == Digest::of(data).hex())
}

#[test]
fn a_multi_platform_image_converts_between_repositories_of_a_tls_registry_with_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ringstar_testkit::make_certs(d);
    let htpasswd = d.join("htpasswd");
    write_htpasswd(&htpasswd, "erin", "pw2");
    let log = d.join("access.log");
    let reg = Registry::start_full(
        &d.join("storage"),
        Some((&d.join("server.pem"), &d.join("server.key"))),
        Some(&RegistryAuth::Htpasswd { path: htpasswd }),
        Some(&log),
    );
    let fetcher = Fetcher::new(FetcherConfig {
        ca_file: Some(d.join("ca.pem")),
        credentials: Some(ringstar_testkit::static_credentials(
            &reg.addr, "erin", "pw2",
        )),
        ..FetcherConfig::default()
    })
    .unwrap();
    let https = |repo: &str| {
        let mut s = ImageStore::repository(&fetcher, &reg.addr, repo);
        if let ImageStore::Registry { repo, .. } = &mut s {
            repo.endpoint.base = format!("https://{}", reg.addr);
        }
        s
    };
    let src = https("src/app");

    // amd64: a gzip layer, an eStargz one (kept), an uncompressed one;
    // arm64: a zstd layer.
    let (a, c, dz) = (tar_a(), tar_c(), tar_d());
    let b_tar = TarBuilder::default().file("opt/b", 0o644, b"bee").finish();
    let (b_blob, b_built) = build_to_vec(&b_tar[..], &WriterOptions::default()).unwrap();
    let b_toc = (media::TOC_DIGEST_ANNOTATION, b_built.toc_digest.to_string());
    let amd = put_manifest(
        &src,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        &[
            (media::OCI_LAYER_GZIP, gzip(&a), Digest::of(&a), None),
            (
                media::OCI_LAYER_GZIP,
                b_blob.clone(),
                b_built.diff_id,
                Some(b_toc),
            ),
            (media::OCI_LAYER_TAR, c.clone(), Digest::of(&c), None),
        ],
        None,
    );
    let d_blob = zstd::encode_all(&dz[..], 3).unwrap();
    let arm = put_manifest(
        &src,
        media::OCI_MANIFEST,
        media::OCI_CONFIG,
        &[(media::OCI_LAYER_ZSTD, d_blob, Digest::of(&dz), None)],
        None,
    );
    let platform = |arch: &str| serde_json::json!({"os": "linux", "architecture": arch});
    let mut list = vec![amd.clone(), arm.clone()];
    list[0].rest.insert("platform".into(), platform("amd64"));
    list[1].rest.insert("platform".into(), platform("arm64"));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": list,
    }))
    .unwrap();
    src.put_document(&index, media::OCI_INDEX, Some("multi"))
        .unwrap();

    // The user's docker config holds the credentials; the cache is theirs.
    let docker = d.join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZXJpbjpwdzI="}}}}}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let cache = d.join("cache");
    let env = [
        ("DOCKER_CONFIG", docker.as_path()),
        ("XDG_CACHE_HOME", cache.as_path()),
    ];
    let ca = d.join("ca.pem");
    let args = [
        "--ca-file",
        ca.to_str().unwrap(),
        &format!("{}/src/app:multi", reg.addr),
        &format!("{}/dst/app:esgz", reg.addr),
    ];
    let out = run_convert(&args, &env);
    assert_eq!(out["media_type"], media::OCI_INDEX);

    let dst = https("dst/app");
    let root = dst
        .root(&ringstar_image::RootRef::Tag("esgz".into()))
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&root.bytes).unwrap();
    let listed: Vec<Descriptor> = serde_json::from_value(index["manifests"].clone()).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].rest["platform"]["architecture"], "amd64");
    assert_eq!(listed[1].rest["platform"]["architecture"], "arm64");
    let amd_layers = check_manifest(&dst, &listed[0]);
    assert!(has_file(
        &amd_layers[0].1,
        "usr/bin/tool",
        &content(300_000, 3)
    ));
    assert_eq!(
        amd_layers[1].0,
        Digest::of(&b_blob),
        "an eStargz layer is kept"
    );
    assert!(has_file(
        &amd_layers[2].1,
        "data/blob.bin",
        &content(70_000, 5)
    ));
    let arm_layers = check_manifest(&dst, &listed[1]);
    assert!(has_file(&arm_layers[0].1, "arm/only", b"arm64 layer\n"));

    // The kept layer was mounted from the source repository, not copied.
    let reqs = reg.requests();
    assert!(
        reqs.iter()
            .any(|(m, p, s)| m == "POST" && p.contains("mount=") && *s == 201),
        "{reqs:?}"
    );
    // Again: every layer is reused or present, nothing is uploaded. (The
    // registry logs a request after answering it: wait for run 1's last.)
    let before = logged_after(&reg, |(m, p, _)| {
        m == "PUT" && p.ends_with("/manifests/esgz")
    });
    let again = run_convert(&args, &env);
    assert_eq!(again["digest"], out["digest"], "the same image again");
    let uploads: Vec<_> = reg.requests()[before..]
        .iter()
        .filter(|(m, p, _)| (m == "PATCH" || m == "PUT" || m == "POST") && p.contains("/blobs/"))
        .cloned()
        .collect();
    assert!(uploads.is_empty(), "{uploads:?}");
}

#[test]
fn a_docker_image_converts_from_a_layout_to_a_plain_registry_and_back_to_a_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let reg = Registry::start_logged(&d.join("access.log"));
    let fetcher = Fetcher::new(FetcherConfig::default()).unwrap();
    let layout = d.join("layout");
    let src = ImageStore::Layout(ringstar_image::layout::Layout::create(&layout).unwrap());
    let (a, c) = (tar_a(), tar_c());
    put_manifest(
        &src,
        media::DOCKER_MANIFEST,
        media::DOCKER_CONFIG,
        &[
            (media::DOCKER_LAYER_GZIP, gzip(&a), Digest::of(&a), None),
            (media::DOCKER_LAYER_GZIP, gzip(&c), Digest::of(&c), None),
        ],
        Some("org"),
    );
    let cache = d.join("cache");
    let env = [("XDG_CACHE_HOME", cache.as_path())];
    let oci_src = format!("oci:{}:org", layout.display());
    let remote = format!("{}/lib/app:esgz", reg.addr);
    run_convert(&[&oci_src, &remote], &env);
    let dst = ImageStore::repository(&fetcher, &reg.addr, "lib/app");
    let root = dst
        .root(&ringstar_image::RootRef::Tag("esgz".into()))
        .unwrap();
    assert_eq!(
        root.media_type,
        media::OCI_MANIFEST,
        "Docker types become OCI"
    );
    let layers = check_manifest(&dst, &descriptor(&root.media_type, &root.bytes));
    assert!(has_file(
        &layers[0].1,
        "etc/motd",
        b"converted by ringstar\n"
    ));

    // Back into a new layout: every layer is eStargz already, kept and
    // copied as it is.
    let back = d.join("back");
    let out = run_convert(&[&remote, &format!("oci:{}:v1", back.display())], &env);
    let layers_out = out["manifests"][0]["layers"].as_array().unwrap().clone();
    assert!(layers_out.iter().all(|l| l["converted"] == false), "{out}");
    let copy = ImageStore::Layout(ringstar_image::layout::Layout::open(&back).unwrap());
    let root = copy
        .root(&ringstar_image::RootRef::Tag("v1".into()))
        .unwrap();
    let again = check_manifest(&copy, &descriptor(&root.media_type, &root.bytes));
    assert_eq!(
        again.iter().map(|l| l.0).collect::<Vec<_>>(),
        layers.iter().map(|l| l.0).collect::<Vec<_>>()
    );

    // A source blob that is not its digest: a clear error, and no image.
    let manifest: serde_json::Value = serde_json::from_slice(
        &src.root(&ringstar_image::RootRef::Tag("org".into()))
            .unwrap()
            .bytes,
    )
    .unwrap();
    let first: Descriptor = serde_json::from_value(manifest["layers"][1].clone()).unwrap();
    let path = layout.join("blobs/sha256").join(first.digest.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    let evil = gzip(&TarBuilder::default().file("x", 0o644, b"evil").finish());
    bytes.truncate(0);
    bytes.extend_from_slice(&evil);
    std::fs::write(&path, &bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringstar"))
        .args(["image", "convert", "--no-cache", &oci_src])
        .arg(format!("{}/lib/evil:esgz", reg.addr))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("has digest"), "{stderr}");
    let fetched = dst.root(&ringstar_image::RootRef::Tag("nope".into()));
    assert!(fetched.is_err());
    let evil_repo = ImageStore::repository(&fetcher, &reg.addr, "lib/evil");
    assert!(
        evil_repo
            .root(&ringstar_image::RootRef::Tag("esgz".into()))
            .is_err()
    );
}
