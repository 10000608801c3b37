//! A bearer token server for docker-registry's `token` auth, logging
//! every token request it gets.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::certs::{openssl, tls_server_config, tls_stream};
use crate::helpers::{form_pairs, read_request};
use crate::registry::RegistryAuth;

/// What a [`TokenServer`] was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (classic, Basic credentials or none) or `POST` (OAuth2 form).
    pub method: String,
    /// `password`, `refresh_token` or empty (GET).
    pub grant: String,
    pub scopes: Vec<String>,
    pub authenticated: bool,
}

#[derive(Debug, Default)]
struct TokenPolicy {
    /// The next this many tokens carry an `exp` this many seconds in the
    /// past (the registry allows 60 s of leeway).
    stale: Vec<i64>,
}

/// A bearer token server for docker-registry's `token` auth: ES256 JWTs
/// with an `x5c` chain of one self-signed certificate, which the registry
/// trusts through `rootcertbundle`.
#[derive(Debug, Clone)]
pub struct TokenServer {
    pub addr: String,
    pub service: String,
    pub issuer: String,
    /// The signing certificate (PEM) for the registry's `rootcertbundle`.
    pub root_cert: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    policy: Arc<Mutex<TokenPolicy>>,
    /// Serves https.
    tls: bool,
}

/// Settings of a [`TokenServer`].
#[derive(Debug, Clone, Default)]
pub struct TokenServerOptions {
    /// Required credentials (`None`: tokens for anyone).
    pub user: Option<(String, String)>,
    /// An identity token accepted by the refresh-token grant.
    pub refresh_token: Option<String>,
    /// Answer the OAuth2 POST (otherwise 404, as classic servers do).
    pub oauth: bool,
    /// `expires_in` told to clients (`None`: left out).
    pub expires_in: Option<u64>,
    /// Serve over TLS with this (certificate, key) (see [`make_certs`](crate::make_certs));
    /// the realm is then `https://localhost:PORT/token`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl TokenServer {
    pub fn start(dir: &Path, options: TokenServerOptions) -> TokenServer {
        let (key, cert_der) = make_signing_key(dir);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let tls = options.tls.as_ref().map(|(c, k)| tls_server_config(c, k));
        let server = TokenServer {
            tls: tls.is_some(),
            addr,
            service: "ringstar-test-registry".into(),
            issuer: "ringstar-test-issuer".into(),
            root_cert: dir.join("token.pem"),
            requests: Arc::default(),
            policy: Arc::default(),
        };
        let x5c = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(&cert_der)
        };
        let me = server.clone();
        let key = Arc::new(key);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let (me, key, x5c, options) =
                    (me.clone(), key.clone(), x5c.clone(), options.clone());
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    Some(cfg) => me.serve(tls_stream(conn, cfg), &key, &x5c, &options),
                    None => me.serve(conn, &key, &x5c, &options),
                });
            }
        });
        server
    }

    /// The realm URL for the registry's config.
    pub fn realm(&self) -> String {
        if self.tls {
            let port = self.addr.rsplit_once(':').map_or("", |(_, p)| p);
            format!("https://localhost:{port}/token")
        } else {
            format!("http://{}/token", self.addr)
        }
    }

    pub fn registry_auth(&self) -> RegistryAuth {
        RegistryAuth::Token {
            realm: self.realm(),
            service: self.service.clone(),
            issuer: self.issuer.clone(),
            root_cert: self.root_cert.clone(),
        }
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The next token issued expires (for the registry) `seconds_ago`
    /// seconds ago, while clients are told it lasts.
    pub fn issue_stale(&self, seconds_ago: i64) {
        self.policy.lock().unwrap().stale.push(seconds_ago);
    }

    fn serve<S: Read + Write>(
        &self,
        conn: S,
        key: &ring::signature::EcdsaKeyPair,
        x5c: &str,
        options: &TokenServerOptions,
    ) {
        let mut r = BufReader::new(conn);
        while let Some((method, target, headers, body)) = read_request(&mut r) {
            let ask = TokenAsk::read(method, &target, &headers, &body);
            let authenticated = ask.authenticated(options);
            self.requests.lock().unwrap().push(TokenRequest {
                method: ask.method.clone(),
                grant: ask.grant.clone(),
                scopes: ask.scopes.clone(),
                authenticated,
            });
            let status = if ask.method == "POST" && !options.oauth {
                "404 Not Found"
            } else if (options.user.is_some() || options.refresh_token.is_some()) && !authenticated
            {
                "401 Unauthorized"
            } else {
                "200 OK"
            };
            let body = if status.starts_with("200") {
                self.answer(key, x5c, &ask.scopes, options)
            } else {
                String::new()
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let w = r.get_mut();
            if w.write_all(resp.as_bytes())
                .and_then(|()| w.flush())
                .is_err()
            {
                break;
            }
        }
    }

    /// The JSON answer with a new token for `scopes` (stale if so
    /// planned).
    fn answer(
        &self,
        key: &ring::signature::EcdsaKeyPair,
        x5c: &str,
        scopes: &[String],
        options: &TokenServerOptions,
    ) -> String {
        let stale = {
            let mut p = self.policy.lock().unwrap();
            (!p.stale.is_empty()).then(|| p.stale.remove(0))
        };
        let jwt = self.jwt(key, x5c, scopes, stale);
        let mut answer = serde_json::json!({ "token": jwt, "access_token": jwt });
        if let Some(e) = options.expires_in {
            answer["expires_in"] = e.into();
        }
        answer.to_string()
    }

    fn jwt(
        &self,
        key: &ring::signature::EcdsaKeyPair,
        x5c: &str,
        scopes: &[String],
        stale: Option<i64>,
    ) -> String {
        let now = unix_now();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(2, ':');
                let kind = parts.next()?;
                let (name, actions) = parts.next()?.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let exp = match stale {
            Some(ago) => now - ago,
            None => now + 3600,
        };
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [x5c] });
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": "ringstar-test", "aud": self.service,
            "exp": exp, "nbf": now - 120, "iat": now - 120,
            "jti": format!("{}", fastrand::u64(..)), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = key.sign(&rng, signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", b64url(sig.as_ref()))
    }
}

