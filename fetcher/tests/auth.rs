//! Authentication against Debian's real docker-registry: Basic auth from
//! an htpasswd file, and bearer tokens from a token server in the harness
//! whose ES256 JWTs the registry verifies through `rootcertbundle`.

use std::sync::Arc;
use std::time::Duration;

use ringstar_fetcher::{DockerConfig, FetchError, Fetcher, FetcherConfig};
use ringstar_testkit::{Registry, RegistryAuth, TokenServer, TokenServerOptions, write_htpasswd};

fn blob_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

fn config(credentials: Option<Arc<dyn ringstar_fetcher::CredentialSource>>) -> FetcherConfig {
    FetcherConfig {
        request_timeout: Duration::from_secs(5),
        max_retries: 2,
        backoff_min: Duration::from_millis(10),
        credentials,
        ..FetcherConfig::default()
    }
}

/// Pushes `data` through an open registry on `storage`, then serves the
/// same storage with `auth`.
fn registry_with(
    storage: &std::path::Path,
    auth: &RegistryAuth,
    repo: &str,
    data: &[u8],
) -> (Registry, String) {
    let digest = Registry::start_with(storage, None).push(repo, data);
    (
        Registry::start_configured(storage, None, Some(auth)),
        digest,
    )
}

#[test]
fn basic_auth_from_htpasswd() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let data = blob_bytes(50_000);
    let (reg, digest) = registry_with(
        dir.path(),
        &RegistryAuth::Htpasswd { path: htpasswd },
        "team/app",
        &data,
    );
    let loc = reg.location("team/app", &digest);

    let f = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr, "alice", "s3cret",
    ))))
    .unwrap();
    assert_eq!(
        &f.read_range(&loc, 100, 1000).unwrap()[..],
        &data[100..1100]
    );
    assert_eq!(f.blob_size(&loc).unwrap(), data.len() as u64);

    // No credentials, or wrong ones: a typed error, not retried forever.
    let anon = Fetcher::new(config(None)).unwrap();
    match anon.read_range(&loc, 0, 10) {
        Err(FetchError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("none is configured"), "{reason}")
        }
        other => panic!("want Unauthorized, got {other:?}"),
    }
    let wrong = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr, "alice", "guess",
    ))))
    .unwrap();
    let err = wrong.read_range(&loc, 0, 10).unwrap_err();
    assert!(matches!(err, FetchError::Unauthorized { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("guess"),
        "secret in {err:?}"
    );
}

#[test]
fn bearer_tokens_are_fetched_once_cached_and_scoped() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(
        dir.path(),
        TokenServerOptions {
            user: Some(("bob".into(), "pw".into())),
            oauth: true,
            expires_in: Some(300),
            ..Default::default()
        },
    );
    let data = blob_bytes(200_000);
    let storage = dir.path().join("storage");
    let (reg, digest) = registry_with(&storage, &tokens.registry_auth(), "org/img", &data);
    let loc = reg.location("org/img", &digest);

    // Credentials from a docker config file, as users have them.
    let docker = dir.path().join("config.json");
    std::fs::write(
        &docker,
        format!(r#"{{"auths":{{"{}":{{"auth":"Ym9iOnB3"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let f = Fetcher::new(config(Some(Arc::new(DockerConfig::at(&docker))))).unwrap();
    // The first request learns the challenge; 32 concurrent reads after it
    // share one token request.
    assert_eq!(&f.read_range(&loc, 0, 10).unwrap()[..], &data[..10]);
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..32u64 {
        let tx = tx.clone();
        f.read_range_then(&loc, i * 5000, 4000, move |r| tx.send((i, r)).unwrap());
    }
    drop(tx);
    for (i, r) in rx {
        let at = (i * 5000) as usize;
        assert_eq!(&r.unwrap()[..], &data[at..at + 4000]);
    }
    let asked = tokens.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "POST");
    assert_eq!(asked[0].grant, "password");
    assert_eq!(asked[0].scopes, vec!["repository:org/img:pull".to_string()]);
    assert!(asked[0].authenticated);

    // A token the registry stops accepting while we still hold it: the
    // 401 refreshes it once and the read goes on.
    let f = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr, "bob", "pw",
    ))))
    .unwrap();
    tokens.issue_stale(58); // valid for ~2 s more (60 s leeway)
    assert_eq!(&f.read_range(&loc, 10, 10).unwrap()[..], &data[10..20]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(&f.read_range(&loc, 20, 10).unwrap()[..], &data[20..30]);
    assert_eq!(tokens.requests().len(), 3);

    // Wrong password: the token server refuses, a typed error.
    let wrong = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr, "bob", "nope",
    ))))
    .unwrap();
    assert!(matches!(
        wrong.read_range(&loc, 0, 10),
        Err(FetchError::Unauthorized { .. })
    ));
}

