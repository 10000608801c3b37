//! Docker's `config.json`: where it says a host's credentials are, and
//! the credential source that reads it on every lookup.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::helper::{HELPER_TIMEOUT, Helper};
use super::{AuthError, CredentialSource, Credentials, ParseError};

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

    /// Asks `docker-credential-<helper>` about `server`, for at most the
    /// helper timeout.
    fn run_helper(&self, helper: &str, server: &str) -> Result<Option<Credentials>, AuthError> {
        Helper {
            name: helper,
            dir: self.helper_dir.as_deref(),
            timeout: self.helper_timeout,
        }
        .get(server)
    }

    pub fn path(&self) -> &Path {
        &self.path
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

#[cfg(test)]
mod tests;
