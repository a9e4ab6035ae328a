//! JWT authentication through the real proxy: verdicts and their answers, identity headers,
//! spoofing, key rotation through a JWKS endpoint on loopback, and single-flight refetch.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

const ISS: &str = "https://issuer.test";
const AUD: &str = "api://tests";

fn claims(sub: &str) -> serde_json::Value {
    json!({ "iss": ISS, "aud": AUD, "sub": sub, "roles": ["reader", "writer"],
            "realm_access": { "roles": ["admin"] }, "tenant": "acme" })
}

/// A gateway whose `main` provider reads keys from `key_source` (a YAML fragment).
fn gateway(echo: &Echo, key_source: &str, extra_routes: &str) -> Gateway {
    Gateway::start(&config(echo, key_source, extra_routes))
}

/// The config of [`gateway`], without its listeners.
fn config(echo: &Echo, key_source: &str, extra_routes: &str) -> String {
    format!(
        "auth:
  providers:
    - name: main
      issuer: \"{ISS}\"
      audiences: [\"{AUD}\"]
      leeway: 0s
{key_source}
  forward_claims:
    - {{ claim: sub, header: X-Auth-Subject }}
    - {{ claim: roles, header: X-Auth-Roles }}
    - {{ claim: realm_access.roles, header: X-Auth-Realm-Roles }}
    - {{ claim: \"https://example.com/roles\", header: X-Auth-Ns-Roles }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, upstream: echo }}
  - {{ name: open, path: /open, upstream: echo, auth: none }}
  - {{ name: maybe, path: /maybe, upstream: echo, auth: optional }}
  - {{ name: keep, path: /keep, upstream: echo, keep_authorization: true }}
{extra_routes}",
        echo.addr()
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn file_gateway(echo: &Echo, keys: &[&TestKey]) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(keys)).unwrap();
    let source = format!(
        "      jwks_file: \"{}\"\n      refresh: {{ file_poll: 50ms }}",
        path.display()
    );
    (gateway(echo, &source, ""), dir)
}

#[test]
fn valid_token_reaches_the_upstream_with_identity_headers() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (gw, _dir) = file_gateway(&echo, &[&key]);
    let token = key.sign(claims("alice"));
    let r = gw.get("/api/me", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.upstream_header("x-auth-roles").as_deref(),
        Some(r#""reader", "writer""#)
    );
    assert_eq!(
        r.upstream_header("x-auth-realm-roles").as_deref(),
        Some(r#""admin""#)
    );
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the token is not forwarded"
    );

    // The scheme is case-insensitive; a second request is a cache hit.
    let hits = gw.metric("tollgate_token_cache_total", &[("result", "hit")]);
    let r = gw.get("/api/me", &[("authorization", &format!("bEARer {token}"))]);
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.metric("tollgate_token_cache_total", &[("result", "hit")]),
        hits + 1.0
    );

    let r = gw.get("/keep", &[("authorization", &bearer(&token))]);
    assert_eq!(
        r.upstream_header("authorization"),
        Some(bearer(&token)),
        "keep_authorization"
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[("provider", "main"), ("result", "allow")]
        ),
        3.0
    );
}

#[test]
fn refusals_answer_401_with_reason_and_challenge() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let stranger = TestKey::es256("k1");
    let (gw, _dir) = file_gateway(&echo, &[&key]);
    let expect = |headers: &[(&str, &str)], reason: &str, presented: bool| {
        let r = gw.get("/api/x", headers);
        assert_eq!(r.status, 401, "{reason}: {}", r.body);
        assert_eq!(r.json()["reason"], reason);
        assert_eq!(r.json()["error"], "unauthorized");
        let challenge = r.header("www-authenticate").unwrap();
        if presented {
            assert_eq!(
                challenge,
                format!("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{reason}\"")
            );
        } else {
            assert_eq!(challenge, "Bearer realm=\"tollgate\"");
        }
        assert!(
            !r.body.contains("eyJ"),
            "no token material in the answer: {}",
            r.body
        );
    };
    expect(&[], "missing", false);

    let good = key.sign(claims("alice"));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{flipped}{}", &sig[1..]);
    expect(&[("authorization", &bearer(&tampered))], "signature", true);
    // A replayed forgery is refused from the forged-token cache, with the same answer.
    let forged_hits = gw.metric("tollgate_token_cache_total", &[("result", "forged")]);
    expect(&[("authorization", &bearer(&tampered))], "signature", true);
    assert_eq!(
        gw.metric("tollgate_token_cache_total", &[("result", "forged")]),
        forged_hits + 1.0
    );

    let expired = key.sign(
        json!({ "iss": ISS, "aud": AUD, "sub": "a", "exp": 1_000_000_000, "iat": 999_999_000 }),
    );
    expect(&[("authorization", &bearer(&expired))], "expired", true);

    let wrong_aud = key.sign(json!({ "iss": ISS, "aud": "api://other", "sub": "a" }));
    expect(&[("authorization", &bearer(&wrong_aud))], "audience", true);

    let other_iss = key.sign(json!({ "iss": "https://evil.test", "aud": AUD, "sub": "a" }));
    expect(&[("authorization", &bearer(&other_iss))], "issuer", true);

    // Same kid, different key: the signature decides.
    let forged = stranger.sign(claims("alice"));
    expect(&[("authorization", &bearer(&forged))], "signature", true);

    expect(&[("authorization", "Bearer not-a-jwt")], "malformed", true);

    let r = gw.get(
        "/api/x",
        &[("authorization", &bearer(&good)), ("x-token", "y")],
    );
    assert_eq!(r.status, 200, "an unrelated header is not a second token");
    let r = raw_request(
        gw.port,
        &format!(
            "GET /api/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"
        ),
    )
    .unwrap();
    assert_eq!(r.status, 400, "two tokens are refused (RFC 6750 §2)");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_request\""));

    assert!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[("result", "deny"), ("reason", "signature")]
        ) >= 2.0
    );
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (gw, _dir) = file_gateway(&echo, &[&key]);
    let spoof = [("x-auth-subject", "mallory"), ("X-Auth-Roles", "admin")];

    let r = gw.get("/open", &spoof);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject"),
        None,
        "removed on auth: none routes too"
    );
    assert_eq!(r.upstream_header("x-auth-roles"), None);

    let r = gw.get("/maybe", &spoof);
    assert_eq!(
        r.status, 200,
        "optional auth lets anonymous requests through"
    );
    assert_eq!(r.upstream_header("x-auth-subject"), None);

    let token = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "alice" }));
    let mut headers = spoof.to_vec();
    let auth = bearer(&token);
    headers.push(("authorization", &auth));
    let r = gw.get("/api/x", &headers);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    assert_eq!(
        r.upstream_header("x-auth-roles"),
        None,
        "a claim the token lacks is not forwarded"
    );

    let r = gw.get("/maybe", &[("authorization", "Bearer bad.token.here")]);
    assert_eq!(r.status, 401, "optional auth still refuses a bad token");
}

