//! Response bodies and ranges as a server sends them (untrusted): the
//! asked bytes of a body, and `Content-Range`.

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::urls::redact;

use super::FetchError;

/// The most a response body buffer is allocated for up front (it grows
/// as bytes arrive): 64 MiB, more than any chunk or TOC read.
const MAX_BODY_PREALLOC: u64 = 64 << 20;

/// Bytes `[skip, skip + want)` of a response body; a body that ends
/// sooner is a transport error (the connection broke).
pub(super) async fn read_body(
    body: &mut hyper::body::Incoming,
    url: &str,
    skip: u64,
    want: u64,
) -> Result<Bytes, FetchError> {
    // `want` is the caller's length (never a number from the wire); the
    // first allocation is bounded all the same.
    let mut out = Vec::with_capacity(want.min(MAX_BODY_PREALLOC) as usize);
    let mut skipped = 0u64;
    while (out.len() as u64) < want {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| FetchError::Transport {
            url: redact(url),
            reason: format!("body: {e}"),
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut data: &[u8] = &data;
        if skipped < skip {
            let n = (skip - skipped).min(data.len() as u64) as usize;
            skipped += n as u64;
            data = &data[n..];
        }
        let n = ((want - out.len() as u64) as usize).min(data.len());
        out.extend_from_slice(&data[..n]);
    }
    if (out.len() as u64) < want {
        return Err(FetchError::Transport {
            url: redact(url),
            reason: format!("body ended after {} of {want} bytes", out.len()),
        });
    }
    Ok(Bytes::from(out))
}

/// Parses `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`), as
/// a server sends it (untrusted).
pub fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, b.parse().ok()?, total))
}

/// The `Content-Range` of a response head, if it has a usable one.
pub(super) fn content_range_of(head: &http::response::Parts) -> Option<(u64, u64, Option<u64>)> {
    head.headers
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(content_range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 9, Some(100))));
        assert_eq!(content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(content_range("bytes x-9/100"), None);
        assert_eq!(content_range("items 0-9/100"), None);
    }
}
