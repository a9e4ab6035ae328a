//! The HTTPS listener through real TLS clients (rustls) on 127.0.0.1: certificates by SNI,
//! HTTP/2 and HTTP/1.1 by ALPN, client certificates, certificate-bound tokens (RFC 8705),
//! certificate files replaced under an open connection, the HTTP→HTTPS redirect and HSTS.
//! Certificates come from a test CA made for each test (rcgen).

use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A certificate authority and the files of the certificates it issued.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// An issued certificate: its files and DER.
#[derive(Clone)]
pub(crate) struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Issued {
    /// RFC 8705 `x5t#S256`: base64url(SHA-256(DER)).
    fn thumbprint(&self) -> String {
        tollgate_jwt::codec::b64url_encode(
            ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref(),
        )
    }

    /// `certificates: [{ cert, key }]` of `listen.tls`, serving this certificate alone.
    pub(crate) fn certificates(&self) -> String {
        format!(
            "certificates: [{{ cert: {}, key: {} }}]",
            yaml_path(&self.cert),
            yaml_path(&self.key)
        )
    }

    fn sha256_hex(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `names`, written as `file`.pem / `file`.key.
    pub(crate) fn server(&self, file: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate with common name `cn`.
    pub(crate) fn client(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tests");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(cn, params)
    }

    fn issue(&self, file: &str, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert: cert_path,
            key: key_path,
            der: cert.der().to_vec(),
        }
    }
}

pub(crate) fn yaml_path(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// How a test client connects.
struct Client {
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    fn new(ca_pem: &str, cert: Option<&Issued>, alpn: &[&str]) -> Client {
        Self::with_versions(ca_pem, cert, alpn, rustls::ALL_VERSIONS)
    }

    fn with_versions(
        ca_pem: &str,
        cert: Option<&Issued>,
        alpn: &[&str],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(c.der.clone())],
                    PrivateKeyDer::from_pem_file(&c.key).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
        Client {
            config: Arc::new(config),
        }
    }

    async fn connect(
        &self,
        port: u16,
        sni: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        connector.connect(name, tcp).await
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The server's leaf certificate on a connection.
fn peer_der(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn alpn_of(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Option<Vec<u8>> {
    s.get_ref().1.alpn_protocol().map(|a| a.to_vec())
}

/// One HTTP/1.1 request with `Connection: close` on a TLS stream; the whole answer.
async fn h1<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    parse_reply(&String::from_utf8_lossy(&out))
}

/// One HTTP/1.1 request on a kept-alive connection: reads exactly one answer.
async fn h1_keepalive<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> std::io::Result<Reply> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return parse_reply(&text);
            }
        }
    }
}