#[test]
fn jwks_file_changes_are_picked_up() {
    let echo = Echo::start("E");
    let old = TestKey::es256("old");
    let new = TestKey::es256("new");
    let (gw, dir) = file_gateway(&echo, &[&old]);
    let new_token = new.sign(claims("bob"));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&new_token))])
            .status,
        401
    );
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&new])).unwrap();
    wait_for("the new key file", Duration::from_secs(10), || {
        (gw.get("/api", &[("authorization", &bearer(&new_token))])
            .status
            == 200)
            .then_some(())
    });
    let old_token = old.sign(claims("alice"));
    let r = gw.get("/api", &[("authorization", &bearer(&old_token))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
}

fn uri_source(server: &JwksServer, refresh: &str) -> String {
    format!(
        "      jwks_uri: \"{}\"\n      refresh: {refresh}",
        server.url()
    )
}

#[test]
fn jwks_rotation_is_followed() {
    let echo = Echo::start("E");
    let a = TestKey::es256("a");
    let b = TestKey::es256("b");
    let server = JwksServer::start(&jwks(&[&a]));
    // A long interval: only unknown kids make the gateway refetch here.
    let gw = gateway(
        &echo,
        &uri_source(&server, "{ interval: 1h, unknown_kid_cooldown: 30s }"),
        "",
    );
    assert_eq!(server.fetches(), 1, "keys are fetched before ready");
    let token_a = a.sign(claims("alice"));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&token_a))])
            .status,
        200
    );

    // The issuer rotates: b in, a out. A token with the new kid triggers a refetch.
    server.set(&jwks(&[&b]));
    let token_b = b.sign(claims("bob"));
    let r = gw.get("/api", &[("authorization", &bearer(&token_b))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(server.fetches(), 2);

    // a's token was cached as verified; its key has left the set, so it is refused now.
    let r = gw.get("/api", &[("authorization", &bearer(&token_a))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("unknown_kid"))
    );
    assert_eq!(
        server.fetches(),
        2,
        "within the cooldown, no second refetch"
    );
    assert_eq!(
        gw.metric("tollgate_jwks_keys", &[("provider", "main")]),
        1.0
    );
}

#[test]
fn jwks_server_down_keeps_the_last_good_keys() {
    let echo = Echo::start("E");
    let a = TestKey::es256("a");
    let server = JwksServer::start(&jwks(&[&a]));
    let gw = gateway(
        &echo,
        &uri_source(&server, "{ interval: 100ms, min_interval: 100ms }"),
        "",
    );
    let token = a.sign(claims("alice"));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&token))]).status,
        200
    );
    server.set_down(true);
    wait_for("a failed refresh", Duration::from_secs(10), || {
        (gw.metric(
            "tollgate_jwks_fetch_total",
            &[("provider", "main"), ("result", "error")],
        ) >= 2.0)
            .then_some(())
    });
    // A new token (not cached) still verifies against the last good keys.
    let fresh = a.sign(claims("carol"));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&fresh))]).status,
        200
    );
    assert_eq!(
        gw.metric("tollgate_jwks_keys", &[("provider", "main")]),
        1.0
    );
    server.set_down(false);
    let before = gw.metric(
        "tollgate_jwks_fetch_total",
        &[("provider", "main"), ("result", "success")],
    );
    wait_for("recovery", Duration::from_secs(10), || {
        (gw.metric(
            "tollgate_jwks_fetch_total",
            &[("provider", "main"), ("result", "success")],
        ) > before)
            .then_some(())
    });
}

