//! Registry authentication: where credentials come from (docker config,
//! credential helpers, a fixed table), the `WWW-Authenticate` challenge a
//! registry answers with, and the bearer tokens it leads to.
//!
//! Authorization is keyed by host: a host gets an `Authorization` header
//! only after it asked for one with a 401, so redirect targets (blob
//! storage) never see one. Secrets never reach a log line or a `Debug`
//! print.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// Why credentials could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("docker config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper { helper: String, reason: String },
    /// The helper did not answer in time; it was killed.
    #[error("credential helper docker-credential-{helper}: no answer within {after:?}; killed")]
    HelperTimeout { helper: String, after: Duration },
}

/// How long a credential helper may take to answer. Helpers talk to a
/// keychain or a cloud metadata service: well under a second normally,
/// a few seconds when a cloud API is slow. Past this, something hangs,
/// and a fetch waiting for credentials must fail rather than hang with it.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most of a helper's stdout or stderr we read: an answer is a small
/// JSON object; anything bigger is a broken helper, not credentials.
const MAX_HELPER_OUTPUT: u64 = 1 << 20;

/// How often a running helper is checked for having exited.
const HELPER_POLL: Duration = Duration::from_millis(10);

/// The longest a bearer token is used for, whatever its server says
/// (`expires_in` is untrusted: u64::MAX overflowed the expiry instant).
/// Registries issue tokens for minutes; asking again hourly costs one
/// request per hour and scope.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Docker's default when a token answer has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A username and its secret. An empty username means the secret is an
/// identity (refresh) token.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Where credentials for a registry host come from. `lookup` may block
/// (it can run a helper program); the fetcher calls it off its runtime.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError>;
}

/// A fixed host → credentials table (configuration, tests).
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials(pub HashMap<String, Credentials>);

impl CredentialSource for StaticCredentials {
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        Ok(self.0.get(host).cloned())
    }
}

/// Docker's `config.json`: `auths` entries, `credHelpers` per host and a
/// default `credsStore`, read on every lookup so a new `docker login` is
/// seen without a restart (lookups happen once per token, not per read).
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    /// Where `docker-credential-*` helpers are looked for (`None`: `$PATH`).
    helper_dir: Option<PathBuf>,
    /// How long a helper may take ([`HELPER_TIMEOUT`] unless set).
    helper_timeout: Duration,
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    /// Sorted: when several keys name one host (`https://h/v1/`, `h`),
    /// the first in key order answers, the same one every time (a hash
    /// map's order differs per process and per map).
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Docker Hub's credentials live under its old index URL.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// The key docker uses for `host` in `auths` and with helpers.
fn server_key(host: &str) -> String {
    match host {
        "docker.io" | "registry-1.docker.io" | "index.docker.io" => DOCKER_HUB_KEY.to_string(),
        h => h.to_string(),
    }
}

