//! One HTTP exchange: the TLS settings and connector, a request built
//! from a URL, headers, an optional range and authorization, and a
//! failure told apart as TLS (final) or transport (retried).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, AUTHORIZATION, RANGE};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::urls::{Shown, redact};

use super::{FetchError, FetcherConfig, Inner};

pub(super) type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A response's head and its body, not read yet.
pub(super) type Response = (http::response::Parts, hyper::body::Incoming);

/// A range `(LAST_BYTES, n)` asks for the blob's last `n` bytes
/// (`Range: bytes=-n`).
pub(super) const LAST_BYTES: u64 = u64::MAX;

/// The system roots plus `config.ca_file`, on rustls with ring.
pub(super) fn tls_config(config: &FetcherConfig) -> std::io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &config.ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        for cert in CertificateDer::pem_file_iter(path).map_err(std::io::Error::other)? {
            roots
                .add(cert.map_err(std::io::Error::other)?)
                .map_err(std::io::Error::other)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2, http/1.1) is set by the connector builder from the
    // protocols it enables.
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The pooled client: HTTP/2 where ALPN offers it (and `config.http2`),
/// HTTP/1.1 keep-alive otherwise. Must run inside the runtime.
pub(super) fn https_client(config: &FetcherConfig, tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = if config.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(16)
        .build(https)
}

/// The rustls error behind a request failure, if TLS is what failed
/// (tokio-rustls wraps it in an io::Error somewhere down the chain).
fn tls_error(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error::source() skips the error it wraps: step into it.
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    None
}

/// What one request asks: its method, range, body and the headers that
/// go with it (a content type, an `Accept`), sent again as they are after
/// a 401 or to a redirect target.
#[derive(Clone)]
pub(super) struct Ask {
    pub(super) method: http::Method,
    pub(super) range: Option<(u64, u64)>,
    pub(super) body: Bytes,
    pub(super) headers: Vec<(http::HeaderName, String)>,
}

impl Ask {
    /// A GET, of `range` if any.
    pub(super) fn get(range: Option<(u64, u64)>) -> Ask {
        Ask::new(http::Method::GET, range)
    }

    pub(super) fn new(method: http::Method, range: Option<(u64, u64)>) -> Ask {
        Ask {
            method,
            range,
            body: Bytes::new(),
            headers: Vec::new(),
        }
    }

    pub(super) fn with_body(mut self, body: Bytes) -> Ask {
        self.body = body;
        self
    }

    pub(super) fn with_header(mut self, name: http::HeaderName, value: impl Into<String>) -> Ask {
        self.headers.push((name, value.into()));
        self
    }

    /// A write to the registry (upload, manifest put): it needs the push
    /// scope.
    pub(super) fn pushes(&self) -> bool {
        !matches!(self.method, http::Method::GET | http::Method::HEAD)
    }
}

impl Inner {
    /// Sends one request to `url` with the endpoint's headers, then the
    /// ask's; returns the response head and the rest of it.
    pub(super) async fn send_to(
        &self,
        url: &str,
        headers: &[(String, String)],
        authorization: Option<&str>,
        ask: &Ask,
    ) -> Result<Response, FetchError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| FetchError::Invalid(format!("{}: {e}", Shown(url))))?;
        let mut req = Request::builder()
            .method(ask.method.clone())
            .uri(uri)
            .header(ACCEPT_ENCODING, "identity");
        match ask.range {
            Some((LAST_BYTES, n)) => req = req.header(RANGE, format!("bytes=-{n}")),
            Some((start, end)) => req = req.header(RANGE, format!("bytes={start}-{end}")),
            None => {}
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in &ask.headers {
            req = req.header(k, v.as_str());
        }
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Full::new(ask.body.clone()))
            .map_err(|e| FetchError::Invalid(format!("{}: {e}", Shown(url))))?;
        self.request(url, req).await
    }

    /// Sends `req` (to `url`, as errors name it).
    pub(super) async fn request(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response, FetchError> {
        let sent = self.client.request(req).await;
        let (bytes, failed) = match &sent {
            Ok(r) => (
                r.headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
                r.status().as_u16() >= 400,
            ),
            Err(_) => (None, true),
        };
        self.hosts.record(url, bytes, failed);
        let resp = sent.map_err(|e| match tls_error(&e) {
            Some(reason) => FetchError::Tls {
                url: redact(url),
                reason,
            },
            None => FetchError::Transport {
                url: redact(url),
                reason: format!("{e:?}"),
            },
        })?;
        Ok(resp.into_parts())
    }
}
