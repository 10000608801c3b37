//! Registry authentication: where credentials come from (docker config,
//! credential helpers, a fixed table), the `WWW-Authenticate` challenge a
//! registry answers with, and the bearer tokens it leads to.
//!
//! Authorization is keyed by host: a host gets an `Authorization` header
//! only after it asked for one with a 401, so redirect targets (blob
//! storage) never see one. Secrets never reach a log line or a `Debug`
//! print.

mod challenge;
mod docker_config;
mod helper;
mod keychain;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

pub use challenge::{Challenge, basic_header, pull_scope, repository_of, scope_for};
pub use docker_config::{ConfigAnswer, DockerConfig, config_answer};
pub use helper::{HELPER_TIMEOUT, parse_helper_answer};
pub use keychain::Keychain;
pub use token::{DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME, parse_token_answer, token_lifetime};

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

    /// Credentials for `repository` of `host` (when the request names
    /// one): a source that knows credentials per image (kubelet's, for
    /// the image it pulled) answers only for that image. By default,
    /// the host's.
    fn lookup_for(
        &self,
        host: &str,
        _repository: Option<&str>,
    ) -> Result<Option<Credentials>, AuthError> {
        self.lookup(host)
    }
}

/// A fixed host → credentials table (configuration, tests).
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials(pub HashMap<String, Credentials>);

impl CredentialSource for StaticCredentials {
    fn lookup(&self, host: &str) -> Result<Option<Credentials>, AuthError> {
        Ok(self.0.get(host).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = Credentials {
            username: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(basic_header(&c), "Basic dTpodW50ZXIy");
    }
}
