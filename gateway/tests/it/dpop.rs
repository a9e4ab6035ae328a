//! DPoP (RFC 9449): a token bound to a client key passes only with a fresh proof by that key
//! for this very request, once; checked on what the client got and what the upstream received.

use crate::common::*;
use serde_json::json;
use tollgate_jwt::dpop::{key_thumbprint, make_proof_with_nonce};
use tollgate_jwt::SigningKey;

const ISS: &str = "https://issuer.test";
const AUD: &str = "api://tests";

fn client_key() -> SigningKey {
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token bound to `client` (`cnf.jkt`), or unbound.
fn token(issuer: &TestKey, client: Option<&SigningKey>) -> String {
    let mut claims = json!({ "iss": ISS, "aud": AUD, "sub": "alice" });
    if let Some(c) = client {
        claims["cnf"] = json!({ "jkt": key_thumbprint(c).unwrap() });
    }
    issuer.sign(claims)
}

static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh proof by `key` for `method` on `url`, for `token`.
fn proof(key: &SigningKey, method: &str, url: &str, token: &str) -> String {
    proof_with_nonce(key, method, url, token, None)
}

fn config(jwks: &std::path::Path, echo: &Echo, extra: &str) -> String {
    format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [\"{AUD}\"], jwks_file: \"{}\", dpop: required }}
    - {{ name: soft, issuer: \"https://soft.test\", audiences: any, jwks_file: \"{}\", dpop: optional }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, path_match: prefix, upstream: echo, providers: [main] }}
  - {{ name: soft, path: /soft, path_match: prefix, upstream: echo, providers: [soft] }}
{extra}",
        jwks.display(),
        jwks.display(),
        echo.addr()
    )
}

/// The whole answer to `request`, as text (repeated header fields kept).
fn raw_text(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn dpop_get(gw: &Gateway, path: &str, token: &str, proof: Option<&str>) -> Reply {
    let auth = format!("DPoP {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(p) = proof {
        headers.push(("dpop", p));
    }
    gw.get(path, &headers)
}

fn assert_proof_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(r.json()["reason"], "dpop_proof", "{what}: {}", r.body);
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("error=\"invalid_dpop_proof\""),
        "{what}: {challenge}"
    );
}

#[test]
fn a_bound_token_passes_only_with_a_fresh_proof_by_its_key_for_this_request() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    let gw = Gateway::start(&config(&jwks, &echo, ""));
    let alice = client_key();
    let bound = token(&issuer, Some(&alice));
    let url = gw.url("/api/items");

    // A valid proof: accepted, and neither the token nor the proof reaches the upstream.
    let first = proof(&alice, "GET", &url, &bound);
    let r = dpop_get(&gw, "/api/items?page=2", &bound, Some(&first));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("dpop"), None);
    assert_eq!(r.upstream_header("authorization"), None);

    // The same proof again: a replay.
    let r = dpop_get(&gw, "/api/items", &bound, Some(&first));
    assert_proof_refused(&r, "replayed jti");
    assert!(r.body.contains("already used"), "{}", r.body);

    // A proof for another method, another URI, another port.
    for (method, target, what) in [
        ("POST", url.clone(), "wrong htm"),
        ("GET", gw.url("/api/other"), "wrong htu path"),
        (
            "GET",
            url.replace("127.0.0.1", "localhost"),
            "wrong htu host",
        ),
    ] {
        let p = proof(&alice, method, &target, &bound);
        assert_proof_refused(&dpop_get(&gw, "/api/items", &bound, Some(&p)), what);
    }

    // A token bound to another key, with a proof by alice's.
    let mallory = client_key();
    let theirs = token(&issuer, Some(&mallory));
    let p = proof(&alice, "GET", &url, &theirs);
    let r = dpop_get(&gw, "/api/items", &theirs, Some(&p));
    assert_proof_refused(&r, "token bound to another key");
    assert!(
        r.body.contains("not the key the token is bound to"),
        "{}",
        r.body
    );

    // A proof for another token (its ath).
    let p = proof(&alice, "GET", &url, &theirs);
    assert_proof_refused(&dpop_get(&gw, "/api/items", &bound, Some(&p)), "wrong ath");

    // No proof where DPoP is required; two proofs.
    assert_proof_refused(&dpop_get(&gw, "/api/items", &bound, None), "missing proof");
    let (a, b) = (
        proof(&alice, "GET", &url, &bound),
        proof(&alice, "GET", &url, &bound),
    );
    let raw = raw_text(
        gw.port,
        &format!(
            "GET /api/items HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: DPoP {bound}\r\nDPoP: {a}\r\nDPoP: {b}\r\nConnection: close\r\n\r\n",
            gw.port
        ),
    );
    let r = parse_reply(&raw).unwrap();
    assert_proof_refused(&r, "two proofs");

    // The bound token as a bearer token, and an unbound token, on a route that requires DPoP.
    for (auth, what) in [
        (format!("Bearer {bound}"), "bearer use of a bound token"),
        (format!("DPoP {}", token(&issuer, None)), "unbound token"),
    ] {
        let p = proof(&alice, "GET", &url, &bound);
        let r = gw.get("/api/items", &[("authorization", &auth), ("dpop", &p)]);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.json()["reason"], "binding", "{what}");
        let challenge = r.header("www-authenticate").unwrap();
        assert!(
            challenge.starts_with("DPoP ") && challenge.contains("algs=\"ES256"),
            "{what}: {challenge}"
        );
    }

    // Only the first proof reached the upstream.
    assert_eq!(echo.count(), 1);
    assert_eq!(
        gw.metric("tollgate_dpop_proofs_total", &[("result", "accepted")]),
        1.0
    );
    assert_eq!(
        gw.metric("tollgate_dpop_proofs_total", &[("result", "replayed")]),
        1.0
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[
                ("provider", "main"),
                ("result", "deny"),
                ("reason", "dpop_proof")
            ]
        ),
        8.0
    );
}