#[test]
fn concurrent_unknown_kids_cause_exactly_one_refetch() {
    let echo = Echo::start("E");
    let a = TestKey::es256("a");
    let c = TestKey::es256("c");
    let server = JwksServer::start(&jwks(&[&a]));
    let gw = gateway(&echo, &uri_source(&server, "{ interval: 1h }"), "");
    assert_eq!(server.fetches(), 1);
    server.set(&jwks(&[&a, &c]));
    let url = gw.url("/api/concurrent");
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|i| {
            let token = c.sign(claims(&format!("user-{i}")));
            let url = url.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                request(&url, "GET", &[("authorization", &bearer(&token))]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        server.fetches(),
        2,
        "one initial fetch and exactly one refetch"
    );
}

#[test]
fn hmac_secret_from_environment_and_bad_key_config_is_refused() {
    let echo = Echo::start("E");
    // A provider whose secret variable is not set is refused at load, before binding.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.yaml");
    std::fs::write(
        &conf,
        format!(
            "auth:\n  providers:\n    - {{ name: h, issuer: x, audiences: any, hmac_secret_env: TOLLGATE_TEST_UNSET_SECRET }}\n\
             upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, path: /, upstream: e }}\n",
            echo.addr()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "auth.providers[0]: environment variable TOLLGATE_TEST_UNSET_SECRET is not set"
        ),
        "{stderr}"
    );

    // With the variable set (in the gateway's environment only), its value is the secret:
    // tokens signed with it pass, tokens signed with another secret do not.
    use tollgate_jwt::{sign, Algorithm, SigningKey};
    let secret = "an environment secret of at least 32 bytes";
    let gw = Gateway::start_with_env(
        &[("TOLLGATE_TEST_ENV_SECRET", secret)],
        &format!(
            "auth:\n  providers:\n    - {{ name: h, issuer: \"{ISS}\", audiences: [\"{AUD}\"], hmac_secret_env: TOLLGATE_TEST_ENV_SECRET }}\n  \
             forward_claims:\n    - {{ claim: sub, header: X-Auth-Subject }}\n\
             upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:\n  - {{ name: r, path: /, upstream: e }}\n",
            echo.addr()
        ),
    );
    let mut c = claims("henry");
    c["exp"] = json!(4_000_000_000u64);
    let with = |key: &[u8]| {
        sign(
            Algorithm::HS256,
            None,
            &c,
            &SigningKey::hmac(key, Algorithm::HS256).unwrap(),
        )
        .unwrap()
    };
    let r = gw.get(
        "/x",
        &[("authorization", &bearer(&with(secret.as_bytes())))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("henry")
    );
    let r = gw.get(
        "/x",
        &[(
            "authorization",
            &bearer(&with(b"another secret of at least 32 bytes!")),
        )],
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn token_headers_and_query_parameters_are_not_forwarded() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (_dir, path) = jwks_file(&[&key]);
    let gw = gateway(
        &echo,
        &format!(
            "      jwks_file: \"{}\"\n      token_sources: [bearer, \"header:X-Token\", \"query:access_token\"]",
            path.display()
        ),
        "",
    );
    let token = key.sign(claims("alice"));
    let r = gw.get(&format!("/api/q?a=1&access_token={token}&b=2"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["query"],
        "a=1&b=2",
        "the token parameter is removed, the rest kept"
    );
    let r = gw.get(&format!("/api/q?access_token={token}"), &[]);
    assert_eq!(r.json()["query"], serde_json::Value::Null);
    let r = gw.get("/api/h", &[("x-token", &token)]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-token"),
        None,
        "the token header is removed"
    );
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
}

#[test]
fn forwarded_arrays_are_unambiguous_and_dotted_claim_names_are_found() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (gw, _dir) = file_gateway(&echo, &[&key]);
    let token = key.sign(json!({
        "iss": ISS, "aud": AUD, "sub": "alice",
        "roles": ["a,admin", "say \"hi\"", "back\\slash"],
        "https://example.com/roles": ["ns-reader"],
    }));
    let r = gw.get("/api", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.body);
    // One role containing a comma stays one quoted string; quotes and backslashes are escaped.
    assert_eq!(
        r.upstream_header("x-auth-roles").as_deref(),
        Some(r#""a,admin", "say \"hi\"", "back\\slash""#)
    );
    // A claim whose name contains dots is found by the same lookup as RBAC uses.
    assert_eq!(
        r.upstream_header("x-auth-ns-roles").as_deref(),
        Some(r#""ns-reader""#)
    );
}

#[test]
fn token_types_refuse_tokens_of_another_type() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (_dir, path) = jwks_file(&[&key]);
    let source = |types: &str| {
        format!(
            "      jwks_file: \"{}\"\n      token_types: {types}",
            path.display()
        )
    };
    // The test keys sign with `typ: JWT`.
    let token = key.sign(claims("alice"));
    let gw = gateway(&echo, &source("[at+jwt]"), "");
    let r = gw.get("/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("typ")),
        "{}",
        r.body
    );
    assert_eq!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[("provider", "main"), ("result", "deny"), ("reason", "typ")]
        ),
        1.0
    );
    drop(gw);
    let gw = gateway(&echo, &source("[at+jwt, application/jwt]"), "");
    let r = gw.get("/api", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn symmetric_keys_from_a_jwks_uri_are_never_used() {
    use tollgate_jwt::{codec::b64url_encode, sign, Algorithm, SigningKey};
    let echo = Echo::start("E");
    let es = TestKey::es256("es");
    let secret = [42u8; 32];
    let mut doc: serde_json::Value = serde_json::from_str(&jwks(&[&es])).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "kty": "oct", "kid": "h", "alg": "HS256", "k": b64url_encode(&secret) }));
    let doc = doc.to_string();
    let mut hs_claims = claims("mallory");
    hs_claims["exp"] = json!(4_000_000_000u64);
    let hs_token = sign(
        Algorithm::HS256,
        Some("h"),
        &hs_claims,
        &SigningKey::hmac(&secret, Algorithm::HS256).unwrap(),
    )
    .unwrap();

    // From a URL: the oct key is skipped, so the HS256 token finds no key.
    let server = JwksServer::start(&doc);
    let gw = gateway(&echo, &uri_source(&server, "{ interval: 1h }"), "");
    let r = gw.get("/api", &[("authorization", &bearer(&hs_token))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("unknown_kid")),
        "{}",
        r.body
    );
    assert_eq!(
        gw.metric("tollgate_jwks_keys", &[("provider", "main")]),
        1.0
    );
    let r = gw.get(
        "/api",
        &[("authorization", &bearer(&es.sign(claims("alice"))))],
    );
    assert_eq!(
        r.status, 200,
        "the rest of the document is used: {}",
        r.body
    );
    assert!(
        gw.proc
            .log_text()
            .contains("symmetric (oct) keys in a jwks_uri document are never used"),
        "the skipped key is logged"
    );
    drop(gw);

    // The same document from a local file is trusted with its secret (the control case).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, &doc).unwrap();
    let gw = gateway(
        &echo,
        &format!("      jwks_file: \"{}\"", path.display()),
        "",
    );
    let r = gw.get("/api", &[("authorization", &bearer(&hs_token))]);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `tollgate token revoke` with `args`, as an operator runs it.
fn revoke(args: &[&str]) -> String {
    let out = run_ok(
        std::process::Command::new(BIN)
            .args(["token", "revoke"])
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap()
}

fn revocation_gateway(echo: &Echo, key: &TestKey, source: &str) -> Gateway {
    // `auth.revocation` follows the provider's key source, back at the `auth` level.
    gateway(
        echo,
        &format!(
            "      jwks: {}\n  revocation:\n{source}\n    poll: 50ms",
            jwks(&[key])
        ),
        "",
    )
}

/// Waits until `token` gets `status`, and returns that answer.
fn until_status(gw: &Gateway, token: &str, status: u16) -> Reply {
    wait_for("the deny list to apply", Duration::from_secs(10), || {
        let r = gw.get("/api/x", &[("authorization", &bearer(token))]);
        (r.status == status).then_some(r)
    })
}

#[test]
fn a_revoked_jti_and_a_revoked_subject_get_401_revoked_even_from_the_token_cache() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked.jsonl");
    std::fs::write(&list, "# deny list\n").unwrap();
    let gw = revocation_gateway(&echo, &key, &format!("    file: \"{}\"", list.display()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = claims("alice");
    c["jti"] = json!("tok-1");
    let by_jti = key.sign(c);
    let mut c = claims("bob");
    c["iat"] = json!(now - 100);
    let old_bob = key.sign(c);
    let mut c = claims("bob");
    c["iat"] = json!(now);
    let new_bob = key.sign(c);
    // Accepted first, so each sits in the verified-token cache.
    for t in [&by_jti, &old_bob, &new_bob] {
        let r = gw.get("/api/x", &[("authorization", &bearer(t))]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let hits_before = gw.metric("tollgate_token_cache_total", &[("result", "hit")]);

    let line = revoke(&["--jti", "tok-1", "--file", list.to_str().unwrap()]);
    assert_eq!(line.trim(), r#"{"jti":"tok-1"}"#);
    let r = until_status(&gw, &by_jti, 401);
    assert_eq!(r.json()["reason"], "revoked", "{}", r.body);
    assert_eq!(r.json()["error"], "unauthorized", "{}", r.body);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    // The refusal came from the cached verdict: the list is checked after the cache.
    assert!(gw.metric("tollgate_token_cache_total", &[("result", "hit")]) > hits_before);

    revoke(&[
        "--sub",
        "bob",
        "--before",
        &(now - 50).to_string(),
        "--file",
        list.to_str().unwrap(),
    ]);
    let r = until_status(&gw, &old_bob, 401);
    assert_eq!(r.json()["reason"], "revoked");
    // Issued after the subject's revocation time: still good. A revoked answer never
    // reached the upstream; this one does.
    let r = gw.get("/api/x", &[("authorization", &bearer(&new_bob))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("authorization"), None);

    assert_eq!(
        gw.metric("tollgate_revocation_entries", &[("kind", "jti")]),
        1.0
    );
    assert_eq!(
        gw.metric("tollgate_revocation_entries", &[("kind", "sub")]),
        1.0
    );
    assert!(gw.metric("tollgate_revocation_hits_total", &[("kind", "jti")]) >= 1.0);
    assert!(gw.metric("tollgate_revocation_hits_total", &[("kind", "sub")]) >= 1.0);
    assert!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[
                ("provider", "main"),
                ("result", "deny"),
                ("reason", "revoked")
            ]
        ) >= 2.0
    );

    // A broken rewrite keeps the last good list in force, and is counted.
    let errors = gw.metric("tollgate_revocation_reloads_total", &[("result", "error")]);
    std::fs::write(&list, "{\"jti\": \n").unwrap();
    wait_for("the bad list to be read", Duration::from_secs(10), || {
        (gw.metric("tollgate_revocation_reloads_total", &[("result", "error")]) > errors)
            .then_some(())
    });
    let r = gw.get("/api/x", &[("authorization", &bearer(&by_jti))]);
    assert_eq!(r.status, 401, "{}", r.body);
    // Emptied: the tokens are good again.
    std::fs::write(&list, "").unwrap();
    until_status(&gw, &by_jti, 200);
    until_status(&gw, &old_bob, 200);
}

/// One Redis command with binary-safe arguments (RESP), its reply's first line.
fn redis_cmd(port: u16, args: &[&[u8]]) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_redis_deny_list_is_polled_and_gates_readiness_until_first_read() {
    let mut redis = RedisServer::start();
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    revoke(&[
        "--jti",
        "early",
        "--redis",
        &redis.url(),
        "--key",
        "t:revoked",
    ]);
    let gw = revocation_gateway(
        &echo,
        &key,
        &format!(
            "    redis: {{ url: \"{}\", key: \"t:revoked\" }}",
            redis.url()
        ),
    );
    // Ready only once the list was read: the entry written before the start applies at once.
    let mut c = claims("alice");
    c["jti"] = json!("early");
    let early = key.sign(c);
    let r = gw.get("/api/x", &[("authorization", &bearer(&early))]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["reason"], "revoked");

    // Members that are not entries (a newline inside, not UTF-8) are left out and counted;
    // an entry added after them still takes effect (found by an attacker's review: one bad
    // member used to freeze the list).
    redis_cmd(
        redis.port,
        &[b"SADD", b"t:revoked", b"{\"jti\":\n\"x\"}", b"\xff\xfe"],
    );
    let mut c = claims("carol");
    c["jti"] = json!("later");
    let later = key.sign(c);
    assert_eq!(
        gw.get("/api/x", &[("authorization", &bearer(&later))])
            .status,
        200
    );
    revoke(&[
        "--jti",
        "later",
        "--redis",
        &redis.url(),
        "--key",
        "t:revoked",
    ]);
    let r = until_status(&gw, &later, 401);
    assert_eq!(r.json()["reason"], "revoked");
    assert!(gw.metric("tollgate_revocation_reloads_total", &[("result", "error")]) >= 1.0);

    // Redis down: the last list stays in force and the failure is counted.
    redis.stop();
    let errors = gw.metric("tollgate_revocation_reloads_total", &[("result", "error")]);
    wait_for("a failed poll", Duration::from_secs(10), || {
        (gw.metric("tollgate_revocation_reloads_total", &[("result", "error")]) > errors)
            .then_some(())
    });
    let r = gw.get("/api/x", &[("authorization", &bearer(&later))]);
    assert_eq!(r.status, 401, "{}", r.body);

    // Back empty (no persistence): the version went back, so nothing is lifted; an entry
    // written now is added to those held.
    redis.restart();
    let mut c = claims("dave");
    c["jti"] = json!("after-restart");
    let after = key.sign(c);
    revoke(&[
        "--jti",
        "after-restart",
        "--redis",
        &redis.url(),
        "--key",
        "t:revoked",
    ]);
    until_status(&gw, &after, 401);
    for t in [&early, &later] {
        let r = gw.get("/api/x", &[("authorization", &bearer(t))]);
        assert_eq!(r.status, 401, "{}", r.body);
    }
}

#[test]
fn with_redis_down_since_start_verified_tokens_get_503_not_an_unchecked_pass() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.stop();
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let port = free_port();
    let metrics = free_port();
    std::fs::write(
        &path,
        format!(
            "listen: {{ http: \"127.0.0.1:{port}\" }}
metrics: {{ listen: \"127.0.0.1:{metrics}\" }}
auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: [\"{AUD}\"], jwks: {} }}
  revocation: {{ redis: {{ url: \"{url}\" }}, poll: 50ms }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, upstream: echo }}
",
            jwks(&[&key]),
            echo.addr()
        ),
    )
    .unwrap();
    let _gw = Proc::spawn(
        &["run", "-c", path.to_str().unwrap()],
        dir.path().join("gateway.log"),
        &[],
    );
    let token = key.sign(claims("alice"));
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    wait_for("the proxy listener", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // Not ready, but a client that sends anyway is refused, not let through unchecked.
    let r = request(&url("/api/x"), "GET", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "revocation_unavailable", "{}", r.body);
    assert_eq!(
        request(&format!("http://127.0.0.1:{metrics}/readyz"), "GET", &[]).status,
        503
    );
    redis.restart();
    wait_for("the list to be read", Duration::from_secs(20), || {
        let r = request(&url("/api/x"), "GET", &[("authorization", &bearer(&token))]);
        (r.status == 200).then_some(())
    });
}

const DISCOVERY: &str = "/.well-known/openid-configuration";

/// A discovery document naming `jwks_path` on `server` and signing algorithms `algs`.
fn discovery_doc(server: &JwksServer, issuer: &str, jwks_path: &str, algs: &[&str]) -> String {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("http://127.0.0.1:{}{jwks_path}", server.port),
        "id_token_signing_alg_values_supported": algs,
        "response_types_supported": ["code"],
    })
    .to_string()
}

#[test]
fn oidc_discovery_finds_the_keys_follows_the_document_and_refuses_another_issuers() {
    let echo = Echo::start("E");
    let (a, b) = (TestKey::es256("a"), TestKey::es256("b"));
    let server = JwksServer::start("not served");
    server.set_path("/a/jwks", &jwks(&[&a]));
    server.set_path("/b/jwks", &jwks(&[&b]));
    server.set_path(
        DISCOVERY,
        &discovery_doc(&server, ISS, "/a/jwks", &["ES256", "none"]),
    );
    let source = format!(
        "      discovery: \"http://127.0.0.1:{}{DISCOVERY}\"\n      refresh: {{ interval: 100ms }}",
        server.port
    );
    let gw = gateway(&echo, &source, "");
    let mut n = 0;
    let mut fresh = |key: &TestKey| {
        n += 1;
        bearer(&key.sign(claims(&format!("user{n}"))))
    };
    let r = gw.get("/api", &[("authorization", &fresh(&a))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("user1")
    );

    // The provider stops listing ES256: its ES256 tokens are refused, though the key fits.
    server.set_path(
        DISCOVERY,
        &discovery_doc(&server, ISS, "/a/jwks", &["RS256"]),
    );
    wait_for("the narrowed algorithms", Duration::from_secs(10), || {
        let r = gw.get("/api", &[("authorization", &fresh(&a))]);
        (r.status == 401 && r.json()["reason"] == "alg").then_some(())
    });

    // The provider moves its keys: the document is read again and the new jwks_uri followed.
    server.set_path(
        DISCOVERY,
        &discovery_doc(&server, ISS, "/b/jwks", &["ES256"]),
    );
    wait_for("the moved key set", Duration::from_secs(10), || {
        (gw.get("/api", &[("authorization", &fresh(&b))]).status == 200).then_some(())
    });
    let r = gw.get("/api", &[("authorization", &fresh(&a))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("unknown_kid"))
    );

    // A document for another issuer is refused; the last good keys stay (stale on error).
    let errors = || {
        gw.metric(
            "tollgate_oidc_discovery_fetch_total",
            &[("provider", "main"), ("result", "error")],
        )
    };
    assert_eq!(errors(), 0.0);
    server.set_path(
        DISCOVERY,
        &discovery_doc(&server, "https://evil.test", "/a/jwks", &["ES256"]),
    );
    wait_for("the refused document", Duration::from_secs(10), || {
        (errors() >= 2.0).then_some(())
    });
    assert_eq!(gw.get("/api", &[("authorization", &fresh(&b))]).status, 200);
    let r = gw.get("/api", &[("authorization", &fresh(&a))]);
    assert_eq!(
        r.status, 401,
        "the other issuer's jwks_uri was not followed"
    );
    let log = gw.proc.log_text();
    assert!(
        log.lines().any(|l| l.contains("evil.test")
            && l.contains("is not the provider's issuer")
            && l.contains("keeping the last good keys")),
        "{log}"
    );

    // A gateway starting against that document never becomes ready.
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let conf = dir.path().join("gateway.yaml");
    std::fs::write(
        &conf,
        format!(
            "listen: {{ http: \"127.0.0.1:{}\" }}\nmetrics: {{ listen: \"127.0.0.1:{metrics_port}\" }}\n\
             server: {{ threads: 1, grace_period: 1s, graceful_shutdown_timeout: 1s }}\n{}",
            free_port(),
            config(&echo, &source, "")
        ),
    )
    .unwrap();
    let mut refused = Proc::spawn(
        &["run", "-c", conf.to_str().unwrap()],
        dir.path().join("gateway.log"),
        &[],
    );
    wait_for("the refusal at start", Duration::from_secs(10), || {
        assert!(!refused.exited(), "{}", refused.log_text());
        refused
            .log_text()
            .contains("is not the provider's issuer")
            .then_some(())
    });
    let ready = raw_request(
        metrics_port,
        "GET /readyz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert!(
        ready.as_ref().map_or(true, |r| r.status != 200),
        "not ready without keys"
    );
    refused.kill();
}

#[test]
fn claims_the_upstream_would_read_differently_are_left_out_and_counted() {
    // Issue 22 (5): these reached the upstream as they were, and an RFC 9110 parser reads
    // `alice` for `alice\t`, the address without its spaces, and bytes that only look like
    // `admin`.
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (gw, _dir) = file_gateway(&echo, &[&key]);
    for (sub, why) in [
        ("alice\t", "a trailing tab"),
        (" alice ", "surrounding spaces"),
        ("\u{430}dmin", "a Cyrillic a"),
        ("al\u{ef}ce@x", "non-ASCII"),
    ] {
        let token = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": sub, "roles": ["reader"] }));
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(r.status, 200, "{why}: {}", r.body);
        assert_eq!(r.upstream_header("x-auth-subject"), None, "{why}");
        // Other claims of the same token still go.
        assert_eq!(
            r.upstream_header("x-auth-roles").as_deref(),
            Some("\"reader\""),
            "{why}"
        );
    }
    assert_eq!(
        gw.metric(
            "tollgate_claims_not_forwarded_total",
            &[("header", "x-auth-subject")]
        ),
        4.0
    );
    let token = key.sign(json!({ "iss": ISS, "aud": AUD, "sub": "Alice Smith" }));
    let r = gw.get("/api", &[("authorization", &bearer(&token))]);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("Alice Smith"),
        "inner spaces read back the same"
    );
}

#[test]
fn a_token_cookie_is_removed_from_what_the_upstream_gets_and_other_cookies_stay() {
    // Issue 22 (2): with `token_sources: [cookie:at]`, the caller's JWT reached the upstream
    // in its Cookie header.
    let echo = Echo::start("E");
    let key = TestKey::es256("k1");
    let (_dir, path) = jwks_file(&[&key]);
    let gw = gateway(
        &echo,
        &format!(
            "      jwks_file: \"{}\"\n      token_sources: [bearer, \"cookie:at\"]",
            path.display()
        ),
        "",
    );
    let token = key.sign(claims("alice"));
    let r = gw.get(
        "/api",
        &[("cookie", &format!("theme=dark; at={token}; lang=en"))],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("cookie").as_deref(),
        Some("theme=dark; lang=en")
    );
    let r = gw.get("/api", &[("cookie", &format!("at={token}"))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("cookie"), None, "nothing left to send");
}

#[test]
fn a_change_of_keys_is_logged_once_with_the_kids_added_and_retired() {
    // Issue 22 (10): key changes were visible only in metrics.
    let echo = Echo::start("E");
    let old = TestKey::es256("old-kid");
    let new = TestKey::es256("new-kid");
    let (gw, dir) = file_gateway(&echo, &[&old]);
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&new])).unwrap();
    let token = new.sign(claims("bob"));
    wait_for("the new key file", Duration::from_secs(10), || {
        (gw.get("/api", &[("authorization", &bearer(&token))]).status == 200).then_some(())
    });
    let line = wait_for("the key change in the log", Duration::from_secs(10), || {
        gw.proc
            .log_text()
            .lines()
            .find(|l| l.contains("provider keys changed") && l.contains("new-kid"))
            .map(str::to_owned)
    });
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "INFO");
    assert_eq!(line["provider"], "main");
    assert_eq!(line["added"], "new-kid");
    assert_eq!(line["removed"], "old-kid");
    let changes = gw
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("provider keys changed") && l.contains("new-kid"))
        .count();
    assert_eq!(changes, 1, "logged once");
}

#[test]
fn requests_waiting_on_a_slow_key_refetch_never_starve_local_signature_checks() {
    // Issue 22 (3): 260 tokens with unknown kids while a `jwks_uri` refetch took 5 s held
    // every signature-check place for the refetch's length: valid uncached JWTs of another
    // client went to 0/124 answered. Waiters now give their place up while they wait.
    let echo = Echo::start("E");
    let a = TestKey::es256("a");
    let stranger = TestKey::es256("unknown-kid");
    let server = JwksServer::start(&jwks(&[&a]));
    let gw = gateway(
        &echo,
        &uri_source(
            &server,
            "{ interval: 1h, unknown_kid_cooldown: 30s, timeout: 10s }",
        ),
        "",
    );
    server.set_delay(3000);
    let flood: Vec<std::net::TcpStream> = (0..300)
        .map(|i| {
            use std::io::Write;
            let token = stranger.sign(claims(&format!("mallory-{i}")));
            // From three addresses: one client may hold 256 connections.
            let mut s = connect_from(&format!("127.0.0.{}", 2 + i % 3), gw.port);
            write!(
                s,
                "GET /api/x HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    wait_for(
        "the flood waiting on the refetch",
        Duration::from_secs(10),
        || {
            (server.fetches() >= 2
                && gw.metric("tollgate_token_cache_total", &[("result", "miss")]) >= 250.0)
                .then_some(())
        },
    );
    for i in 0..50 {
        let token = a.sign(claims(&format!("valid-{i}")));
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(
            r.status, 200,
            "valid token {i} during the refetch: {}",
            r.body
        );
    }
    drop(flood);
    assert_eq!(
        gw.metric(
            "tollgate_preauth_refusals_total",
            &[("reason", "verification_budget")]
        ),
        0.0
    );
}
