//! `upstream_token`: the upstream gets a token minted by the gateway, checked here by a
//! backend written with PyJWT (Debian's `python3-jwt`, installed by `make test`), an
//! implementation independent of tollgate's.

use crate::common::*;
use serde_json::json;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ISS: &str = "https://issuer.test";
const AUD: &str = "api://tests";
const GATEWAY: &str = "https://gateway.test";

/// A PKCS#8 PEM private key of `alg` written to `dir/name.pem`.
fn signing_key_file(dir: &Path, name: &str, alg: &'static rcgen::SignatureAlgorithm) -> PathBuf {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, key.serialize_pem()).unwrap();
    path
}

/// `gateway/tests/it/pyjwt_backend.py` under Debian's Python (where `python3-jwt` is).
struct PyJwtBackend {
    port: u16,
    child: std::process::Child,
}

impl PyJwtBackend {
    fn start(audience: &str, header: &str) -> PyJwtBackend {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/pyjwt_backend.py");
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args([script.to_str().unwrap(), GATEWAY, audience, header])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("/usr/bin/python3 with python3-jwt (make test installs it)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the PyJWT backend did not start (is python3-jwt installed?): {line:?}")
        });
        PyJwtBackend { port, child }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn trust(&self, gw: &Gateway) {
        let jwks = format!("http://127.0.0.1:{}/.well-known/jwks.json", gw.metrics_port);
        let r = request(
            &format!("http://{}/__jwks?url={jwks}", self.addr()),
            "GET",
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Presents `token` to the backend directly, as a replayed token would be.
    fn present(&self, token: &str) -> Reply {
        request(
            &format!("http://{}/", self.addr()),
            "GET",
            &[("authorization", &format!("Bearer {token}"))],
        )
    }
}

impl Drop for PyJwtBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(
    keys: &[(&str, &Path)],
    current: &str,
    jwks: &Path,
    billing: &str,
    echo: &Echo,
) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(kid, file)| format!("{{ kid: {kid}, file: \"{}\" }}", file.display()))
        .collect();
    format!(
        "auth:
  providers: [{{ name: main, issuer: \"{ISS}\", audiences: [\"{AUD}\"], jwks_file: \"{}\" }}]
  signing_keys: {{ issuer: \"{GATEWAY}\", current: {current}, keys: [{}] }}
upstreams:
  billing: {{ backends: [{{ addr: \"{billing}\" }}] }}
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: short, path: /short, upstream: billing, upstream_token: {{ audience: billing, ttl: 2s, claims: [roles, tenant] }} }}
  - {{ name: long, path: /long, upstream: billing, upstream_token: {{ audience: billing, ttl: 1h }} }}
  - {{ name: anon, path: /anon, auth: optional, upstream: echo, upstream_token: {{ header: X-Gateway-Token, audience: echo }} }}
",
        jwks.display(),
        keys.join(", "),
        echo.addr()
    )
}

fn caller(key: &TestKey, sub: &str) -> String {
    let token = key.sign(
        json!({ "iss": ISS, "aud": AUD, "sub": sub, "roles": ["payer"],
        "tenant": "acme", "email": "not@forwarded.test" }),
    );
    format!("Bearer {token}")
}

#[test]
fn the_backend_verifies_the_minted_token_with_pyjwt_and_refuses_it_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let gw1 = signing_key_file(dir.path(), "gw1", &rcgen::PKCS_ED25519);
    let gw2 = signing_key_file(dir.path(), "gw2", &rcgen::PKCS_ECDSA_P256_SHA256);
    let key = TestKey::es256("c1");
    let (_jwks_dir, jwks) = jwks_file(&[&key]);
    let backend = PyJwtBackend::start("billing", "Authorization");
    let echo = Echo::start("echo");
    let keys = [("gw1", gw1.as_path()), ("gw2", gw2.as_path())];
    let gw = Gateway::start(&config(&keys, "gw1", &jwks, &backend.addr(), &echo));
    backend.trust(&gw);

    let r = gw.get("/short", &[("authorization", &caller(&key, "alice"))]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["kid"], "gw1");
    let claims = &seen["claims"];
    assert_eq!(claims["iss"], GATEWAY);
    assert_eq!(claims["aud"], "billing");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["payer"]));
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["act"], json!({ "iss": ISS, "sub": "alice" }));
    assert_eq!(
        claims.get("email"),
        None,
        "only the listed claims are copied"
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        2
    );
    assert!(!claims["jti"].as_str().unwrap().is_empty());
    // No token, no minted token: the gateway refuses first.
    assert_eq!(gw.get("/short", &[]).status, 401);

    // The minted token is refused once its TTL has passed.
    let minted = seen["token"].as_str().unwrap().to_owned();
    assert_eq!(backend.present(&minted).status, 200);
    wait_for("the minted token's expiry", Duration::from_secs(10), || {
        let r = backend.present(&minted);
        (r.status == 401).then_some(r)
    });
    let r = backend.present(&minted);
    assert!(r.body.contains("ExpiredSignatureError"), "{}", r.body);

    // A hot caller costs one signature: the token is reused within half its lifetime.
    let mut jtis = std::collections::HashSet::new();
    for _ in 0..50 {
        let r = gw.get("/long", &[("authorization", &caller(&key, "bob"))]);
        assert_eq!(r.status, 200, "{}", r.body);
        jtis.insert(r.json()["claims"]["jti"].as_str().unwrap().to_owned());
    }
    assert_eq!(jtis.len(), 1);
    let count = |result: &str| {
        gw.metric(
            "tollgate_upstream_tokens_total",
            &[("route", "long"), ("result", result)],
        )
    };
    assert_eq!((count("minted"), count("cached")), (1.0, 49.0));

    // The gateway's keys rotate (gw2, published from the start, now signs) while requests
    // flow: none fails at the backend.
    let stop = Arc::new(AtomicBool::new(false));
    let url = gw.url("/long");
    let token = caller(&key, "carol");
    let flow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Acquire) {
                statuses.push(request(&url, "GET", &[("authorization", &token)]).status);
            }
            statuses
        })
    };
    gw.reload(&config(&keys, "gw2", &jwks, &backend.addr(), &echo));
    wait_for("the rotated key", Duration::from_secs(10), || {
        let r = gw.get("/long", &[("authorization", &caller(&key, "dave"))]);
        assert_eq!(r.status, 200, "{}", r.body);
        (r.json()["kid"] == "gw2").then_some(())
    });
    stop.store(true, Ordering::Release);
    let statuses = flow.join().unwrap();
    assert!(!statuses.is_empty());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Both keys stay published until the config drops gw1.
    let published = request(
        &format!("http://127.0.0.1:{}/.well-known/jwks.json", gw.metrics_port),
        "GET",
        &[],
    );
    let kids: Vec<String> = published.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kids, ["gw1", "gw2"]);
    assert!(
        published.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("d").is_none()),
        "public keys only"
    );
}

#[test]
fn a_clients_copy_of_the_minted_tokens_header_never_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let gw1 = signing_key_file(dir.path(), "gw1", &rcgen::PKCS_ED25519);
    let key = TestKey::es256("c1");
    let (_jwks_dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("echo");
    let gw = Gateway::start(&config(
        &[("gw1", gw1.as_path())],
        "gw1",
        &jwks,
        &echo.addr(),
        &echo,
    ));
    // Anonymous on an optional route: nothing is minted, and the client's copy is removed.
    for name in ["X-Gateway-Token", "x_gateway_token"] {
        let r = gw.get("/anon", &[(name, "forged")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.upstream_header("x-gateway-token"), None);
    }
    // With a verified caller, the upstream gets the gateway's token (not the caller's).
    let r = gw.get(
        "/anon",
        &[
            ("authorization", &caller(&key, "erin")),
            ("x-gateway-token", "forged"),
        ],
    );
    let minted = r.upstream_header("x-gateway-token").unwrap();
    assert_eq!(minted.split('.').count(), 3, "{minted}");
    assert!(!minted.starts_with("Bearer "));
}