#[test]
fn where_dpop_is_optional_unbound_bearer_tokens_pass_and_bound_ones_need_their_proof() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    let gw = Gateway::start(&config(&jwks, &echo, ""));
    let soft = |client: Option<&SigningKey>| {
        let mut claims = json!({ "iss": "https://soft.test", "sub": "bob" });
        if let Some(c) = client {
            claims["cnf"] = json!({ "jkt": key_thumbprint(c).unwrap() });
        }
        issuer.sign(claims)
    };
    let unbound = soft(None);
    let r = gw.get("/soft", &[("authorization", &format!("Bearer {unbound}"))]);
    assert_eq!(r.status, 200, "{}", r.body);

    let bob = client_key();
    let bound = soft(Some(&bob));
    let r = gw.get("/soft", &[("authorization", &format!("Bearer {bound}"))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["reason"], "binding");
    // Both schemes are challenged where both are taken (RFC 9449 §7.1).
    let raw = raw_text(
        gw.port,
        &format!(
            "GET /soft HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bound}\r\nConnection: close\r\n\r\n"
        ),
    );
    let challenges: Vec<&str> = raw
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .collect();
    assert_eq!(challenges.len(), 2, "{raw}");
    assert!(challenges[0].contains("Bearer realm=") && challenges[0].contains("invalid_token"));
    assert!(challenges[1].contains("DPoP realm=") && challenges[1].contains("algs="));
    let p = proof(&bob, "GET", &gw.url("/soft"), &bound);
    assert_eq!(dpop_get(&gw, "/soft", &bound, Some(&p)).status, 200);
}

#[test]
fn a_proof_used_at_one_gateway_is_refused_at_another_sharing_its_redis() {
    let redis = RedisServer::start();
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    let shared = format!(
        "rate_limiting:\n  redis: {{ url: \"{}\", on_store_error: deny }}\n",
        redis.url()
    );
    let one = Gateway::start(&config(&jwks, &echo, &shared));
    let two = Gateway::start(&config(&jwks, &echo, &shared));
    let alice = client_key();
    let bound = token(&issuer, Some(&alice));
    // Both proofs name the same URI: the gateways differ only by port, so the Host each
    // sees is given explicitly as the one the client addressed.
    let host = "api.test:8443";
    let url = format!("http://{host}/api/x");
    let send = |gw: &Gateway, p: &str| {
        gw.get(
            "/api/x",
            &[
                ("host", host),
                ("authorization", &format!("DPoP {bound}")),
                ("dpop", p),
            ],
        )
    };
    // Readiness: each gateway has its Redis connection (with `deny`, none means 503).
    for gw in [&one, &two] {
        wait_for(
            "the gateway's Redis connection",
            std::time::Duration::from_secs(20),
            || {
                let r = send(gw, &proof(&alice, "GET", &url, &bound));
                assert!(r.status == 200 || r.status == 503, "{}", r.body);
                (r.status == 200).then_some(())
            },
        );
    }
    let p = proof(&alice, "GET", &url, &bound);
    assert_eq!(send(&one, &p).status, 200);
    let r = send(&two, &p);
    assert_proof_refused(&r, "replayed at another gateway");
    assert_eq!(
        two.metric("tollgate_dpop_proofs_total", &[("result", "replayed")]),
        1.0
    );
}

