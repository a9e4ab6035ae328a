//! TLS toward upstreams: a backend on 127.0.0.1 written here that speaks TLS (HTTP/2 and
//! HTTP/1.1 by ALPN) and asks for a client certificate; and a `jwks_uri` served over HTTPS by
//! a private CA.

use crate::common::*;
use crate::tls::{yaml_path, Pki};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A TLS backend: answers every request with JSON naming the protocol, the path and the
/// client certificate's presence, and (on HTTP/2) the trailers gRPC uses.
struct TlsBackend {
    port: u16,
    /// Requests answered.
    served: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsBackend {
    /// `body` is served on HTTP/1.1 instead of the echo JSON when given (a JWKS document).
    fn start(
        cert: &crate::tls::Issued,
        client_ca: Option<&Pki>,
        body: Option<String>,
    ) -> TlsBackend {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(pki) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                vec![CertificateDer::from(cert.der.clone())],
                PrivateKeyDer::from_pem_file(&cert.key).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, count, body) = (acceptor.clone(), count.clone(), body.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    if h2 {
                        serve_h2(tls, client_cert, count).await;
                    } else {
                        serve_h1(tls, client_cert, count, body).await;
                    }
                });
            }
        });
        TlsBackend {
            port,
            served,
            _runtime: runtime,
        }
    }
}

async fn serve_h2(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    client_cert: bool,
    count: Arc<AtomicUsize>,
) {
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        count.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "proto": "h2", "path": req.uri().path(), "client_cert": client_cert,
                           "authority": req.uri().authority().map(|a| a.to_string()) })
        .to_string();
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let Ok(mut send) = respond.send_response(resp, false) else {
            continue;
        };
        let _ = send.send_data(body.into(), false);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "fine".parse().unwrap());
        let _ = send.send_trailers(trailers);
    }
}

async fn serve_h1(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    client_cert: bool,
    count: Arc<AtomicUsize>,
    body: Option<String>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = tls.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        count.fetch_add(1, Ordering::Relaxed);
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let body = body.clone().unwrap_or_else(|| {
            json!({ "proto": "http/1.1", "path": path, "client_cert": client_cert }).to_string()
        });
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One HTTP/2 GET over TLS to the gateway: the answer and its trailers.
fn h2_with_trailers(
    pki: &Pki,
    port: u16,
    path: &str,
) -> (u16, serde_json::Value, Option<http::HeaderMap>) {
    use rustls::pki_types::pem::PemObject;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_file()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("api.test".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (mut send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .uri(format!("https://api.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json, trailers)
    })
}

/// The gateway's HTTPS listener, with one route to `upstream` (a YAML block).
fn gateway_to(pki: &Pki, upstream: &str) -> Gateway {
    let api = pki.server("api", &["api.test"]);
    Gateway::start_with_tls(
        &format!(
            "{{ {} }}",
            api.certificates()
        ),
        &format!(
            "upstreams:\n  backend:\n{upstream}\nroutes:\n  - {{ name: all, path: /, upstream: backend, auth: none }}\n"
        ),
    )
}

#[test]
fn an_h2_upstream_over_tls_gets_the_gateways_client_certificate_and_trailers_pass_through() {
    let pki = Pki::new("Test CA");
    let backend_cert = pki.server("backend", &["backend.test"]);
    let client = pki.client("tollgate");
    let backend = TlsBackend::start(&backend_cert, Some(&pki), None);
    let gw = gateway_to(
        &pki,
        &format!(
            "    backends: [{{ addr: \"127.0.0.1:{}\" }}]\n    protocol: h2\n    \
             tls: {{ sni: backend.test, ca_file: {}, client_cert: {}, client_key: {} }}\n    \
             health_check: {{ type: http, path: /healthz, interval: 200ms, healthy_threshold: 1 }}",
            backend.port,
            yaml_path(&pki.ca_file()),
            yaml_path(&client.cert),
            yaml_path(&client.key)
        ),
    );
    let (status, body, trailers) = h2_with_trailers(&pki, gw.https_port, "/pkg.Service/Call");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["proto"], "h2", "{body}");
    assert_eq!(body["client_cert"], true);
    assert_eq!(body["path"], "/pkg.Service/Call");
    let trailers = trailers.expect("the upstream's trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    // The same upstream from an HTTP/1.1 client on the plain listener.
    let r = gw.get("/plain", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["proto"], "h2");
    // Health checks go over the same TLS, with the same client certificate.
    wait_for(
        "a passing TLS health check",
        Duration::from_secs(10),
        || {
            let passed = gw.metric(
                "tollgate_upstream_health_checks_total",
                &[("upstream", "backend"), ("result", "pass")],
            );
            (passed >= 1.0).then_some(())
        },
    );
    assert_eq!(
        gw.metric(
            "tollgate_upstream_health_checks_total",
            &[("upstream", "backend"), ("result", "fail")]
        ),
        0.0
    );
}

#[test]
fn an_upstream_certificate_from_another_ca_is_refused_unless_verify_is_off() {
    let pki = Pki::new("Test CA");
    let other = Pki::new("Other CA");
    let backend_cert = other.server("backend", &["backend.test"]);
    let backend = TlsBackend::start(&backend_cert, None, None);
    let upstream = |verify: bool| {
        format!(
            "    backends: [{{ addr: \"127.0.0.1:{}\" }}]\n    retries: 0\n    \
             tls: {{ sni: backend.test, ca_file: {}, verify: {verify} }}",
            backend.port,
            yaml_path(&pki.ca_file()),
        )
    };
    let gw = gateway_to(&pki, &upstream(true));
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        backend.served.load(Ordering::Relaxed),
        0,
        "no request reached it"
    );
    let gw = gateway_to(&pki, &upstream(false));
    let r = gw.get("/x", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["proto"], "http/1.1");
}

#[test]
fn a_jwks_uri_behind_a_private_ca_is_fetched_with_the_providers_ca_file() {
    let pki = Pki::new("IdP CA");
    let idp_cert = pki.server("idp", &["127.0.0.1"]);
    let key = TestKey::es256("k1");
    let idp = TlsBackend::start(&idp_cert, None, Some(jwks(&[&key])));
    let echo = Echo::start("E");
    let gw = Gateway::start(&format!(
        "auth:\n  providers:\n    - {{ name: idp, issuer: \"https://idp.test\", audiences: any, \
         jwks_uri: \"https://127.0.0.1:{}/jwks\", ca_file: {} }}\n\
         upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\n\
         routes:\n  - {{ name: api, path: /, upstream: e }}\n",
        idp.port,
        yaml_path(&pki.ca_file()),
        echo.addr()
    ));
    // Ready means the keys were fetched over TLS verified against the IdP's CA.
    let token = key.sign(json!({ "iss": "https://idp.test", "sub": "alice" }));
    let r = gw.get("/x", &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(idp.served.load(Ordering::Relaxed) >= 1);
    assert!(gw.metric("tollgate_jwks_fetch_total", &[("result", "success")]) >= 1.0);
}
