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
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// An issued certificate: its files and DER.
#[derive(Clone)]
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Issued {
    /// RFC 8705 `x5t#S256`: base64url(SHA-256(DER)).
    fn thumbprint(&self) -> String {
        tollgate_jwt::codec::b64url_encode(
            ring::digest::digest(&ring::digest::SHA256, &self.der).as_ref(),
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
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `names`, written as `file`.pem / `file`.key.
    fn server(&self, file: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A client certificate with common name `cn`.
    fn client(&self, cn: &str) -> Issued {
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

fn yaml_path(p: &Path) -> String {
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
            "{{ certificates: [{{ cert: {}, key: {} }}], client_auth: required, client_ca: {}, \
             client_cert_headers: {{ subject: X-Client-Subject, sha256: X-Client-Sha256 }} }}",
            yaml_path(&api.cert),
            yaml_path(&api.key),
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
            "{{ certificates: [{{ cert: {}, key: {} }}], client_auth: optional, client_ca: {} }}",
            yaml_path(&api.cert),
            yaml_path(&api.key),
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
            "{{ certificates: [{{ cert: {}, key: {} }}], client_auth: optional, client_ca: {} }}",
            yaml_path(&api.cert),
            yaml_path(&api.key),
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
        &format!(
            "{{ certificates: [{{ cert: {}, key: {} }}], watch: 100ms }}",
            yaml_path(&first.cert),
            yaml_path(&first.key)
        ),
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
            "{{ certificates: [{{ cert: {}, key: {} }}], redirect_http: true, \
             hsts: {{ max_age: 365d, include_subdomains: true }} }}",
            yaml_path(&api.cert),
            yaml_path(&api.key)
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