#[test]
fn at_debug_level_neither_the_token_nor_the_proof_is_logged_even_when_forwarded() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    // `TOLLGATE_LOG` overrides `logging.level`: neither opens Pingora's header dumps.
    let gw = Gateway::start_with_env(
        &[("TOLLGATE_LOG", "debug")],
        &format!(
            "logging: {{ level: debug }}
{}",
            config(&jwks, &echo, "").replace(
                "providers: [main] }",
                "providers: [main], keep_authorization: true }"
            )
        ),
    );
    let alice = client_key();
    let bound = token(&issuer, Some(&alice));
    let p = proof(&alice, "GET", &gw.url("/api/x"), &bound);
    let r = dpop_get(&gw, "/api/x", &bound, Some(&p));
    assert_eq!(r.status, 200, "{}", r.body);
    // Forwarded as asked: the upstream got both.
    assert_eq!(r.upstream_header("dpop").as_deref(), Some(p.as_str()));
    // The access log line of that request is written after the answer.
    wait_for(
        "the access log line",
        std::time::Duration::from_secs(10),
        || gw.proc.log_text().contains("/api/x").then_some(()),
    );
    let log = gw.proc.log_text();
    let signature = |jws: &str| jws.rsplit('.').next().unwrap().to_owned();
    assert!(!log.contains(&signature(&bound)), "the token is in the log");
    assert!(!log.contains(&signature(&p)), "the proof is in the log");
}

const NONCE_KEY: &str = "a-nonce-key-shared-by-every-instance-of-the-fleet";

/// As `proof`, carrying the server's `nonce` when given.
fn proof_with_nonce(
    key: &SigningKey,
    method: &str,
    url: &str,
    token: &str,
    nonce: Option<&str>,
) -> String {
    let jti = format!(
        "jti-{}",
        JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    make_proof_with_nonce(key, method, url, Some(token), &jti, now(), nonce).unwrap()
}

fn assert_nonce_asked(r: &Reply, what: &str) -> String {
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("dpop_nonce")),
        "{what}: {}",
        r.body
    );
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("DPoP ") && challenge.contains("error=\"use_dpop_nonce\""),
        "{what}: {challenge}"
    );
    r.header("dpop-nonce")
        .expect("a DPoP-Nonce with use_dpop_nonce")
        .to_owned()
}