/// `https://host:5000/v1/` → `host:5000`: how `auths` keys are compared.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn from_env() -> DockerConfig {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
            .unwrap_or_else(|| PathBuf::from("/root/.docker"));
        DockerConfig::at(dir.join("config.json"))
    }

    pub fn at(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig {
            path: path.into(),
            helper_dir: None,
            helper_timeout: HELPER_TIMEOUT,
        }
    }

    /// Gives helpers `after` to answer instead of [`HELPER_TIMEOUT`].
    pub fn with_helper_timeout(mut self, after: Duration) -> DockerConfig {
        self.helper_timeout = after;
        self
    }

    /// Looks for credential helpers in `dir` instead of `$PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> DockerConfig {
        self.helper_dir = Some(dir.into());
        self
    }

    fn config_error(&self, e: impl fmt::Display) -> AuthError {
        AuthError::Config {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Runs `docker-credential-<helper> get` with the server on stdin (the
    /// credential-helper protocol), for at most the helper timeout (then
    /// it is killed). "Not found" is no credentials.
    fn run_helper(&self, helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
        use std::io::{Read as _, Write as _};
        let fail = |reason: String| AuthError::Helper {
            helper: helper.to_string(),
            reason,
        };
        if helper.is_empty() || helper.contains('/') {
            return Err(fail("not a helper name".into()));
        }
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let deadline = Instant::now().checked_add(self.helper_timeout);
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        // Reading and writing happen on threads, so that nothing here
        // blocks past the deadline: a helper that neither reads its stdin
        // nor exits, or a child of it that keeps the pipe open.
        let stdin = child.stdin.take();
        let server_line = server.as_bytes().to_vec();
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        let io = std::thread::Builder::new()
            .name("cred-helper-io".into())
            .spawn(move || {
                if let Some(mut stdin) = stdin {
                    // A helper that exits without reading: its status says why.
                    let _ = stdin.write_all(&server_line);
                }
                let mut out = Vec::new();
                if let Some(stdout) = stdout {
                    let _ = stdout.take(MAX_HELPER_OUTPUT).read_to_end(&mut out);
                }
                let _ = tx.send(out);
            });
        let timed_out = |child: &mut std::process::Child| {
            let _ = child.kill();
            let _ = child.wait();
            tracing::warn!(
                helper = %format!("docker-credential-{helper}"),
                after_ms = self.helper_timeout.as_millis() as u64,
                "credential helper did not answer in time; killed it"
            );
            AuthError::HelperTimeout {
                helper: helper.to_string(),
                after: self.helper_timeout,
            }
        };
        if let Err(e) = io {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(e.to_string()));
        }
        let left = || {
            deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            })
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if !left().is_zero() => std::thread::sleep(HELPER_POLL.min(left())),
                Ok(None) => return Err(timed_out(&mut child)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(e.to_string()));
                }
            }
        };
        // It exited; its output is complete unless a child of it holds the
        // pipe open, which the deadline covers too.
        let out = rx.recv_timeout(left()).map_err(|_| timed_out(&mut child))?;
        if !status.success() {
            let said = String::from_utf8_lossy(&out);
            if said.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            // The helper's own words, cut short: they name the problem,
            // and a helper does not print secrets on failure.
            let said = said.trim();
            let cut = said.char_indices().nth(200).map_or(said.len(), |(i, _)| i);
            return Err(fail(format!("exited with {status}: {}", &said[..cut])));
        }
        parse_helper_answer(&out).map_err(|e| fail(format!("unreadable answer: {e}")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a docker config file or a helper's answer could not be read. The
/// reasons name the problem and where, never the text: serde's own
/// messages quote values ("invalid type: string \"…\""), which may be a
/// secret in the wrong place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{what} at line {line} column {column}")]
    Json {
        what: &'static str,
        line: usize,
        column: usize,
    },
    #[error("an `auth` value is {0}")]
    BadAuth(&'static str),
}

impl From<serde_json::Error> for ParseError {
    fn from(e: serde_json::Error) -> ParseError {
        use serde_json::error::Category;
        ParseError::Json {
            what: match e.classify() {
                Category::Io => "unreadable",
                Category::Syntax => "not JSON",
                Category::Data => "JSON of the wrong shape",
                Category::Eof => "JSON cut short",
            },
            line: e.line(),
            column: e.column(),
        }
    }
}

/// What a docker config file says about a registry host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigAnswer {
    /// Nothing: anonymous.
    None,
    Credentials(Credentials),
    /// Ask `docker-credential-<helper>` about `server`.
    Helper {
        helper: String,
        server: String,
    },
}

/// Where docker's `config.json` (its bytes; untrusted as far as parsing
/// goes) says credentials for `host` are: a `credHelpers` entry, an
/// `auths` entry, or the default `credsStore`, in docker's order.
pub fn config_answer(json: &[u8], host: &str) -> Result<ConfigAnswer, ParseError> {
    let cfg: ConfigFile = serde_json::from_slice(json)?;
    let key = server_key(host);
    if let Some(helper) = cfg
        .cred_helpers
        .get(&key)
        .or_else(|| cfg.cred_helpers.get(host))
    {
        return Ok(ConfigAnswer::Helper {
            helper: helper.clone(),
            server: key,
        });
    }
    let entry = cfg.auths.get(&key).or_else(|| {
        cfg.auths
            .iter()
            .find(|(k, _)| key_host(k) == host)
            .map(|(_, v)| v)
    });
    if let Some(entry) = entry
        && let Some(creds) = entry_credentials(entry)?
    {
        return Ok(ConfigAnswer::Credentials(creds));
    }
    match cfg.creds_store {
        Some(store) if !store.is_empty() => Ok(ConfigAnswer::Helper {
            helper: store,
            server: key,
        }),
        _ => Ok(ConfigAnswer::None),
    }
}

fn entry_credentials(e: &AuthEntry) -> Result<Option<Credentials>, ParseError> {
    if let Some(token) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials {
            username: String::new(),
            secret: token.to_string(),
        }));
    }
    if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| ParseError::BadAuth("not base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| ParseError::BadAuth("not UTF-8"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or(ParseError::BadAuth("not user:password"))?;
        if user.is_empty() && pass.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Credentials {
            username: user.to_string(),
            secret: pass.to_string(),
        }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
            username: u.clone(),
            secret: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// A credential helper's `get` answer (its stdout): the credentials, or
/// `None` when it holds no secret.
pub fn parse_helper_answer(stdout: &[u8]) -> Result<Option<Credentials>, ParseError> {
    let answer: HelperAnswer = serde_json::from_slice(stdout)?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    // Docker's convention for an identity token.
    let username = if answer.username == "<token>" {
        String::new()
    } else {
        answer.username
    };
    Ok(Some(Credentials {
        username,
        secret: answer.secret,
    }))
}

impl CredentialSource for DockerConfig {
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.config_error(e)),
        };
        match config_answer(&bytes, host).map_err(|e| self.config_error(e))? {
            ConfigAnswer::None => Ok(None),
            ConfigAnswer::Credentials(c) => Ok(Some(c)),
            ConfigAnswer::Helper { helper, server } => self.run_helper(&helper, &server),
        }
    }
}

