use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::auth::helper::HELPER_TIMEOUT;

fn helper_in(dir: &Path, name: &str, script: &str) {
    ringstar_testkit::write_executable(&dir.join(format!("docker-credential-{name}")), script);
}

#[test]
fn a_hanging_credential_helper_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    // Sleeps in its own process (exec), so killing it ends it.
    helper_in(
        dir.path(),
        "slow",
        &format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 120\n",
            pidfile.display()
        ),
    );
    // Leaves a child holding stdout open after it is killed.
    helper_in(dir.path(), "forks", "#!/bin/sh\nsleep 30\necho '{}'\n");
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"credHelpers":{"slow.example":"slow","forks.example":"forks"}}"#,
    )
    .unwrap();
    let timeout = Duration::from_secs(2);
    let dc = DockerConfig::at(&cfg)
        .with_helper_dir(dir.path())
        .with_helper_timeout(timeout);
    for host in ["slow.example", "forks.example"] {
        let start = Instant::now();
        match dc.lookup(host) {
            Err(AuthError::HelperTimeout { after, .. }) => assert_eq!(after, timeout),
            other => panic!("{host}: want HelperTimeout, got {other:?}"),
        }
        // Bounded by the timeout, not by the helper (it sleeps 30-120 s).
        let took = start.elapsed();
        assert!(
            took >= timeout && took < Duration::from_secs(20),
            "{host}: {took:?}"
        );
    }
    // The helper was killed and reaped.
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "helper {pid} still running"
    );
    assert_eq!(DockerConfig::at(&cfg).helper_timeout, HELPER_TIMEOUT);
}

#[test]
fn a_failing_helper_is_quoted_cut_at_a_character() {
    let dir = tempfile::tempdir().unwrap();
    // One byte, then two-byte characters: byte 200 falls inside one,
    // where the quote of its words used to be cut (a panic).
    helper_in(
        dir.path(),
        "wide",
        &format!("#!/bin/sh\necho 'x{}'\nexit 1\n", "\u{e9}".repeat(150)),
    );
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"credsStore":"wide"}"#).unwrap();
    let dc = DockerConfig::at(&cfg).with_helper_dir(dir.path());
    match dc.lookup("x.example") {
        Err(AuthError::Helper { reason, .. }) => assert!(reason.contains("exited"), "{reason}"),
        other => panic!("want Helper error, got {other:?}"),
    }
}

#[test]
fn docker_config_entries_helpers_and_hub_key() {
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("docker-credential-test");
    ringstar_testkit::write_executable(
        &helper,
        "#!/bin/sh\nread s\ncase \"$s\" in\n  helped.example) echo '{\"ServerURL\":\"helped.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n  store.example) echo '{\"Username\":\"<token>\",\"Secret\":\"idt\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
    );
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnB3"},
                         "http://plain.example:5000":{"username":"pu","password":"pp"},
                         "id.example":{"identitytoken":"tok"}},
                "credHelpers":{"helped.example":"test"},
                "credsStore":"test"}"#,
    )
    .unwrap();
    let dc = DockerConfig::at(&cfg).with_helper_dir(dir.path());
    let get = |h| dc.lookup(h).unwrap().map(|c| (c.username, c.secret));
    assert_eq!(get("docker.io"), Some(("hub".into(), "pw".into())));
    assert_eq!(get("plain.example:5000"), Some(("pu".into(), "pp".into())));
    assert_eq!(get("id.example"), Some(("".into(), "tok".into())));
    assert_eq!(get("helped.example"), Some(("hu".into(), "hs".into())));
    assert_eq!(get("store.example"), Some(("".into(), "idt".into())));
    assert_eq!(get("nowhere.example"), None);
    // No file: anonymous. A broken file: an error naming it.
    assert_eq!(
        DockerConfig::at(dir.path().join("none.json"))
            .lookup("x")
            .unwrap(),
        None
    );
    std::fs::write(&cfg, "{").unwrap();
    assert!(matches!(dc.lookup("x"), Err(AuthError::Config { .. })));
    // Two keys for one host: the same (first by key) every time.
    std::fs::write(
        &cfg,
        r#"{"auths":{"https://two.example/v1/":{"auth":"YjpiYg=="},
                         "http://two.example":{"auth":"YTphYQ=="}}}"#,
    )
    .unwrap();
    for _ in 0..8 {
        let dc = DockerConfig::at(&cfg);
        assert_eq!(dc.lookup("two.example").unwrap().unwrap().username, "a");
    }
    // A secret in the wrong place is not quoted back in the error.
    std::fs::write(&cfg, r#"{"auths":{"x":"hunter2"}}"#).unwrap();
    let err = dc.lookup("x").unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("line 1"), "{err}");
}