/// What one token request asks, as the server reads it: its method, the
/// query and form fields, and Basic credentials.
struct TokenAsk {
    method: String,
    /// `password`, `refresh_token` or empty (GET).
    grant: String,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    basic: Option<(String, String)>,
}

impl TokenAsk {
    fn read(method: String, target: &str, headers: &[(String, String)], body: &[u8]) -> TokenAsk {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut params = form_pairs(query);
        if method == "POST" {
            params.extend(form_pairs(&String::from_utf8_lossy(body)));
        }
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let basic = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .and_then(|(_, v)| v.strip_prefix("Basic "))
            .and_then(|b| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(b).ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            });
        let mut ask = TokenAsk {
            method,
            grant: String::new(),
            scopes,
            params,
            basic,
        };
        ask.grant = ask.get("grant_type").unwrap_or_default();
        ask
    }

    fn get(&self, k: &str) -> Option<String> {
        self.params
            .iter()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.clone())
    }

    /// Whether it carries the credentials `options` require.
    fn authenticated(&self, options: &TokenServerOptions) -> bool {
        match self.method.as_str() {
            "POST" if self.grant == "password" => {
                options.user.as_ref().map(|(u, p)| (u.clone(), p.clone()))
                    == self.get("username").zip(self.get("password"))
            }
            "POST" if self.grant == "refresh_token" => {
                options.refresh_token.is_some()
                    && options.refresh_token == self.get("refresh_token")
            }
            _ => self.basic.is_some() && self.basic == options.user,
        }
    }
}

/// The issuer's ES256 signing key and its self-signed certificate (DER),
/// made with openssl in `dir` (`token.pem` there is the registry's
/// `rootcertbundle`).
fn make_signing_key(dir: &Path) -> (ring::signature::EcdsaKeyPair, Vec<u8>) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "token.key",
            "-out",
            "token.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ringstar test token issuer",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "token.key",
            "-outform",
            "DER",
            "-out",
            "token.key.der",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-in",
            "token.pem",
            "-outform",
            "DER",
            "-out",
            "token.der",
        ],
    );
    let key_der = std::fs::read(dir.join("token.key.der")).unwrap();
    let cert_der = std::fs::read(dir.join("token.der")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &key_der,
        &rng,
    )
    .unwrap();
    (key, cert_der)
}