/// One HTTP/2 GET on a TLS stream that negotiated `h2`.
async fn h2_get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, h2::Error> {
    let (mut send, conn) = h2::client::handshake(s).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method("GET")
        .uri(format!("https://{authority}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

const ISS: &str = "https://issuer.test";
const AUD: &str = "api://tests";

fn routes(echo: &Echo, key: &TestKey, extra_routes: &str) -> String {
    format!(
        "auth:
  providers:
    - name: main
      issuer: \"{ISS}\"
      audiences: [\"{AUD}\"]
      jwks: {}
  forward_claims:
    - {{ claim: sub, header: X-Auth-Subject }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: open, path: /open, upstream: echo, auth: none }}
  - {{ name: api, path: /api, upstream: echo }}
{extra_routes}",
        jwks(&[key]),
        echo.addr()
    )
}

#[test]
fn https_serves_http2_and_http1_by_alpn_with_the_certificate_its_sni_names() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let other = pki.server("other", &["*.other.test"]);
    let gw = Gateway::start_with_tls(
        &format!(
            "{{ certificates: [{{ cert: {}, key: {} }}, {{ cert: {}, key: {} }}] }}",
            yaml_path(&api.cert),
            yaml_path(&api.key),
            yaml_path(&other.cert),
            yaml_path(&other.key)
        ),
        &routes(&echo, &key, ""),
    );
    let rt = runtime();
    rt.block_on(async {
        // HTTP/2, preferred by ALPN; the upstream is told the request came over https.
        let client = Client::new(&pki.ca_pem(), None, &["h2", "http/1.1"]);
        let s = client.connect(gw.https_port, "api.test").await.unwrap();
        assert_eq!(
            peer_der(&s),
            api.der,
            "SNI api.test gets the api certificate"
        );
        assert_eq!(alpn_of(&s).as_deref(), Some(&b"h2"[..]));
        let r = h2_get(s, "api.test", "/open/x", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("https")
        );
        let port = gw.https_port.to_string();
        assert_eq!(r.upstream_header("x-forwarded-port"), Some(port));

        // HTTP/1.1 by ALPN; a wildcard certificate for a name under it.
        let client = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
        let mut s = client.connect(gw.https_port, "a.other.test").await.unwrap();
        assert_eq!(peer_der(&s), other.der, "*.other.test serves a.other.test");
        assert_eq!(alpn_of(&s).as_deref(), Some(&b"http/1.1"[..]));
        let r = h1(&mut s, "a.other.test", "/open/y", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("https")
        );

        // No ALPN at all: HTTP/1.1. An unknown name gets the default (first) certificate,
        // which the client then refuses as not naming the host: the handshake fails.
        let client = Client::new(&pki.ca_pem(), None, &[]);
        let mut s = client.connect(gw.https_port, "api.test").await.unwrap();
        assert_eq!(alpn_of(&s), None);
        assert_eq!(
            h1(&mut s, "api.test", "/open/z", &[]).await.unwrap().status,
            200
        );
        let unknown = client.connect(gw.https_port, "nobody.test").await;
        assert!(
            unknown.is_err(),
            "the default certificate does not name nobody.test"
        );

        // TLS 1.2 is accepted as well as 1.3.
        let tls12 = Client::with_versions(
            &pki.ca_pem(),
            None,
            &["http/1.1"],
            &[&rustls::version::TLS12],
        );
        let mut s = tls12.connect(gw.https_port, "api.test").await.unwrap();
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(
            h1(&mut s, "api.test", "/open/w", &[]).await.unwrap().status,
            200
        );
    });
    let scrape = gw.scrape();
    assert!(
        metric_value(&scrape, "tollgate_tls_handshakes_total", &[("alpn", "h2")]) >= 1.0,
        "{scrape}"
    );
    assert!(
        metric_value(
            &scrape,
            "tollgate_tls_handshakes_total",
            &[("alpn", "http/1.1")]
        ) >= 1.0
    );
    // Both certificates' expiry, by their first name.
    assert!(
        metric_value(
            &scrape,
            "tollgate_tls_certificate_expiry_timestamp_seconds",
            &[("name", "api.test")]
        ) > 1.7e9
    );
    assert!(
        metric_value(
            &scrape,
            "tollgate_tls_certificate_expiry_timestamp_seconds",
            &[("name", "*.other.test")]
        ) > 1.7e9
    );
    // The plain listener still serves plain HTTP.
    assert_eq!(gw.get("/open/plain", &[]).status, 200);
}

#[test]
fn required_client_certificates_are_verified_and_forwarded_and_spoofed_copies_removed() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let stranger_ca = Pki::new("Other CA");
    let api = pki.server("api", &["api.test"]);
    let alice = pki.client("alice");
    let mallory = stranger_ca.client("mallory");
    let gw = Gateway::start_with_tls(
        &format!(
            "{{ {}, client_auth: required, client_ca: {}, \
             client_cert_headers: {{ subject: X-Client-Subject, sha256: X-Client-Sha256 }} }}",
            api.certificates(),
            yaml_path(&pki.ca_file())
        ),
        &routes(&echo, &key, ""),
    );
    let before = |reason: &str| {
        metric_value(
            &gw.scrape(),
            "tollgate_tls_handshake_failures_total",
            &[("reason", reason)],
        )
    };
    let (no_cert_before, bad_cert_before) = (
        before("no_client_certificate"),
        before("bad_client_certificate"),
    );
    let rt = runtime();
    rt.block_on(async {
        // Without a certificate: no request gets through (TLS 1.3 reports the failure on
        // the client's first read).
        let client = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
        if let Ok(mut s) = client.connect(gw.https_port, "api.test").await {
            let r = h1(&mut s, "api.test", "/open/x", &[]).await;
            assert!(r.is_err(), "served without a client certificate: {r:?}");
        }
        // A certificate from a CA the listener does not trust.
        let client = Client::new(&pki.ca_pem(), Some(&mallory), &["http/1.1"]);
        if let Ok(mut s) = client.connect(gw.https_port, "api.test").await {
            let r = h1(&mut s, "api.test", "/open/x", &[]).await;
            assert!(r.is_err(), "served with an untrusted certificate: {r:?}");
        }
        // A trusted one: its subject and fingerprint reach the upstream, in place of the
        // client's own copies of those headers (any spelling).
        let client = Client::new(&pki.ca_pem(), Some(&alice), &["h2", "http/1.1"]);
        let s = client.connect(gw.https_port, "api.test").await.unwrap();
        let r = h2_get(
            s,
            "api.test",
            "/open/x",
            &[("x-client-subject", "CN=admin"), ("x_client_sha256", "00")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let subject = r.upstream_header("x-client-subject").unwrap();
        assert!(subject.contains("CN=alice"), "{subject}");
        assert!(subject.contains("O=Tests"), "{subject}");
        assert_eq!(
            r.upstream_header("x-client-sha256"),
            Some(alice.sha256_hex())
        );
        assert_eq!(r.upstream_header("x_client_sha256"), None);
    });
    // Counted by reason; the server saw each failure.
    let tls_lines = || {
        gw.scrape()
            .lines()
            .filter(|l| l.starts_with("tollgate_tls"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    wait_for(
        &format!("handshake failures counted: {}", tls_lines()),
        Duration::from_secs(5),
        || {
            (before("no_client_certificate") > no_cert_before
                && before("bad_client_certificate") > bad_cert_before)
                .then_some(())
        },
    );
    // On the plain listener the headers are removed, never passed on.
    let r = gw.get(
        "/open/plain",
        &[("X-Client-Subject", "CN=admin"), ("X-Client-Sha256", "00")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-client-subject"), None);
    assert_eq!(r.upstream_header("x-client-sha256"), None);
}

#[test]
fn a_route_can_require_a_client_certificate_when_the_listener_only_asks_for_one() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let alice = pki.client("alice");
    let gw = Gateway::start_with_tls(
        &format!(
            "{{ {}, client_auth: optional, client_ca: {} }}",
            api.certificates(),
            yaml_path(&pki.ca_file())
        ),
        &routes(
            &echo,
            &key,
            "  - { name: mtls, path: /mtls, upstream: echo, auth: none, client_certificate: required }",
        ),
    );
    let rt = runtime();
    rt.block_on(async {
        let anonymous = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
        let mut s = anonymous.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(&mut s, "api.test", "/open/x", &[]).await.unwrap();
        assert_eq!(r.status, 200, "optional: served without a certificate");
        let mut s = anonymous.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(&mut s, "api.test", "/mtls/x", &[]).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.json()["reason"], "client_certificate");
        assert!(r.body.len() < 400 && !r.body.contains("alice"));

        let with_cert = Client::new(&pki.ca_pem(), Some(&alice), &["http/1.1"]);
        let mut s = with_cert.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(&mut s, "api.test", "/mtls/x", &[]).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    });
    assert_eq!(
        gw.get("/mtls/x", &[]).status,
        403,
        "plain HTTP has no certificate"
    );
}

#[test]
fn a_certificate_bound_token_is_accepted_only_with_its_certificate() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let alice = pki.client("alice");
    let bob = pki.client("bob");
    let gw = Gateway::start_with_tls(
        &format!(
            "{{ {}, client_auth: optional, client_ca: {} }}",
            api.certificates(),
            yaml_path(&pki.ca_file())
        ),
        &routes(
            &echo,
            &key,
            "  - { name: bound, path: /bound, upstream: echo, require_certificate_binding: true }",
        ),
    );
    let bound = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "alice",
                                  "cnf": { "x5t#S256": alice.thumbprint() } }));
    let unbound = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "carol" }));
    let auth = |t: &str| format!("Bearer {t}");
    let rt = runtime();
    rt.block_on(async {
        let as_alice = Client::new(&pki.ca_pem(), Some(&alice), &["http/1.1"]);
        let as_bob = Client::new(&pki.ca_pem(), Some(&bob), &["h2"]);
        let anonymous = Client::new(&pki.ca_pem(), None, &["http/1.1"]);

        // With its certificate: accepted (and now in the verified-token cache).
        let mut s = as_alice.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(
            &mut s,
            "api.test",
            "/api/x",
            &[("Authorization", &auth(&bound))],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            Some("alice")
        );

        // The same bytes from another certificate, and from none: refused, cache or not.
        let s = as_bob.connect(gw.https_port, "api.test").await.unwrap();
        let r = h2_get(s, "api.test", "/api/x", &[("authorization", &auth(&bound))])
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["reason"], "binding");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
        let mut s = anonymous.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(
            &mut s,
            "api.test",
            "/api/x",
            &[("Authorization", &auth(&bound))],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["reason"], "binding");

        // A route that requires binding refuses an unbound token, which others accept.
        let mut s = as_alice.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(
            &mut s,
            "api.test",
            "/bound/x",
            &[("Authorization", &auth(&unbound))],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["reason"], "binding");
        let mut s = as_alice.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(
            &mut s,
            "api.test",
            "/bound/x",
            &[("Authorization", &auth(&bound))],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let mut s = as_alice.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(
            &mut s,
            "api.test",
            "/api/x",
            &[("Authorization", &auth(&unbound))],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    });
    // Over plain HTTP a bound token has no certificate to match.
    let r = gw.get("/api/x", &[("Authorization", &auth(&bound))]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["reason"], "binding");
    let denied = metric_value(
        &gw.scrape(),
        "tollgate_auth_decisions_total",
        &[("reason", "binding")],
    );
    assert_eq!(denied, 4.0);
}

