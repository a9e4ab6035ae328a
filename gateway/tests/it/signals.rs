//! Shared Signals (CAEP): a transmitter pushes a Security Event Token (RFC 8417, RFC 8935)
//! to the metrics listener, and the subject's tokens stop passing at once, in this process
//! and, through the Redis deny list, in the fleet; a forged, misdirected, replayed or
//! unauthenticated push changes nothing.

use crate::common::*;
use serde_json::{json, Value};

const ISS: &str = "https://idp.signals.test";
const TX: &str = "https://idp.signals.test/ssf";
const AUD: &str = "https://gateway.signals.test";
const BEARER: &str = "push-token-of-the-transmitter-0123456789";
const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A SET of `event` about `sub` (an `iss_sub` subject of the token issuer), at `at`.
fn set(tx: &TestKey, event: &str, sub: &str, at: u64, overrides: Value) -> String {
    let mut claims = json!({
        "iss": TX,
        "aud": AUD,
        "iat": at,
        "jti": format!("set-{}", JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "sub_id": {"format": "iss_sub", "iss": ISS, "sub": sub},
        "events": {event: {"event_timestamp": at}},
    });
    claims
        .as_object_mut()
        .unwrap()
        .extend(overrides.as_object().unwrap().clone());
    tx.sign_typed("secevent+jwt", claims)
}

/// Pushes `body` as RFC 8935 says (or as `bearer`/`content_type` say): status and body.
fn push(gw: &Gateway, body: &str, bearer: Option<&str>, content_type: &str) -> (u16, Value) {
    let mut req = ureq::post(&format!("http://127.0.0.1:{}/ssf/events", gw.metrics_port))
        .set("content-type", content_type);
    if let Some(b) = bearer {
        req = req.set("authorization", &format!("Bearer {b}"));
    }
    let r = match req.send_string(body) {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = r.status();
    let text = r.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn push_set(gw: &Gateway, body: &str) -> (u16, Value) {
    push(gw, body, Some(BEARER), "application/secevent+jwt")
}

fn config(
    idp_jwks: &std::path::Path,
    tx_jwks: &std::path::Path,
    echo: &Echo,
    extra: &str,
) -> String {
    format!(
        "auth:
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
  shared_signals:
    bearer_env: SSF_PUSH_TOKEN
    audience: \"{AUD}\"
    transmitters: [{{ issuer: \"{TX}\", jwks_file: \"{}\", subjects_of: [\"{ISS}\"] }}]
{extra}upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, upstream: echo }}
",
        idp_jwks.display(),
        tx_jwks.display(),
        echo.addr()
    )
}

#[test]
fn a_pushed_session_revoked_event_ends_the_subjects_tokens_at_once_and_forgeries_change_nothing() {
    let idp = TestKey::es256("idp");
    let tx = TestKey::es256("tx");
    let (_d1, idp_jwks) = jwks_file(&[&idp]);
    let (_d2, tx_jwks) = jwks_file(&[&tx]);
    let echo = Echo::start("E");
    let gw = Gateway::start_with_env(
        &[("SSF_PUSH_TOKEN", BEARER)],
        &config(&idp_jwks, &tx_jwks, &echo, ""),
    );
    let issued = now() - 10;
    let token = |sub: &str, iat: u64| idp.sign(json!({"iss": ISS, "sub": sub, "iat": iat}));
    let (alice, bob) = (token("alice", issued), token("bob", issued));
    let get = |t: &str| gw.get("/api", &[("authorization", &format!("Bearer {t}"))]);
    // Both pass, and are now in the verified-token cache.
    assert_eq!((get(&alice).status, get(&bob).status), (200, 200));

    // What must change nothing, each answered as RFC 8935 §2.3 says.
    let forger = TestKey::es256("tx");
    let cases = [
        ("no bearer token", 0, (401, Some("authentication_failed"))),
        (
            "a wrong bearer token",
            1,
            (401, Some("authentication_failed")),
        ),
        ("another media type", 2, (400, Some("invalid_request"))),
        ("a forged signature", 3, (400, Some("invalid_key"))),
        ("another audience", 4, (400, Some("invalid_audience"))),
        ("an unknown transmitter", 5, (400, Some("invalid_issuer"))),
        ("not typed secevent+jwt", 6, (400, Some("invalid_request"))),
        ("not a JWT", 7, (400, Some("invalid_request"))),
    ];
    for (what, case, expected) in cases {
        let event =
            |key: &TestKey, overrides: Value| set(key, SESSION_REVOKED, "alice", now(), overrides);
        let (status, body) = match case {
            0 => push(
                &gw,
                &event(&tx, json!({})),
                None,
                "application/secevent+jwt",
            ),
            1 => push(
                &gw,
                &event(&tx, json!({})),
                Some("not-the-token"),
                "application/secevent+jwt",
            ),
            2 => push(&gw, &event(&tx, json!({})), Some(BEARER), "application/jwt"),
            3 => push_set(&gw, &event(&forger, json!({}))),
            4 => push_set(&gw, &event(&tx, json!({"aud": "https://someone.else"}))),
            5 => push_set(&gw, &event(&tx, json!({"iss": "https://evil.test"}))),
            6 => push_set(
                &gw,
                &tx.sign_typed(
                    "JWT",
                    json!({"iss": TX, "aud": AUD, "jti": "x", "events": {}}),
                ),
            ),
            _ => push_set(&gw, "not a token"),
        };
        assert_eq!((status, body["err"].as_str()), expected, "{what}: {body}");
        assert_eq!(get(&alice).status, 200, "{what} revoked alice");
    }
    // A subject of an issuer this transmitter does not speak for: acknowledged, ignored.
    let elsewhere = set(
        &tx,
        SESSION_REVOKED,
        "alice",
        now(),
        json!({"sub_id": {"format": "iss_sub", "iss": "https://other.idp", "sub": "alice"}}),
    );
    assert_eq!(push_set(&gw, &elsewhere).0, 202);
    assert_eq!(get(&alice).status, 200);
    // A security event token is never an access token, even signed by the token issuer.
    let set_as_token = idp.sign_typed(
        "secevent+jwt",
        json!({"iss": ISS, "sub": "mallory", "exp": now() + 600, "events": {}}),
    );
    let r = get(&set_as_token);
    assert_eq!((r.status, r.json()["reason"].as_str()), (401, Some("typ")));
    // Without the bearer token, the answer comes before the body is read: a client that
    // sends a little and stalls holds nothing.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.metrics_port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(
            b"POST /ssf/events HTTP/1.1\r\nHost: m\r\nContent-Type: application/secevent+jwt\r\n\
              Authorization: Bearer wrong\r\nContent-Length: 100\r\n\r\nabc",
        )
        .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 401");
    }
    // Other event types are acknowledged and ignored.
    let other = set(
        &tx,
        "https://schemas.openid.net/secevent/caep/event-type/token-claims-change",
        "alice",
        now(),
        json!({}),
    );
    assert_eq!(push_set(&gw, &other).0, 202);
    assert_eq!(get(&alice).status, 200);

    // The real event: alice's cached token is refused on the very next request.
    let event = set(&tx, SESSION_REVOKED, "alice", now(), json!({}));
    assert_eq!(push_set(&gw, &event).0, 202);
    let r = get(&alice);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("revoked"))
    );
    assert_eq!(get(&bob).status, 200, "another subject");
    // A token alice gets after the event (a new login) passes.
    assert_eq!(get(&token("alice", now() + 1)).status, 200);
    // The same event again: acknowledged, nothing more.
    assert_eq!(push_set(&gw, &event).0, 202);
    let count = |event: &str, result: &str| {
        gw.metric(
            "tollgate_security_events_total",
            &[("event", event), ("result", result)],
        )
    };
    assert_eq!(count("session_revoked", "revoked"), 1.0);
    assert_eq!(count("session_revoked", "duplicate"), 1.0);
    assert_eq!(count("other", "ignored"), 1.0);
    assert_eq!(count("none", "unauthenticated"), 3.0);
    assert_eq!(count("session_revoked", "ignored"), 1.0);
    assert_eq!(gw.metric("tollgate_pushed_revocations", &[]), 1.0);
    // The endpoint takes pushes only.
    let r = raw_request(
        gw.metrics_port,
        "GET /ssf/events HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 405);
}

#[test]
fn with_the_deny_list_in_redis_a_pushed_event_reaches_every_instance() {
    let redis = RedisServer::start();
    let idp = TestKey::es256("idp");
    let tx = TestKey::es256("tx");
    let (_d1, idp_jwks) = jwks_file(&[&idp]);
    let (_d2, tx_jwks) = jwks_file(&[&tx]);
    let echo = Echo::start("E");
    let revocation = format!(
        "  revocation: {{ redis: {{ url: \"{}\" }}, poll: 100ms }}\n",
        redis.url()
    );
    let yaml = config(&idp_jwks, &tx_jwks, &echo, &revocation);
    let env = [("SSF_PUSH_TOKEN", BEARER)];
    let (one, two) = (
        Gateway::start_with_env(&env, &yaml),
        Gateway::start_with_env(&env, &yaml),
    );
    let carol = idp.sign(json!({"iss": ISS, "sub": "carol", "iat": now() - 10}));
    let get = |gw: &Gateway| gw.get("/api", &[("authorization", &format!("Bearer {carol}"))]);
    assert_eq!((get(&one).status, get(&two).status), (200, 200));
    // Pushed to one instance; the other reads it from the fleet's deny list.
    assert_eq!(
        push_set(&one, &set(&tx, SESSION_REVOKED, "carol", now(), json!({}))).0,
        202
    );
    assert_eq!(get(&one).status, 401);
    wait_for(
        "the other instance to refuse carol",
        std::time::Duration::from_secs(10),
        || (get(&two).status == 401).then_some(()),
    );
    assert!(redis.keys() >= 2, "the set and its version counter");
}
