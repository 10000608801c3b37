//! Small helpers: a free port, a one-shot HTTP/1.1 exchange, reading one
//! request off a stream, form fields, a credential source for one host.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// Credentials for one host, as a credential source (a fetcher's config).
pub fn static_credentials(
    host: &str,
    user: &str,
    secret: &str,
) -> Arc<dyn ringstar_fetcher::CredentialSource> {
    let mut table = ringstar_fetcher::StaticCredentials::default();
    table.0.insert(
        host.to_string(),
        ringstar_fetcher::Credentials {
            username: user.into(),
            secret: secret.into(),
        },
    );
    Arc::new(table)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 exchange (Connection: close): status, headers, body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    (status, headers, rest)
}

/// An HTTP/1.1 request as read: method, target, headers, body.
pub(crate) type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request from a stream.
pub(crate) fn read_request<S: Read>(r: &mut BufReader<S>) -> Option<RawRequest> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0usize);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((method, target, headers, body))
}

pub(crate) fn form_pairs(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Writes an executable script that a test then runs, without the
/// `ETXTBSY` race: a file this process opened for writing can still be
/// open in a child that another test thread has forked but not yet
/// exec'd, and exec'ing the script then fails with "Text file busy".
/// So the bytes go through `cp` from a scratch copy: the only writer of
/// the executable is a process that has exited before anyone runs it.
pub fn write_executable(path: &std::path::Path, script: &str) {
    let scratch = path.with_extension("scratch");
    std::fs::write(&scratch, script).expect("writing the scratch copy");
    let status = std::process::Command::new("cp")
        .arg(&scratch)
        .arg(path)
        .status()
        .expect("running cp");
    assert!(status.success(), "cp {} failed", path.display());
    std::fs::remove_file(&scratch).expect("removing the scratch copy");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("making it executable");
}

/// The reference eStargz reader (`ESGZ_CHECK`, built by test.sh from
/// shared/tools/build-esgz-check.sh) opens `blob` with TOC digest `toc`
/// and reads every file without an error. Without `ESGZ_CHECK` nothing is
/// checked, which CI (`CI` set) does not allow.
pub fn reference_reads(blob: &[u8], toc: &str) {
    let Some(tool) = std::env::var_os("ESGZ_CHECK") else {
        assert!(std::env::var_os("CI").is_none(), "CI must set ESGZ_CHECK");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layer"), blob).unwrap();
    let out = std::process::Command::new(tool)
        .arg(dir.path().join("layer"))
        .arg(toc)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "reference reader: {}",
        &text[..text.len().min(4000)]
    );
}

/// The entry names of a layer blob (gzip, zstd or plain tar) in the order
/// the blob holds them, cleaned: what a prefetch up to the landmark reads
/// first comes first.
pub fn entry_order(blob: &[u8]) -> Vec<String> {
    let tar = ringstar_core::writer::decompressed(blob).unwrap();
    let mut stream = ringstar_core::tar::TarStream::new(tar);
    let mut names = Vec::new();
    while let Some(e) = stream.next_entry().unwrap() {
        names.push(ringstar_core::name::clean(&e.name));
    }
    names
}