#[test]
fn a_replaced_certificate_is_served_to_new_connections_while_open_ones_go_on() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let first = pki.server("api", &["api.test"]);
    let gw = Gateway::start_with_tls(
        &format!("{{ {}, watch: 100ms }}", first.certificates()),
        &routes(&echo, &key, ""),
    );
    let rt = runtime();
    rt.block_on(async {
        let client = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
        let mut open = client.connect(gw.https_port, "api.test").await.unwrap();
        assert_eq!(peer_der(&open), first.der);
        assert_eq!(
            h1_keepalive(&mut open, "api.test", "/open/1")
                .await
                .unwrap()
                .status,
            200
        );

        // A key that does not match the certificate: refused, the old pair stays.
        let stray = KeyPair::generate().unwrap();
        std::fs::write(&first.key, stray.serialize_pem()).unwrap();
        wait_for("the bad key is noticed", Duration::from_secs(10), || {
            let n = metric_value(
                &gw.scrape(),
                "tollgate_tls_certificate_reloads_total",
                &[("result", "error")],
            );
            (n >= 1.0).then_some(())
        });
        let s = client.connect(gw.https_port, "api.test").await.unwrap();
        assert_eq!(peer_der(&s), first.der, "the previous certificate stays");

        // The renewed pair written over the same files: new connections get it.
        let renewed = pki.server("api", &["api.test"]);
        assert_ne!(renewed.der, first.der);
        let mut served = Vec::new();
        for _ in 0..100 {
            let s = client.connect(gw.https_port, "api.test").await.unwrap();
            served = peer_der(&s);
            if served == renewed.der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(served, renewed.der, "the renewed certificate is served");
        // The connection opened before goes on.
        assert_eq!(
            h1_keepalive(&mut open, "api.test", "/open/2")
                .await
                .unwrap()
                .status,
            200
        );
    });
    assert!(
        metric_value(
            &gw.scrape(),
            "tollgate_tls_certificate_reloads_total",
            &[("result", "success")]
        ) >= 1.0
    );
}

