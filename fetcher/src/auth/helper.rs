//! Docker credential helpers: `docker-credential-NAME get` with the
//! server on stdin, its JSON answer on stdout, run with a deadline so a
//! helper that hangs fails the lookup instead of hanging it.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::{AuthError, Credentials, ParseError};

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

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
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

/// Kills a helper and reaps it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One credential helper to run.
pub(super) struct Helper<'a> {
    /// `NAME` of `docker-credential-NAME`.
    pub(super) name: &'a str,
    /// Where it is looked for (`None`: `$PATH`).
    pub(super) dir: Option<&'a Path>,
    pub(super) timeout: Duration,
}

impl Helper<'_> {
    /// Runs `docker-credential-<name> get` with `server` on stdin (the
    /// credential-helper protocol), for at most the timeout (then it is
    /// killed). "Not found" is no credentials.
    pub(super) fn get(&self, server: &str) -> Result<Option<Credentials>, AuthError> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(self.fail("not a helper name".into()));
        }
        let deadline = Instant::now().checked_add(self.timeout);
        let mut child = self.spawn()?;
        let output = match talk(&mut child, server) {
            Ok(output) => output,
            Err(e) => {
                kill(&mut child);
                return Err(self.fail(e.to_string()));
            }
        };
        let status = self.wait(&mut child, deadline)?;
        // It exited; its output is complete unless a child of it holds the
        // pipe open, which the deadline covers too.
        let out = output
            .recv_timeout(left(deadline))
            .map_err(|_| self.timed_out(&mut child))?;
        self.answer(status, &out)
    }

    fn fail(&self, reason: String) -> AuthError {
        AuthError::Helper {
            helper: self.name.to_string(),
            reason,
        }
    }

    fn spawn(&self) -> Result<Child, AuthError> {
        let program = format!("docker-credential-{}", self.name);
        let program = match self.dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| self.fail(e.to_string()))
    }

    /// Kills the helper that did not answer in time.
    fn timed_out(&self, child: &mut Child) -> AuthError {
        kill(child);
        tracing::warn!(
            helper = %format!("docker-credential-{}", self.name),
            after_ms = self.timeout.as_millis() as u64,
            "credential helper did not answer in time; killed it"
        );
        AuthError::HelperTimeout {
            helper: self.name.to_string(),
            after: self.timeout,
        }
    }

    /// Waits for the helper to exit, until the deadline.
    fn wait(&self, child: &mut Child, deadline: Option<Instant>) -> Result<ExitStatus, AuthError> {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if !left(deadline).is_zero() => {
                    std::thread::sleep(HELPER_POLL.min(left(deadline)));
                }
                Ok(None) => return Err(self.timed_out(child)),
                Err(e) => {
                    kill(child);
                    return Err(self.fail(e.to_string()));
                }
            }
        }
    }

    /// What an exited helper's status and stdout say.
    fn answer(&self, status: ExitStatus, out: &[u8]) -> Result<Option<Credentials>, AuthError> {
        if !status.success() {
            let said = String::from_utf8_lossy(out);
            if said.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            // The helper's own words, cut short: they name the problem,
            // and a helper does not print secrets on failure.
            let said = said.trim();
            let cut = said.char_indices().nth(200).map_or(said.len(), |(i, _)| i);
            return Err(self.fail(format!("exited with {status}: {}", &said[..cut])));
        }
        parse_helper_answer(out).map_err(|e| self.fail(format!("unreadable answer: {e}")))
    }
}

/// What is left of the time until `deadline`.
fn left(deadline: Option<Instant>) -> Duration {
    deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    })
}

/// Writes `server` to the helper's stdin and reads its stdout, on a
/// thread, so that nothing here blocks past the deadline: a helper that
/// neither reads its stdin nor exits, or a child of it that keeps the
/// pipe open. The receiver gets the output once stdout closes.
fn talk(child: &mut Child, server: &str) -> std::io::Result<Receiver<Vec<u8>>> {
    let stdin = child.stdin.take();
    let server_line = server.as_bytes().to_vec();
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
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
        })?;
    Ok(rx)
}
