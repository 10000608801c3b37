//! The distribution API the image tools use, against Debian's real
//! docker-registry: chunked and monolithic uploads, cross-repository
//! mounts, manifests put and fetched, blobs streamed and checked — over
//! TLS with htpasswd, with bearer tokens scoped for push, and plain.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use ringstar_core::Digest;
use ringstar_fetcher::{
    FetchError, Fetcher, FetcherConfig, Mounted, Reference, Repository, ResolverConfig,
};
use ringstar_testkit::{Registry, RegistryAuth, TokenServer, TokenServerOptions, write_htpasswd};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn bytes(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

fn config(
    credentials: Option<Arc<dyn ringstar_fetcher::CredentialSource>>,
    ca: Option<std::path::PathBuf>,
) -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_secs(10),
        max_retries: 1,
        backoff_min: Duration::from_millis(10),
        credentials,
        ca_file: ca,
        ..FetcherConfig::default()
    }
}

fn repo(addr: &str, name: &str, tls: bool) -> Repository {
    let r: Reference = format!("{addr}/{name}:x").parse().unwrap();
    let mut repo = Repository::origin_of(&r, &ResolverConfig::default());
    if tls {
        repo.endpoint.base = format!("https://{addr}");
    }
    repo
}

/// Uploads `data` in `chunk`-byte PATCHes; returns its digest.
fn upload(f: &Fetcher, repo: &Repository, data: &[u8], chunk: usize) -> Digest {
    let mut up = f.start_upload(repo, chunk).unwrap();
    for piece in data.chunks(7919) {
        up.write_all(piece).unwrap();
    }
    let (digest, size) = up.finish().unwrap();
    assert_eq!((digest, size), (Digest::of(data), data.len() as u64));
    digest
}

/// A layer and a config uploaded (chunked and monolithic), a manifest put
/// by tag, fetched by tag and digest, the layer streamed back and mounted
/// into a second repository.
fn round_trip(f: &Fetcher, a: &Repository, b: &Repository) {
    let layer = bytes(1_000_003, 1);
    let layer_digest = upload(f, a, &layer, 100_000);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = upload(f, a, config, 1 << 20);
    assert_eq!(
        f.blob_exists(a, &layer_digest).unwrap(),
        Some(layer.len() as u64)
    );
    assert_eq!(f.blob_exists(b, &layer_digest).unwrap(), None);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    f.put_manifest(a, "v1", MANIFEST, manifest.clone().into())
        .unwrap();
    let by_tag = f.fetch_manifest(a, "v1", &[MANIFEST], 1 << 20).unwrap();
    assert_eq!(&by_tag.bytes[..], &manifest[..]);
    assert_eq!(by_tag.media_type, MANIFEST);
    let by_digest = f
        .fetch_manifest(a, &by_tag.digest.to_string(), &[MANIFEST], 1 << 20)
        .unwrap();
    assert_eq!(by_digest.digest, Digest::of(&manifest));
    // Bounded: a manifest past the caller's limit is refused.
    assert!(matches!(
        f.fetch_manifest(a, "v1", &[MANIFEST], 100),
        Err(FetchError::BadResponse { .. })
    ));
    assert_eq!(&f.fetch_blob(a, &config_digest, 4096).unwrap()[..], config);

    let mut back = Vec::new();
    let mut reader = f.open_blob(a, &layer_digest).unwrap();
    assert_eq!(reader.size, Some(layer.len() as u64));
    reader.read_to_end(&mut back).unwrap();
    assert!(back == layer, "streamed blob differs");

    assert_eq!(
        f.mount_blob(b, &layer_digest, &a.name).unwrap(),
        Mounted::Yes
    );
    assert_eq!(
        f.blob_exists(b, &layer_digest).unwrap(),
        Some(layer.len() as u64)
    );
    let absent = Digest::of(b"nobody has this");
    assert_eq!(f.mount_blob(b, &absent, &a.name).unwrap(), Mounted::No);
    assert!(matches!(
        f.fetch_manifest(a, "nope", &[MANIFEST], 1 << 20),
        Err(FetchError::NotFound { .. })
    ));
}

#[test]
fn uploads_mounts_and_manifests_over_tls_with_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    ringstar_testkit::make_certs(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "carol", "pw1");
    let storage = dir.path().join("storage");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let reg = Registry::start_configured(
        &storage,
        Some((&cert, &key)),
        Some(&RegistryAuth::Htpasswd { path: htpasswd }),
    );
    let creds = ringstar_testkit::static_credentials(&reg.addr, "carol", "pw1");
    let f = Fetcher::new(config(Some(creds), Some(dir.path().join("ca.pem")))).unwrap();
    round_trip(
        &f,
        &repo(&reg.addr, "team/src", true),
        &repo(&reg.addr, "team/dst", true),
    );

    // Without credentials a push is refused with a typed error.
    let anon = Fetcher::new(config(None, Some(dir.path().join("ca.pem")))).unwrap();
    let err = anon
        .start_upload(&repo(&reg.addr, "team/src", true), 1 << 20)
        .unwrap_err();
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err:?}");
}

#[test]
fn bearer_tokens_for_push_carry_the_push_scope() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        dir.path(),
        TokenServerOptions {
            user: Some(("dan".into(), "pw".into())),
            oauth: true,
            expires_in: Some(300),
            ..Default::default()
        },
    );
    let reg = Registry::start_configured(
        &dir.path().join("storage"),
        None,
        Some(&tokens.registry_auth()),
    );
    let creds = ringstar_testkit::static_credentials(&reg.addr, "dan", "pw");
    let f = Fetcher::new(config(Some(creds), None)).unwrap();
    round_trip(
        &f,
        &repo(&reg.addr, "org/src", false),
        &repo(&reg.addr, "org/dst", false),
    );
    let scopes: Vec<String> = tokens
        .requests()
        .into_iter()
        .flat_map(|r| r.scopes)
        .collect();
    assert!(
        scopes.iter().any(|s| s == "repository:org/src:pull,push"),
        "{scopes:?}"
    );
    assert!(
        scopes.iter().any(|s| s == "repository:org/dst:pull,push"),
        "{scopes:?}"
    );
}

#[test]
fn a_streamed_blob_whose_bytes_are_not_its_digest_fails() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let reg = Registry::start_with(&storage, None);
    let f = Fetcher::new(config(None, None)).unwrap();
    let a = repo(&reg.addr, "plain/x", false);
    let data = bytes(300_000, 7);
    let digest = upload(&f, &a, &data, 1 << 20);
    // The registry's storage tampered with, same length.
    let hex = digest.hex();
    let path = storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut evil = data.clone();
    evil[150_000] ^= 1;
    std::fs::write(&path, &evil).unwrap();
    let mut out = Vec::new();
    let err = f
        .open_blob(&a, &digest)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert!(err.to_string().contains("has digest"), "{err}");
}