#[test]
fn with_nonces_on_a_proof_needs_a_fresh_nonce_that_every_instance_of_the_fleet_issues() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    // A nonce lives one second here (and the next), so that an old one is seen soon.
    let nonces =
        "auth:\n  dpop: { nonce: on, nonce_secret_env: DPOP_NONCE_KEY, nonce_lifetime: 1s }\n";
    let yaml = config(&jwks, &echo, "").replacen("auth:\n", nonces, 1);
    let env = [("DPOP_NONCE_KEY", NONCE_KEY)];
    let one = Gateway::start_with_env(&env, &yaml);
    let two = Gateway::start_with_env(&env, &yaml);
    let alice = client_key();
    let bound = token(&issuer, Some(&alice));
    // The same URI at both instances (they differ only by port).
    let host = "api.test";
    let url = format!("http://{host}/api/x");
    let send = |gw: &Gateway, p: &str| {
        gw.get(
            "/api/x",
            &[
                ("host", host),
                ("authorization", &format!("DPoP {bound}")),
                ("dpop", p),
            ],
        )
    };

    // RFC 9449 §9: no nonce → 401 use_dpop_nonce with one; the retry with it passes, and
    // the answer carries the nonce for the next proof.
    let r = send(&one, &proof(&alice, "GET", &url, &bound));
    let nonce = assert_nonce_asked(&r, "no nonce");
    assert_eq!(echo.count(), 0, "refused requests never reach the upstream");
    let r = send(
        &one,
        &proof_with_nonce(&alice, "GET", &url, &bound, Some(&nonce)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("dpop-nonce").is_some(),
        "a success carries the next nonce"
    );
    assert_eq!(r.upstream_header("dpop"), None);
    // Another instance with the same key takes the nonce the first one issued: nothing is
    // kept per process.
    let r = send(
        &two,
        &proof_with_nonce(&alice, "GET", &url, &bound, Some(&nonce)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A nonce never issued.
    let r = send(
        &one,
        &proof_with_nonce(&alice, "GET", &url, &bound, Some("made-up")),
    );
    assert_nonce_asked(&r, "a made-up nonce");
    // An old nonce: once the gateway has issued two newer ones, the first is refused.
    let mut seen = vec![nonce.clone()];
    wait_for(
        "two newer nonces",
        std::time::Duration::from_secs(10),
        || {
            let r = send(&one, &proof(&alice, "GET", &url, &bound));
            let n = assert_nonce_asked(&r, "no nonce");
            if !seen.contains(&n) {
                seen.push(n);
            }
            (seen.len() >= 3).then_some(())
        },
    );
    let r = send(
        &one,
        &proof_with_nonce(&alice, "GET", &url, &bound, Some(&nonce)),
    );
    assert_nonce_asked(&r, "an old nonce");
    assert!(one.metric("tollgate_dpop_proofs_total", &[("result", "nonce")]) >= 3.0);
}

#[test]
fn with_a_public_origin_a_proof_names_it_whatever_host_the_request_carries() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    let origins = "auth:\n  dpop: { public_origins: [\"https://API.example.com:443\"] }\n";
    let gw = Gateway::start(&config(&jwks, &echo, "").replacen("auth:\n", origins, 1));
    let alice = client_key();
    let bound = token(&issuer, Some(&alice));
    let send = |host: &str, p: &str| {
        gw.get(
            "/api/x",
            &[
                ("host", host),
                ("authorization", &format!("DPoP {bound}")),
                ("dpop", p),
            ],
        )
    };
    // The route has no host: before, a proof made for another site that routes here (an
    // unused one, taken from that site's client) passed once when sent with its Host.
    let elsewhere = proof(&alice, "GET", "https://other.example/api/x", &bound);
    assert_proof_refused(
        &send("other.example", &elsewhere),
        "a proof for another origin",
    );
    let own_host = proof(&alice, "GET", &gw.url("/api/x"), &bound);
    assert_proof_refused(
        &send(&format!("127.0.0.1:{}", gw.port), &own_host),
        "the request's own host",
    );
    // The public origin passes, whatever Host came (a proxy in front may rewrite it).
    let p = proof(&alice, "GET", "https://api.example.com/api/x", &bound);
    assert_eq!(send("internal.lb", &p).status, 200);
}

#[test]
fn check_warns_about_a_dpop_route_without_host_or_public_origin() {
    let issuer = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&issuer]);
    let echo = Echo::start("e1");
    let yaml = format!(
        "listen: {{ http: \"127.0.0.1:1\" }}\nmetrics: {{ listen: \"127.0.0.1:2\" }}\n{}",
        config(&jwks, &echo, "")
    );
    let (code, _, err) = tollgate_check(&yaml);
    assert_eq!(code, 0, "{err}");
    for route in [0, 1] {
        assert!(
            err.contains(&format!(
                "warning: routes[{route}]: takes DPoP proofs but has no host"
            )),
            "{err}"
        );
    }
    let fixed = yaml.replacen(
        "auth:\n",
        "auth:\n  dpop: { public_origins: [\"https://api.example.com\"] }\n",
        1,
    );
    let (code, _, err) = tollgate_check(&fixed);
    assert_eq!((code, err.as_str()), (0, ""));
    // explain says which origin proofs must name, and whether a nonce is needed.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.yaml");
    std::fs::write(&conf, &fixed).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["explain", "-c", conf.to_str().unwrap(), "--path", "/api"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("dpop:    proofs name https://api.example.com; nonce off"),
        "{out}"
    );
    // nonce: on without a key shared by the fleet is refused.
    let (code, _, err) =
        tollgate_check(&yaml.replacen("auth:\n", "auth:\n  dpop: { nonce: on }\n", 1));
    assert_eq!(code, 1);
    assert!(
        err.contains("auth.dpop.nonce_secret_env: nonce: on needs the environment variable"),
        "{err}"
    );
}
