//! gRPC through the gateway with real gRPC on both sides: a `grpcio` server (h2c, and TLS)
//! behind it and a `grpcio` client (TLS with ALPN h2, and h2c on the plain listener) in
//! front. A valid token's unary and server-streaming calls pass with their metadata and
//! trailers; every refusal reaches the client as its gRPC status (UNAUTHENTICATED,
//! PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE, UNIMPLEMENTED), not UNKNOWN.

use crate::common::*;
use crate::tls::{Issued, Pki};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command};

const ISS: &str = "https://issuer.test";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let p = repo().join("target/grpc-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `make unit` (or `make target/grpc-venv/.installed`) installs grpcio",
        p.display()
    );
    p
}

fn peer() -> PathBuf {
    repo().join("gateway/tests/it/grpc_peer.py")
}

fn dev(file: &str) -> String {
    repo()
        .join("conf/dev")
        .join(file)
        .to_str()
        .unwrap()
        .to_owned()
}

/// A grpcio server, stopped on drop.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// h2c, or TLS with `tls`'s certificate and key.
    fn start(tls: Option<&Issued>) -> Server {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(peer()).args(["server", &port.to_string()]);
        if let Some(issued) = tls {
            cmd.arg(&issued.cert).arg(&issued.key);
        }
        let child = spawn_ready(&mut cmd);
        Server(child, port)
    }
}

