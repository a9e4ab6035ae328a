//! RFC 9470 step-up: a route that needs a stronger or more recent login answers a token
//! without it 401 `insufficient_user_authentication`, saying what to ask the authorization
//! server for (`acr_values`, `max_age`), apart from `insufficient_scope`.

use crate::common::*;
use serde_json::json;
use std::process::Command;

const ISS: &str = "https://idp.step.test";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_weak_or_old_login_is_asked_to_step_up_and_a_strong_recent_one_passes() {
    let key = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("E");
    let gw = Gateway::start(&format!(
        "auth:
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}]
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
policies:
  payers: {{ allow: [{{ scopes: [payments] }}] }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: pay, path: /pay, upstream: echo, policy: payers, step_up: {{ acr: [phr, phrh], max_age: 5m }} }}
  - {{ name: open, path: /open, upstream: echo }}
",
        jwks.display(),
        echo.addr()
    ));
    let token = |claims: serde_json::Value| {
        let mut c = json!({"iss": ISS, "sub": "alice", "scope": "payments", "exp": now() + 600});
        c.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        key.sign(c)
    };
    let get = |path: &str, t: &str| gw.get(path, &[("authorization", &format!("Bearer {t}"))]);
    let recent = now() - 60;

    // A password login (acr) or none at all: asked for one of the route's acr values.
    for (claims, what) in [
        (json!({"acr": "pwd", "auth_time": recent}), "another acr"),
        (json!({"auth_time": recent}), "no acr"),
    ] {
        let r = get("/pay", &token(claims));
        assert_eq!(
            (r.status, r.json()["reason"].as_str()),
            (401, Some("step_up")),
            "{what}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                "Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\", \
                 error_description=\"a stronger authentication (acr) is required\", \
                 acr_values=\"phr phrh\", max_age=300"
            ),
            "{what}"
        );
    }
    // The right acr, but a login older than max_age (or no auth_time).
    for claims in [
        json!({"acr": "phr", "auth_time": now() - 3600}),
        json!({"acr": "phr"}),
    ] {
        let r = get("/pay", &token(claims));
        assert_eq!(r.status, 401);
        assert!(
            r.header("www-authenticate").unwrap().contains(
                "error_description=\"a more recent authentication (auth_time) is required\""
            ),
            "{:?}",
            r.header("www-authenticate")
        );
    }
    assert_eq!(echo.count(), 0, "no refused request reached the upstream");
    // A strong, recent login passes, as the caller it is.
    let r = get("/pay", &token(json!({"acr": "phrh", "auth_time": recent})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    // Step-up is not scope: a strong login without the scope is 403 insufficient_scope.
    let mut no_scope =
        json!({"iss": ISS, "sub": "bob", "exp": now() + 600, "acr": "phr", "auth_time": recent});
    let r = get("/pay", &key.sign(no_scope.take()));
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    // Other routes ask nothing of the login.
    assert_eq!(get("/open", &token(json!({}))).status, 200);
    assert_eq!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[
                ("provider", "idp"),
                ("result", "deny"),
                ("reason", "step_up")
            ]
        ),
        4.0
    );

    // explain says why, and what the client is asked for.
    let explain = |claims: &str| {
        let out = Command::new(BIN)
            .args([
                "explain",
                "-c",
                gw.conf_path().to_str().unwrap(),
                "--path",
                "/pay",
            ])
            .args(["--claims", claims])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(r#"{"sub": "a", "scope": "payments", "acr": "pwd"}"#);
    assert_eq!(code, Some(1), "{out}");
    for line in [
        "step_up: acr one of [phr, phrh], auth_time within 300s",
        "verdict: refused (401 unauthorized/step_up)",
        "www-authenticate: Bearer realm=\"tollgate\", error=\"insufficient_user_authentication\"",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    let claims =
        format!(r#"{{"sub": "a", "scope": "payments", "acr": "phr", "auth_time": {recent}}}"#);
    let (code, out) = explain(&claims);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_refuses_a_step_up_that_asks_nothing_or_cannot_be_sent_back() {
    let (code, _, err) = tollgate_check(
        "auth:
  providers:
    - { name: a, issuer: \"https://a\", audiences: any, jwks: { keys: [] } }
    - { name: k, issuer: \"keys\", type: api_key, api_keys: { file: keys.jsonl } }
upstreams:
  u: { backends: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - { name: r, path: /r, upstream: u, providers: [a], step_up: {} }
  - { name: s, path: /s, upstream: u, providers: [a], step_up: { acr: [\"two words\"], max_age: soon } }
  - { name: t, path: /t, upstream: u, auth: none, step_up: { acr: [x] } }
  - { name: o, path: /o, upstream: u, auth: optional, step_up: { acr: [x] } }
  - { name: k, path: /k, upstream: u, providers: [k], step_up: { acr: [x] } }
",
    );
    assert_eq!(code, 1, "{err}");
    for expected in [
        "routes[0].step_up: needs acr, max_age or both",
        "routes[1].step_up.acr[0]: must be non-empty visible ASCII, without spaces",
        "routes[1].step_up.max_age:",
        "routes[2].step_up: does not apply with auth: none",
        "routes[3].step_up: does not apply with auth: optional",
        "routes[4].providers[0]: provider \"k\" takes API keys, which carry no login",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