/// What a registry asked for in its 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The challenge to answer among a 401's `WWW-Authenticate` values:
    /// Bearer if offered, else Basic. `None`: nothing we can answer.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
        let mut basic = false;
        for value in values {
            let Ok(challenges) = http_auth::parse_challenges(value) else {
                continue;
            };
            for c in challenges {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                if c.scheme.eq_ignore_ascii_case("bearer") {
                    if let Some(realm) = param("realm").filter(|r| !r.is_empty()) {
                        return Some(Challenge::Bearer {
                            realm,
                            service: param("service"),
                            scope: param("scope"),
                        });
                    }
                } else if c.scheme.eq_ignore_ascii_case("basic") {
                    basic = true;
                }
            }
        }
        basic.then_some(Challenge::Basic)
    }
}

/// `Authorization: Basic …` for these credentials.
pub fn basic_header(c: &Credentials) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.secret))
    )
}

/// The pull scope of a registry URL (`/v2/<repo>/blobs/…` or
/// `/v2/<repo>/manifests/…`), as tokens are requested and cached by.
pub fn pull_scope(url: &str) -> Option<String> {
    let path = url.split("://").nth(1)?;
    let path = &path[path.find('/')?..];
    let path = path.split('?').next()?;
    let rest = path.strip_prefix("/v2/")?;
    let repo = ["/blobs/", "/manifests/"]
        .iter()
        .find_map(|sep| rest.rfind(sep).map(|i| &rest[..i]))?;
    (!repo.is_empty()).then(|| format!("repository:{repo}:pull"))
}