/// Runs `calls` with the grpcio client; one result object per call.
fn client(calls: &Value) -> Vec<Value> {
    let out = run_ok(
        Command::new(python())
            .arg(peer())
            .args(["client", &calls.to_string()]),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Setup {
    gw: Gateway,
    key: TestKey,
    _plain: Server,
    _secure: Server,
    _pki: Pki,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    // The TLS backend's certificate comes from a private CA the upstream's `ca_file` names.
    let pki = Pki::new("gRPC CA");
    let plain = Server::start(None);
    let secure = Server::start(Some(&pki.server("grpc", &["grpc.internal"])));
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key])).unwrap();
    let tls = format!(
        "{{ certificates: [{{ cert: \"{}\", key: \"{}\" }}] }}",
        dev("localhost.crt"),
        dev("localhost.key")
    );
    let yaml = format!(
        "auth:
  forward_claims: [{{ claim: sub, header: x-auth-subject }}]
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
policies:
  admin: {{ allow: [{{ roles: [admin] }}] }}
upstreams:
  plain: {{ backends: [{{ addr: \"127.0.0.1:{}\" }}], protocol: h2 }}
  secure:
    backends: [{{ addr: \"127.0.0.1:{}\" }}]
    protocol: h2
    tls: {{ ca_file: \"{}\", sni: grpc.internal }}
  dead: {{ backends: [{{ addr: \"127.0.0.1:1\" }}], protocol: h2 }}
routes:
  - {{ name: greeter, path: /demo.Greeter/, upstream: plain }}
  - {{ name: secure, path: /demo.Secure/, upstream: secure }}
  - {{ name: admin, path: /demo.Admin/, upstream: plain, policy: admin }}
  - name: limited
    path: /demo.Limited/
    upstream: plain
    rate_limits: [{{ name: one, key: \"claim:sub\", rate: 1/min, burst: 1 }}]
  - {{ name: down, path: /demo.Down/, upstream: dead }}
",
        jwks_path.display(),
        plain.1,
        secure.1,
        pki.ca_file().display(),
    );
    let gw = Gateway::start_with_http_and_tls("{ h2c: true }", &tls, &yaml);
    Setup {
        gw,
        key,
        _plain: plain,
        _secure: secure,
        _pki: pki,
        _dir: dir,
    }
}

impl Setup {
    fn bearer(&self, sub: &str, roles: &[&str]) -> String {
        let claims = json!({ "iss": ISS, "sub": sub, "exp": 4_000_000_000u64, "roles": roles });
        format!("Bearer {}", self.key.sign(claims))
    }

    /// A call through the TLS listener (ALPN h2) and the same through h2c.
    fn both(&self, call: Value) -> Vec<Value> {
        let mut tls = call.clone();
        tls["target"] = json!(format!("127.0.0.1:{}", self.gw.https_port));
        tls["ca"] = json!(dev("localhost.crt"));
        let mut h2c = call;
        h2c["target"] = json!(format!("127.0.0.1:{}", self.gw.port));
        vec![tls, h2c]
    }
}

#[test]
fn unary_and_streaming_calls_pass_with_metadata_and_trailers_to_h2c_and_tls_backends() {
    let s = setup();
    let alice = s.bearer("alice", &["user"]);
    let mut calls = Vec::new();
    for method in ["/demo.Greeter/Hello", "/demo.Secure/Hello"] {
        calls.extend(s.both(json!({
            "method": method,
            "request": "ping",
            "metadata": [["authorization", alice], ["x-auth-subject", "mallory"], ["x-custom", "kept"]],
        })));
    }
    for method in ["/demo.Greeter/Count", "/demo.Secure/Count"] {
        calls.extend(s.both(json!({
            "method": method, "stream": true, "request": "n",
            "metadata": [["authorization", alice]],
        })));
    }
    let results = client(&Value::Array(calls));
    for (i, r) in results[..4].iter().enumerate() {
        assert_eq!(r["code"], "OK", "unary call {i}: {r}");
        let seen = &r["response"]["metadata"];
        assert_eq!(r["response"]["request"], "ping");
        assert_eq!(seen["x-auth-subject"], "alice", "call {i}: {seen}");
        assert_eq!(seen["x-custom"], "kept");
        assert!(
            seen.get("authorization").is_none(),
            "call {i}: the token went upstream"
        );
        assert_eq!(r["initial"]["x-initial"], "hi");
        assert_eq!(r["trailing"]["x-trailing"], "bye");
    }
    for (i, r) in results[4..].iter().enumerate() {
        assert_eq!(r["code"], "OK", "streaming call {i}: {r}");
        assert_eq!(r["messages"], json!(["n-0", "n-1", "n-2"]));
        assert_eq!(r["trailing"]["x-trailing"], "bye");
    }
}

#[test]
fn refusals_reach_a_grpc_client_as_grpc_status_codes() {
    let s = setup();
    let user = s.bearer("bob", &["user"]);
    let mut calls = Vec::new();
    // No token; a forged one; a valid token the policy refuses; over a limit (two calls
    // each: the second is refused); a dead backend; no route.
    calls.extend(s.both(json!({ "method": "/demo.Greeter/Hello" })));
    let forged = {
        let other = TestKey::es256("k");
        let claims =
            json!({ "iss": ISS, "sub": "bob", "exp": 4_000_000_000u64, "roles": ["admin"] });
        format!("Bearer {}", other.sign(claims))
    };
    calls.extend(s.both(json!({
        "method": "/demo.Greeter/Hello",
        "metadata": [["authorization", forged]],
    })));
    calls.extend(
        s.both(json!({ "method": "/demo.Admin/Hello", "metadata": [["authorization", user]] })),
    );
    let limited = s.bearer("carol", &[]);
    calls.extend(s.both(
        json!({ "method": "/demo.Limited/Hello", "metadata": [["authorization", limited]] }),
    ));
    calls.extend(
        s.both(json!({ "method": "/demo.Down/Hello", "metadata": [["authorization", user]] })),
    );
    calls.extend(
        s.both(json!({ "method": "/demo.Nowhere/Hello", "metadata": [["authorization", user]] })),
    );
    let r = client(&Value::Array(calls));
    let codes: Vec<&str> = r.iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        [
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
            "OK",
            "RESOURCE_EXHAUSTED",
            "UNAVAILABLE",
            "UNAVAILABLE",
            "UNIMPLEMENTED",
            "UNIMPLEMENTED",
        ],
        "{r:?}"
    );
    assert_eq!(r[0]["details"], "a bearer token is required (missing)");
    assert_eq!(r[2]["details"], "signature does not verify (signature)");
    assert!(r[0]["trailing"]["www-authenticate"]
        .as_str()
        .is_some_and(|c| c.starts_with("Bearer")));
    assert!(r[7]["trailing"]["retry-after"].is_string(), "{}", r[7]);
}

#[test]
fn an_h2c_listener_still_serves_http1_even_a_request_shorter_than_the_preface() {
    let s = setup();
    // 18 bytes: fewer than the 24 of the HTTP/2 preface, so a listener waiting for 24
    // would never answer.
    let r = raw_request(s.gw.port, "GET /x HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        r.json()["reason"],
        "missing_host",
        "read and judged as HTTP/1.0"
    );
    let r = raw_request(
        s.gw.port,
        "POST /demo.Greeter/Hello HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["reason"], "missing", "HTTP/1.1 answers stay JSON");
}