#[test]
fn the_plain_listener_redirects_to_https_and_https_answers_carry_hsts() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let gw = Gateway::start_with_tls(
        &format!(
            "{{ {}, redirect_http: true, \
             hsts: {{ max_age: 365d, include_subdomains: true }} }}",
            api.certificates()
        ),
        &routes(&echo, &key, ""),
    );
    let r = raw_request(
        gw.port,
        "GET /open/x?a=1 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 308, "{}", r.body);
    assert_eq!(
        r.header("location").map(str::to_owned),
        Some(format!("https://api.test:{}/open/x?a=1", gw.https_port))
    );
    assert_eq!(r.json()["error"], "https_required");
    let rt = runtime();
    rt.block_on(async {
        let client = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
        let mut s = client.connect(gw.https_port, "api.test").await.unwrap();
        let r = h1(&mut s, "api.test", "/open/x?a=1", &[]).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000; includeSubDomains")
        );
    });
}

#[test]
fn check_refuses_tls_files_that_would_not_load_with_their_paths() {
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let other = pki.server("other", &["other.test"]);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gateway.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen:
  https: 127.0.0.1:18443
  tls:
    certificates:
      - {{ cert: {}, key: {} }}
      - {{ cert: {}, key: /nonexistent/key.pem }}
    client_auth: required
    client_ca: {}
upstreams:
  echo: {{ backends: [{{ addr: \"127.0.0.1:9\" }}] }}
routes:
  - {{ name: all, path: /, upstream: echo, auth: none }}
",
            yaml_path(&api.cert),
            yaml_path(&other.key),
            yaml_path(&other.cert),
            yaml_path(&api.key),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen.tls.certificates[0].key") && text.contains("not the private key"),
        "{text}"
    );
    assert!(text.contains("listen.tls.certificates[1].key"), "{text}");
    assert!(text.contains("listen.tls.client_ca"), "{text}");
}

/// What the load clients saw.
#[derive(Default)]
struct Tally {
    ok: std::sync::atomic::AtomicU64,
    /// HTTP/2 requests the server refused unprocessed (GOAWAY, `REFUSED_STREAM`) and the
    /// client sent again on a new connection, as RFC 9113 §8.7 allows.
    retried: std::sync::atomic::AtomicU64,
    /// HTTP/1.1 requests sent again after a kept-alive connection closed before any byte of
    /// their answer (RFC 9112 §9.3.1), and what the close looked like.
    h1_retried: std::sync::atomic::AtomicU64,
    h1_resets: std::sync::Mutex<Vec<String>>,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Keep-alive HTTP/1.1 over TLS until `stop`; a `Connection: close` answer means reconnect.
async fn h1_load(
    client: Arc<Client>,
    port: u16,
    token: String,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut n = 0u64;
    'connections: while !stop.load(Relaxed) {
        let mut s = match client.connect(port, "api.test").await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("h1 connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut answered = 0u64;
        while !stop.load(Relaxed) {
            n += 1;
            let path = if n % 2 == 0 { "/open/h1" } else { "/api/h1" };
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            if let Err(e) = s.write_all(req.as_bytes()).await {
                tally.fail(format!("h1 write: {e}"));
                continue 'connections;
            }
            match read_one(&mut s).await {
                Ok((200, close)) => {
                    answered += 1;
                    tally.ok.fetch_add(1, Relaxed);
                    if close {
                        continue 'connections;
                    }
                }
                Ok((status, _)) => {
                    tally.fail(format!("h1 {path}: status {status}"));
                    continue 'connections;
                }
                // A kept-alive connection closed before any byte of the answer: RFC 9112
                // §9.3.1 lets a client send an idempotent request again on a new connection.
                // Counted, and bounded below; an answer cut short still fails.
                Err((e, true)) if answered > 0 => {
                    tally.h1_retried.fetch_add(1, Relaxed);
                    tally.h1_resets.lock().unwrap().push(e.to_string());
                    continue 'connections;
                }
                Err((e, _)) => {
                    tally.fail(format!("h1 read: {e}"));
                    continue 'connections;
                }
            }
        }
    }
}

/// Reads one answer: its status and whether it ends the connection. An error says whether
/// any byte of the answer had arrived (`(error, nothing_arrived)`).
async fn read_one<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(u16, bool), (std::io::Error, bool)> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|e| (e, buf.is_empty()))?;
        if n == 0 {
            return Err((std::io::ErrorKind::UnexpectedEof.into(), buf.is_empty()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = s.read(&mut chunk).await.map_err(|e| (e, false))?;
            if n == 0 {
                return Err((std::io::ErrorKind::UnexpectedEof.into(), false));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let status = head[9..12].parse().unwrap_or(0);
        return Ok((status, head.contains("\r\nconnection: close")));
    }
}

/// HTTP/2 over TLS until `stop`: `streams` requests in flight on one connection at a time;
/// a connection that goes away is replaced, and requests it did not process are sent again.
async fn h2_load(
    client: Arc<Client>,
    port: u16,
    token: String,
    streams: usize,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        let s = match client.connect(port, "api.test").await {
            Ok(s) => s,
            Err(e) => {
                tally.fail(format!("h2 connect: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (send, conn) = match h2::client::handshake(s).await {
            Ok(x) => x,
            Err(e) => {
                tally.fail(format!("h2 handshake: {e}"));
                continue;
            }
        };
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut tasks = Vec::new();
        for i in 0..streams {
            let mut send = send.clone();
            let (tally, stop, token) = (tally.clone(), stop.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = i as u64;
                while !stop.load(Relaxed) {
                    n += 1;
                    let path = if n % 2 == 0 { "/open/h2" } else { "/api/h2" };
                    let req = http::Request::builder()
                        .uri(format!("https://api.test{path}"))
                        .header("authorization", format!("Bearer {token}"))
                        .body(())
                        .unwrap();
                    // The connection is closing: this request was not sent; a new one takes it.
                    let Ok(ready) = send.ready().await else {
                        return;
                    };
                    send = ready;
                    let answer = match send.send_request(req, true) {
                        Ok((resp, _)) => resp.await,
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(r) if r.status() == 200 => {
                            let mut body = r.into_body();
                            while let Some(chunk) = body.data().await {
                                if let Ok(c) = chunk {
                                    let _ = body.flow_control().release_capacity(c.len());
                                }
                            }
                            tally.ok.fetch_add(1, Relaxed);
                        }
                        Ok(r) => tally.fail(format!("h2 {path}: status {}", r.status())),
                        // Not processed by the server (RFC 9113 §8.7): safe to send again.
                        Err(e)
                            if e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM) =>
                        {
                            tally.retried.fetch_add(1, Relaxed);
                            return;
                        }
                        Err(e) => {
                            tally.fail(format!("h2 {path}: {e}"));
                            return;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        drop(send);
        let _ = driver.await;
    }
}

/// The gateway's config for the load test: `keys` in the provider's JWKS, `backends` of the
/// upstream, `extra` routes.
fn load_config(keys: &[&TestKey], backends: &[&Echo], extra: &str) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|e| format!("{{ addr: \"{}\" }}", e.addr()))
        .collect();
    format!(
        "auth:
  providers:
    - name: main
      issuer: \"{ISS}\"
      audiences: [\"{AUD}\"]
      jwks: {}
upstreams:
  echo: {{ backends: [{}] }}
routes:
  - {{ name: open, path: /open, upstream: echo, auth: none }}
  - {{ name: api, path: /api, upstream: echo }}
{extra}",
        jwks(keys),
        backends.join(", ")
    )
}

#[test]
fn under_tls_load_ten_reloads_and_a_graceful_upgrade_fail_no_request() {
    use std::sync::atomic::Ordering::Relaxed;
    let a = Echo::start("A");
    let b = Echo::start("B");
    let stable = TestKey::es256("stable");
    let old_key = TestKey::es256("old");
    let new_key = TestKey::es256("new");
    let pki = Pki::new("Test CA");
    let cert = pki.server("api", &["api.test"]);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let pid = dir.path().join("tollgate.pid");
    let mut old = Gateway::start_with_server_and_tls(
        &format!(
            "grace_period: 1s, graceful_shutdown_timeout: 3s, upgrade_sock: \"{}\", pid_file: \"{}\"",
            sock.display(),
            pid.display()
        ),
        // Changed certificates are taken by the reloads here, not by the file watch.
        &format!(
            "{{ {}, watch: 1h }}",
            cert.certificates()
        ),
        &load_config(&[&stable, &old_key], &[&a], ""),
    );
    let token = stable.sign(json!({ "iss": ISS, "aud": AUD, "sub": "load" }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h1_client = Arc::new(Client::new(&pki.ca_pem(), None, &["http/1.1"]));
    let h2_client = Arc::new(Client::new(&pki.ca_pem(), None, &["h2"]));
    let mut load = Vec::new();
    for _ in 0..6 {
        load.push(rt.spawn(h1_load(
            h1_client.clone(),
            old.https_port,
            token.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    for _ in 0..2 {
        load.push(rt.spawn(h2_load(
            h2_client.clone(),
            old.https_port,
            token.clone(),
            8,
            tally.clone(),
            stop.clone(),
        )));
    }
    let started = std::time::Instant::now();
    let probe = Client::new(&pki.ca_pem(), None, &["http/1.1"]);
    let https_get = |path: &str, token: Option<&str>| -> Reply {
        rt.block_on(async {
            let mut s = probe.connect(old.https_port, "api.test").await.unwrap();
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            h1(&mut s, "api.test", path, &headers).await.unwrap()
        })
    };
    let served_cert = || {
        rt.block_on(async { peer_der(&probe.connect(old.https_port, "api.test").await.unwrap()) })
    };
    let mut generation = old.metric("tollgate_config_generation", &[]);
    // Reloads with `yaml`, waits until the gateway took it, then until `took_effect`.
    let mut reload = |what: &str, yaml: String, took_effect: &dyn Fn() -> bool| {
        std::thread::sleep(Duration::from_millis(1500));
        old.reload(&yaml);
        wait_for(&format!("reload: {what}"), Duration::from_secs(10), || {
            let g = old.metric("tollgate_config_generation", &[]);
            (g > generation).then_some(g)
        });
        generation += 1.0;
        wait_for(
            &format!("effect of: {what}"),
            Duration::from_secs(10),
            || took_effect().then_some(()),
        );
    };
    let r1 = "  - { name: r1, path: /r1, upstream: echo, auth: none }";
    let new_token = new_key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "n" }));
    let old_token = old_key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "o" }));
    assert_eq!(https_get("/api/x", Some(&old_token)).status, 200);
    let servers = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| https_get("/open/s", None).server())
            .collect()
    };

    reload(
        "route added",
        load_config(&[&stable, &old_key], &[&a], r1),
        &|| https_get("/r1/x", None).status == 200,
    );
    reload(
        "route removed",
        load_config(&[&stable, &old_key], &[&a], ""),
        &|| https_get("/r1/x", None).status == 404,
    );
    reload(
        "new key published",
        load_config(&[&stable, &old_key, &new_key], &[&a], ""),
        &|| https_get("/api/x", Some(&new_token)).status == 200,
    );
    reload(
        "old key retired",
        load_config(&[&stable, &new_key], &[&a], ""),
        &|| https_get("/api/x", Some(&old_token)).status == 401,
    );
    reload(
        "backend added",
        load_config(&[&stable, &new_key], &[&a, &b], ""),
        &|| servers(8).iter().any(|s| s == "B"),
    );
    reload(
        "backend replaced",
        load_config(&[&stable, &new_key], &[&b], ""),
        &|| servers(4).iter().all(|s| s == "B"),
    );
    // The certificate renewed in place; the reload reads it.
    let renewed = pki.server("api", &["api.test"]);
    reload(
        "certificate replaced",
        load_config(&[&stable, &new_key], &[&b], ""),
        &|| served_cert() == renewed.der,
    );
    reload(
        "backend moved back",
        load_config(&[&stable, &new_key], &[&a], ""),
        &|| servers(4).iter().all(|s| s == "A"),
    );
    reload(
        "route added again",
        load_config(&[&stable, &new_key], &[&a], r1),
        &|| https_get("/r1/x", None).status == 200,
    );
    let third = pki.server("api", &["api.test"]);
    reload(
        "certificate replaced again",
        load_config(&[&stable, &new_key], &[&a], r1),
        &|| served_cert() == third.der,
    );
    let reloads = old.metric("tollgate_config_reloads_total", &[("result", "success")]);
    assert_eq!(reloads, 10.0);

    // The graceful upgrade: a new process takes the listeners; the old one drains.
    let mut new = old.start_upgrade();
    wait_for(
        "the new process to wait for the listeners",
        Duration::from_secs(10),
        || sock.exists().then_some(()),
    );
    let quit = std::process::Command::new("kill")
        .args(["-QUIT", &old.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    wait_for("the old process to exit", Duration::from_secs(20), || {
        old.proc.exited().then_some(())
    });
    assert!(!new.exited(), "the new process runs: {}", new.log_text());
    // The new process serves the load (its counters start from zero), on the last config.
    let before = old.metric("tollgate_requests_total", &[("route", "api")]);
    wait_for("the new process serving", Duration::from_secs(10), || {
        (old.metric("tollgate_requests_total", &[("route", "api")]) > before + 200.0).then_some(())
    });
    assert_eq!(https_get("/r1/x", None).status, 200);
    while started.elapsed() < Duration::from_secs(22) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Relaxed);
    let elapsed = started.elapsed();
    rt.block_on(async {
        for l in load {
            let _ = tokio::time::timeout(Duration::from_secs(10), l).await;
        }
    });
    let ok = tally.ok.load(Relaxed);
    let failures = tally.failures.lock().unwrap();
    let rate = ok as f64 / elapsed.as_secs_f64();
    eprintln!(
        "TLS load: {ok} answered in {:.1} s ({rate:.0}/s), {} h2 requests retried after GOAWAY, \
         {} h1 requests retried after a kept-alive connection closed unanswered {:?}, {} failed",
        elapsed.as_secs_f64(),
        tally.retried.load(Relaxed),
        tally.h1_retried.load(Relaxed),
        tally.h1_resets.lock().unwrap(),
        failures.len()
    );
    // A rare race at a connection's close is what a client retries; more than a couple in a
    // run is a gateway that drops connections.
    assert!(
        tally.h1_retried.load(Relaxed) <= 2,
        "kept-alive connections closed unanswered {} times",
        tally.h1_retried.load(Relaxed)
    );
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}\nnew: {}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(10)],
        new.log_text()
    );
    assert!(ok > 5_000, "{ok} requests answered");
    new.kill();
}

#[test]
fn a_resumed_session_brings_back_no_certificate_the_listener_no_longer_trusts() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let other_ca = Pki::new("Other CA");
    let api = pki.server("api", &["api.test"]);
    let alice = pki.client("alice");
    let tls = |ca: &Path, auth: &str| {
        format!(
            "{{ {}, client_auth: {auth}, client_ca: {}, \
             client_cert_headers: {{ subject: X-Client-Subject }} }}",
            api.certificates(),
            yaml_path(ca)
        )
    };
    let yaml = routes(
        &echo,
        &key,
        "  - { name: mtls, path: /mtls, upstream: echo, auth: none, client_certificate: required }",
    );
    let gw = Gateway::start_with_tls(&tls(&pki.ca_file(), "optional"), &yaml);
    let rt = runtime();
    // Each client config keeps its sessions (a TLS 1.3 ticket, a TLS 1.2 session id).
    let clients: Vec<Client> = [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .map(|v| Client::with_versions(&pki.ca_pem(), Some(&alice), &["http/1.1"], &[v]))
        .collect();
    let resumed = |client: &Client, path: &str| -> std::io::Result<Reply> {
        rt.block_on(async {
            let mut s = client.connect(gw.https_port, "api.test").await?;
            assert_eq!(
                s.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "the client resumes its saved session"
            );
            h1(&mut s, "api.test", path, &[]).await
        })
    };
    for client in &clients {
        let first = rt.block_on(async {
            let mut s = client.connect(gw.https_port, "api.test").await.unwrap();
            h1(&mut s, "api.test", "/mtls/x", &[]).await.unwrap()
        });
        assert_eq!(first.status, 200, "{}", first.body);
        let r = resumed(client, "/mtls/x").unwrap();
        assert_eq!(r.status, 200, "resumed with a certificate still trusted");
    }
    // alice's CA is no longer trusted: her saved sessions do not bring her certificate back.
    let generation = gw.metric("tollgate_config_generation", &[]);
    gw.reload_with_tls(&tls(&other_ca.ca_file(), "optional"), &yaml);
    wait_for("the reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_generation", &[]) > generation).then_some(())
    });
    for client in &clients {
        let r = resumed(client, "/mtls/x").unwrap();
        assert_eq!(
            r.status, 403,
            "a certificate from a CA removed since: {}",
            r.body
        );
        let r = resumed(client, "/open/x").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream_header("x-client-subject"), None);
    }
    // With `required`, a resumed session without a certificate valid now gets no answer.
    let refused_before = gw.metric(
        "tollgate_tls_handshake_failures_total",
        &[("reason", "no_client_certificate")],
    );
    gw.reload_with_tls(&tls(&other_ca.ca_file(), "required"), &yaml);
    wait_for("the second reload", Duration::from_secs(10), || {
        (gw.metric("tollgate_config_generation", &[]) > generation + 1.0).then_some(())
    });
    for client in &clients {
        let r = rt.block_on(async {
            let mut s = client.connect(gw.https_port, "api.test").await?;
            h1(&mut s, "api.test", "/open/x", &[]).await
        });
        assert!(r.is_err(), "served on a resumed session: {r:?}");
    }
    let refused = gw.metric(
        "tollgate_tls_handshake_failures_total",
        &[("reason", "no_client_certificate")],
    );
    assert!(
        refused >= refused_before + 2.0,
        "{refused_before} → {refused}"
    );
}

#[test]
fn http2_cookie_crumbs_are_joined_before_routing_tokens_and_forwarding() {
    // Issue 22 (6): `cookie: a=1` and `cookie: canary=yes` as two HTTP/2 fields reached the
    // HTTP/1.1 upstream as two Cookie lines (RFC 9113 §8.2.3 says join them with "; "), the
    // split matched the second crumb alone, and 300 crumbs counted as 300 headers (431).
    let stable = Echo::start("stable");
    let canary = Echo::start("canary");
    let key = TestKey::es256("k1");
    let pki = Pki::new("Test CA");
    let api = pki.server("api", &["api.test"]);
    let gw = Gateway::start_with_tls(
        &format!("{{ certificates: [{{ cert: {}, key: {} }}] }}", yaml_path(&api.cert), yaml_path(&api.key)),
        &format!(
            "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [\"{AUD}\"], jwks: {}, token_sources: [bearer, \"cookie:at\"] }}
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}]
upstreams:
  stable: {{ backends: [{{ addr: \"{}\" }}] }}
  canary: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: api
    path: /api
    upstreams:
      - {{ name: canary, when: {{ cookie: {{ canary: \"yes\" }} }} }}
      - {{ name: stable }}
",
            jwks(&[&key]),
            stable.addr(),
            canary.addr()
        ),
    );
    let token = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "alice" }));
    let at = format!("at={token}");
    let rt = runtime();
    rt.block_on(async {
        let client = Client::new(&pki.ca_pem(), None, &["h2"]);
        let s = client.connect(gw.https_port, "api.test").await.unwrap();
        let r = h2_get(
            s,
            "api.test",
            "/api/x",
            &[("cookie", "a=1"), ("cookie", &at), ("cookie", "canary=yes")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.server(), "canary", "routed on the joined cookies");
        // One line, the crumbs joined, the token cookie (read from a crumb) removed.
        assert_eq!(
            r.upstream_header("cookie").as_deref(),
            Some("a=1; canary=yes")
        );
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            Some("alice")
        );

        // 300 crumbs are one Cookie field, not 300 header fields.
        let crumbs: Vec<String> = (0..300).map(|i| format!("c{i}=v")).collect();
        let mut headers: Vec<(&str, &str)> =
            crumbs.iter().map(|c| ("cookie", c.as_str())).collect();
        headers.push(("cookie", &at));
        let s = client.connect(gw.https_port, "api.test").await.unwrap();
        let r = h2_get(s, "api.test", "/api/y", &headers).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.server(), "stable");
        let cookie = r.upstream_header("cookie").unwrap();
        assert_eq!(cookie.split("; ").count(), 300, "{cookie}");
        assert!(cookie.starts_with("c0=v; c1=v; "), "{cookie}");
    });
}