/// A token server's JSON answer (untrusted): the token and its
/// `expires_in`, if it holds a token.
pub fn parse_token_answer(json: &[u8]) -> Option<(String, Option<u64>)> {
    serde_json::from_slice::<TokenAnswer>(json).ok()?.token()
}

/// How long to use a token whose answer said `expires_in` seconds
/// (untrusted): Docker's default when absent, clamped to
/// [1 s, [`MAX_TOKEN_LIFETIME`]], less a margin (a tenth, at most 10 s) so
/// that a request does not leave with a token about to lapse.
pub fn token_lifetime(expires_in: Option<u64>) -> Duration {
    let lifetime = expires_in
        .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_TOKEN_LIFETIME);
    let margin = (lifetime / 10).min(Duration::from_secs(10));
    lifetime.saturating_sub(margin)
}

/// A bearer token server's answer.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenAnswer {
    /// `token`, else `access_token`: the first that is a usable bearer
    /// token (RFC 6750's token68 is printable ASCII without spaces; other
    /// bytes could not go into an `Authorization` header).
    fn token(self) -> Option<(String, Option<u64>)> {
        let usable = |t: &String| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic());
        let t = self
            .token
            .filter(usable)
            .or(self.access_token.filter(usable))?;
        Some((t, self.expires_in))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_prefer_bearer_and_unescape() {
        let c = Challenge::parse([
            r#"Basic realm="r""#,
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        ]);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse([r#"Basic realm="Registry Realm""#]),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse(["Negotiate"]), None);
        assert_eq!(Challenge::parse([r#"Bearer service="x""#]), None);
        assert_eq!(Challenge::parse(["\"broken"]), None);
    }

    #[test]
    fn scopes_come_from_the_url() {
        assert_eq!(
            pull_scope("https://r.example/v2/library/busybox/blobs/sha256:00?ns=docker.io"),
            Some("repository:library/busybox:pull".into())
        );
        assert_eq!(
            pull_scope("http://127.0.0.1:5000/v2/a/manifests/latest"),
            Some("repository:a:pull".into())
        );
        assert_eq!(pull_scope("https://s3.example/bucket/object"), None);
        assert_eq!(pull_scope("https://r.example/v2//blobs/x"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = Credentials {
            username: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(basic_header(&c), "Basic dTpodW50ZXIy");
    }

    #[test]
    fn token_lifetimes_are_clamped() {
        assert_eq!(token_lifetime(None), Duration::from_secs(54));
        assert_eq!(token_lifetime(Some(0)), Duration::from_millis(900));
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(290));
        assert_eq!(
            token_lifetime(Some(u64::MAX)),
            MAX_TOKEN_LIFETIME - Duration::from_secs(10)
        );
        // What the fetcher does with it must not overflow either.
        assert!(
            Instant::now()
                .checked_add(token_lifetime(Some(u64::MAX)))
                .is_some()
        );
        assert_eq!(
            parse_token_answer(br#"{"token":"t","expires_in":18446744073709551615}"#),
            Some(("t".into(), Some(u64::MAX)))
        );
        // A token that cannot be a header value is no token; the other
        // field may still hold one.
        assert_eq!(parse_token_answer(br#"{"token":"a\nb"}"#), None);
        assert_eq!(
            parse_token_answer(br#"{"token":"a b","access_token":"ok"}"#),
            Some(("ok".into(), None))
        );
    }

    fn helper_in(dir: &Path, name: &str, script: &str) {
        let helper = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&helper, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
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
        std::fs::write(
            &helper,
            "#!/bin/sh\nread s\ncase \"$s\" in\n  helped.example) echo '{\"ServerURL\":\"helped.example\",\"Username\":\"hu\",\"Secret\":\"hs\"}';;\n  store.example) echo '{\"Username\":\"<token>\",\"Secret\":\"idt\"}';;\n  *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
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
}
