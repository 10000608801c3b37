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

use base64::Engine as _;

/// Why credentials could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("docker config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper { helper: String, reason: String },
}

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
}

#[derive(serde::Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
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
        }
    }

    /// Looks for credential helpers in `dir` instead of `$PATH`.
    pub fn with_helper_dir(mut self, dir: impl Into<PathBuf>) -> DockerConfig {
        self.helper_dir = Some(dir.into());
        self
    }

    fn read(&self) -> Result<Option<ConfigFile>, AuthError> {
        let err = |reason: String| AuthError::Config {
            path: self.path.display().to_string(),
            reason,
        };
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    fn entry_credentials(&self, e: &AuthEntry) -> Result<Option<Credentials>, AuthError> {
        if let Some(token) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials {
                username: String::new(),
                secret: token.to_string(),
            }));
        }
        if let Some(auth) = e.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = |reason: &str| AuthError::Config {
                path: self.path.display().to_string(),
                reason: reason.to_string(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("an `auth` value is not base64"))?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| bad("an `auth` value is not UTF-8"))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| bad("an `auth` value is not user:password"))?;
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

    /// Runs `docker-credential-<helper> get` with the server on stdin (the
    /// credential-helper protocol). "Not found" is no credentials.
    fn run_helper(&self, helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
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
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            stdin
                .write_all(server.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout);
            if said.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            // The helper's own words, cut short: they name the problem,
            // and a helper does not print secrets on failure.
            let said = said.trim();
            return Err(fail(format!(
                "exited with {}: {}",
                out.status,
                &said[..said.len().min(200)]
            )));
        }
        let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
            .map_err(|e| fail(format!("unreadable answer: {e}")))?;
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

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl CredentialSource for DockerConfig {
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        let Some(cfg) = self.read()? else {
            return Ok(None);
        };
        let key = server_key(host);
        if let Some(helper) = cfg
            .cred_helpers
            .get(&key)
            .or_else(|| cfg.cred_helpers.get(host))
        {
            return self.run_helper(helper, &key);
        }
        let entry = cfg.auths.get(&key).or_else(|| {
            cfg.auths
                .iter()
                .find(|(k, _)| key_host(k) == host)
                .map(|(_, v)| v)
        });
        if let Some(entry) = entry
            && let Some(creds) = self.entry_credentials(entry)?
        {
            return Ok(Some(creds));
        }
        match &cfg.creds_store {
            Some(store) if !store.is_empty() => self.run_helper(store, &key),
            _ => Ok(None),
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
    fn token(self) -> Option<(String, Option<u64>)> {
        let t = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
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
    }
}