#[test]
fn token_flows_classic_get_anonymous_identity_token_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob_bytes(10_000);

    // A classic server (no OAuth2 endpoint): the POST falls back to a GET
    // with Basic credentials.
    let classic_dir = dir.path().join("classic");
    std::fs::create_dir(&classic_dir).unwrap();
    let classic = TokenServer::start(
        &classic_dir,
        TokenServerOptions {
            user: Some(("carol".into(), "pw".into())),
            oauth: false,
            ..Default::default()
        },
    );
    let (reg, digest) = registry_with(
        &classic_dir.join("storage"),
        &classic.registry_auth(),
        "c/app",
        &data,
    );
    let f = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr, "carol", "pw",
    ))))
    .unwrap();
    let loc = reg.location("c/app", &digest);
    assert_eq!(&f.read_range(&loc, 0, 100).unwrap()[..], &data[..100]);
    let asked: Vec<_> = classic
        .requests()
        .into_iter()
        .map(|r| (r.method, r.authenticated))
        .collect();
    assert_eq!(
        asked,
        vec![("POST".to_string(), true), ("GET".to_string(), true)]
    );

    // A public repository: anonymous tokens, with a short life that makes
    // the client fetch a new one before using a lapsed one.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    let open = TokenServer::start(
        &open_dir,
        TokenServerOptions {
            expires_in: Some(1),
            ..Default::default()
        },
    );
    let (reg, digest) = registry_with(
        &open_dir.join("storage"),
        &open.registry_auth(),
        "library/pub",
        &data,
    );
    let f = Fetcher::new(config(None)).unwrap();
    let loc = reg.location("library/pub", &digest);
    assert_eq!(&f.read_range(&loc, 0, 100).unwrap()[..], &data[..100]);
    assert_eq!(&f.read_range(&loc, 100, 100).unwrap()[..], &data[100..200]);
    assert_eq!(open.requests().len(), 1);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(&f.read_range(&loc, 200, 100).unwrap()[..], &data[200..300]);
    let asked = open.requests();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(asked.iter().all(|r| r.method == "GET" && !r.authenticated));

    // An identity token (docker login to a token service): the
    // refresh-token grant.
    let id_dir = dir.path().join("identity");
    std::fs::create_dir(&id_dir).unwrap();
    let id = TokenServer::start(
        &id_dir,
        TokenServerOptions {
            refresh_token: Some("refresh-me".into()),
            oauth: true,
            ..Default::default()
        },
    );
    let (reg, digest) = registry_with(&id_dir.join("storage"), &id.registry_auth(), "i/app", &data);
    let f = Fetcher::new(config(Some(ringstar_testkit::static_credentials(
        &reg.addr,
        "",
        "refresh-me",
    ))))
    .unwrap();
    let loc = reg.location("i/app", &digest);
    assert_eq!(&f.read_range(&loc, 5, 5).unwrap()[..], &data[5..10]);
    let asked = id.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        (asked[0].method.as_str(), asked[0].grant.as_str()),
        ("POST", "refresh_token")
    );
}
