//! Opaque tokens checked by introspection (RFC 7662), against a real HTTP introspection
//! server on 127.0.0.1 that checks the gateway's client credentials and counts its calls.

use crate::common::*;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ISS: &str = "https://idp.test";
/// `Basic base64("gw:s3cret/x")`, the secret form-encoded first (RFC 6749 §2.3.1).
const CLIENT: &str = "Basic Z3c6czNjcmV0JTJGeA==";

struct State {
    answers: Mutex<HashMap<String, serde_json::Value>>,
    calls: AtomicUsize,
    down: AtomicBool,
    delay_ms: AtomicU64,
    stop: AtomicBool,
}

/// Answers `POST /introspect` from its table (unknown tokens: `{"active": false}`), after
/// checking HTTP Basic client credentials; when down, closes connections unanswered.
struct IntrospectionServer {
    port: u16,
    state: Arc<State>,
}

impl IntrospectionServer {
    fn start() -> IntrospectionServer {
        let listener = listen_on_free_port();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            answers: Mutex::new(HashMap::new()),
            calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        IntrospectionServer { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/introspect", self.port)
    }

    fn answer(&self, token: &str, answer: serde_json::Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer);
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::Acquire)
    }
}

impl Drop for IntrospectionServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: std::net::TcpStream, s: &State) {
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if conn.read_exact(&mut body).is_err() {
        return;
    }
    s.calls.fetch_add(1, Ordering::AcqRel);
    if s.down.load(Ordering::Acquire) {
        return;
    }
    std::thread::sleep(Duration::from_millis(s.delay_ms.load(Ordering::Acquire)));
    let body = String::from_utf8_lossy(&body);
    let token = body
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .unwrap_or("")
        .to_owned();
    let (status, answer) = if token == "poison" {
        ("400 Bad Request", json!({"error": "invalid_request"}))
    } else if !head.starts_with("POST /introspect ")
        || header("authorization").as_deref() != Some(CLIENT)
        || header("content-type").as_deref() != Some("application/x-www-form-urlencoded")
    {
        ("401 Unauthorized", json!({"error": "invalid_client"}))
    } else {
        let known = s.answers.lock().unwrap().get(&token).cloned();
        ("200 OK", known.unwrap_or(json!({"active": false})))
    };
    let answer = answer.to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

fn config(server: &IntrospectionServer, jwks: &std::path::Path, echo: &Echo) -> String {
    format!(
        "auth:
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}, {{ claim: scope, header: X-Auth-Scope }}]
  providers:
    - {{ name: jwt, issuer: \"https://jwt.test\", audiences: any, jwks_file: \"{}\" }}
    - name: idp
      issuer: \"{ISS}\"
      audiences: any
      type: introspection
      introspection: {{ endpoint: \"{}\", client_id: gw, client_secret_env: TEST_INTROSPECTION_SECRET,
                       negative_cache_ttl: 30s, failure_threshold: 2, open_for: 1s, timeout: 1s }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, upstream: echo, providers: [jwt, idp] }}
",
        jwks.display(),
        server.url(),
        echo.addr()
    )
}

fn start(server: &IntrospectionServer, jwks: &std::path::Path, echo: &Echo) -> Gateway {
    Gateway::start_with_env(
        &[("TEST_INTROSPECTION_SECRET", "s3cret/x")],
        &config(server, jwks, echo),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_thousand_requests_with_one_opaque_token_make_one_call_and_its_claims_reach_the_upstream() {
    let server = IntrospectionServer::start();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    server.answer(
        "opaque-alice",
        json!({"active": true, "iss": ISS, "sub": "alice", "scope": "read write", "exp": exp}),
    );
    // Long enough that the first concurrent requests all wait on the one call.
    server.state.delay_ms.store(300, Ordering::Release);
    let key = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("e1");
    let gw = start(&server, &jwks, &echo);

    let ok = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..20 {
            scope.spawn(|| {
                for _ in 0..50 {
                    let r = gw.get("/api", &[("authorization", &bearer("opaque-alice"))]);
                    assert_eq!(r.status, 200, "{}", r.body);
                    assert_eq!(
                        r.upstream_header("x-auth-subject").as_deref(),
                        Some("alice")
                    );
                    assert_eq!(
                        r.upstream_header("x-auth-scope").as_deref(),
                        Some("read write")
                    );
                    assert_eq!(r.upstream_header("authorization"), None);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 1000);
    assert_eq!(
        server.calls(),
        1,
        "one introspection call for 1,000 requests"
    );
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "idp"), ("result", "active")]
        ),
        1.0
    );
    assert!(
        gw.metric(
            "tollgate_introspection_cache_total",
            &[("provider", "idp"), ("result", "hit")]
        ) >= 980.0
    );

    // A JWT on the same route is verified, not introspected.
    let jwt = key.sign(json!({"iss": "https://jwt.test", "sub": "bob"}));
    let r = gw.get("/api", &[("authorization", &bearer(&jwt))]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("bob"));
    // An answer naming another issuer, and one whose token has expired, are refused.
    server.answer(
        "opaque-foreign",
        json!({"active": true, "iss": "https://other.test", "sub": "eve", "exp": exp}),
    );
    server.answer(
        "opaque-expired",
        json!({"active": true, "sub": "old", "exp": exp - 7200}),
    );
    for (token, reason) in [("opaque-foreign", "issuer"), ("opaque-expired", "expired")] {
        let r = gw.get("/api", &[("authorization", &bearer(token))]);
        assert_eq!(r.status, 401, "{token}: {}", r.body);
        assert_eq!(r.json()["reason"], reason, "{token}");
    }
    assert_eq!(server.calls(), 3);
}

#[test]
fn inactive_tokens_are_refused_and_a_down_endpoint_fails_closed_until_it_answers_again() {
    let server = IntrospectionServer::start();
    server.answer(
        "opaque-bob",
        json!({"active": true, "sub": "bob", "exp": 4_000_000_000u64}),
    );
    let key = TestKey::es256("k1");
    let (_dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("e1");
    let gw = start(&server, &jwks, &echo);

    // Inactive (here: unknown to the server): 401, and the answer is remembered.
    for _ in 0..3 {
        let r = gw.get("/api", &[("authorization", &bearer("opaque-revoked"))]);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["reason"], "revoked");
        assert!(r.body.contains("not active"), "{}", r.body);
    }
    assert_eq!(server.calls(), 1);
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "idp"), ("result", "inactive")]
        ),
        1.0
    );

    // A token the endpoint refuses as a bad request is refused, and however often a client
    // sends it, the circuit stays closed for everyone else (failure_threshold is 2).
    for _ in 0..3 {
        let r = gw.get("/api", &[("authorization", &bearer("poison"))]);
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json()["reason"], "malformed");
    }
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "idp"), ("result", "circuit_open")]
        ),
        0.0
    );

    // Down: a token not yet cached is refused with 503, never let through.
    server.state.down.store(true, Ordering::Release);
    for _ in 0..2 {
        let r = gw.get("/api", &[("authorization", &bearer("opaque-bob"))]);
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["reason"], "introspection_unavailable");
        assert!(r.header("retry-after").is_some());
    }
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "idp"), ("result", "error")]
        ),
        2.0
    );
    // Two failures opened the circuit: the next request is refused without a call.
    let calls = server.calls();
    let r = gw.get("/api", &[("authorization", &bearer("opaque-bob"))]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(server.calls(), calls);
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "idp"), ("result", "circuit_open")]
        ),
        1.0
    );
    assert_eq!(echo.count(), 0);

    // Back up: once the circuit lets a call through, the token is accepted.
    server.state.down.store(false, Ordering::Release);
    wait_for("the circuit to close", Duration::from_secs(10), || {
        let r = gw.get("/api", &[("authorization", &bearer("opaque-bob"))]);
        assert!(r.status == 200 || r.status == 503, "{}", r.body);
        (r.status == 200).then_some(())
    });
    assert_eq!(echo.count(), 1);
}

/// A gateway on an introspection server that answers after `delay_ms`; `auth_extra`
/// (`auth:` entries, two-space indented lines) goes at the top of its `auth` section.
struct SlowEndpoint {
    server: IntrospectionServer,
    key: TestKey,
    gw: Gateway,
    _jwks: tempfile::TempDir,
    _echo: Echo,
}

fn slow_endpoint(delay_ms: u64, auth_extra: &str) -> SlowEndpoint {
    let server = IntrospectionServer::start();
    server.state.delay_ms.store(delay_ms, Ordering::Release);
    let key = TestKey::es256("k1");
    let (dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("e1");
    let gw = Gateway::start_with_env(
        &[("TEST_INTROSPECTION_SECRET", "s3cret/x")],
        &config(&server, &jwks, &echo).replace("auth:\n", &format!("auth:\n{auth_extra}")),
    );
    SlowEndpoint {
        server,
        key,
        gw,
        _jwks: dir,
        _echo: echo,
    }
}

/// Sends a GET with `token` on a new connection from `from`; the connection stays open
/// (returned) unless `close` says to drop it right after sending.
fn send_opaque(gw: &Gateway, from: &str, token: &str, close: bool) -> Option<std::net::TcpStream> {
    let mut s = connect_from(from, gw.port);
    let _ = write!(
        s,
        "GET /api/flood HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    if close {
        let _ = s.shutdown(std::net::Shutdown::Both);
        return None;
    }
    Some(s)
}

fn answer_of(mut s: std::net::TcpStream) -> Option<Reply> {
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    parse_reply(&out).ok()
}

#[test]
fn a_slow_introspection_endpoint_never_starves_local_signature_checks() {
    // Issue 22 (3): 300 random opaque tokens from one client, against an endpoint answering
    // in seconds, took every signature-check place (`max_verifications_in_flight: 256`):
    // valid uncached JWTs from another client went from 75/75 to 1/124 answered. Network
    // waits now have their own budget, per provider and per client, counted at admission.
    // Every field bound: a field left to `..` would be dropped (its server stopped) here.
    let SlowEndpoint {
        server,
        key,
        gw,
        _jwks,
        _echo,
    } = slow_endpoint(3000, "");

    // From two addresses, 150 connections each (a client may hold 256).
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let from = if i % 2 == 0 { "127.0.0.2" } else { "127.0.0.3" };
            send_opaque(&gw, from, &format!("opaque-flood-{i}"), false).unwrap()
        })
        .collect();
    wait_for(
        "the flood's calls at the endpoint",
        Duration::from_secs(10),
        || (server.calls() >= 1).then_some(()),
    );
    // While the flood waits: uncached JWTs of another client, each verified locally.
    for i in 0..50 {
        let token = key.sign(json!({ "iss": "https://jwt.test", "sub": format!("valid-{i}") }));
        let r = gw.get("/api", &[("authorization", &bearer(&token))]);
        assert_eq!(
            r.status, 200,
            "valid token {i} during the flood: {}",
            r.body
        );
    }
    let answers: Vec<Reply> = flood.into_iter().filter_map(answer_of).collect();
    let over = answers
        .iter()
        .filter(|r| r.status == 429 && r.json()["reason"] == "client_network_budget")
        .count();
    assert!(
        server.calls() <= 8,
        "{} calls: each client holds at most max_network_waits_per_client (4)",
        server.calls()
    );
    assert!(
        over >= 290,
        "{over} of 300 flood requests refused at admission"
    );
    assert!(
        answers.iter().all(|r| r.json()["reason"].is_string()),
        "every refusal says why"
    );
}

#[test]
fn a_request_whose_client_left_stops_holding_places_and_starts_no_call() {
    // Issue 22 (4): 3,000 distinct opaque tokens, each connection closed right after
    // sending: the endpoint still got 3,000 calls, and the gateway held 3,000 connections,
    // budget places and 6,026 descriptors for the endpoint's 5 s.
    // Budgets and brakes wide open: only the client's leaving limits the work here.
    // Every field bound: a field left to `..` would be dropped (its server stopped) here.
    let SlowEndpoint {
        server,
        key,
        gw,
        _jwks,
        _echo,
    } = slow_endpoint(
        3000,
        "  max_network_waits_in_flight: 10000\n  max_network_waits_per_client: 10000\n  failed_auth_limit: { rate: 10000/s, burst: 10000 }\n",
    );
    let pid = gw.proc.pid();
    let fds_before = open_fds(pid);
    for i in 0..300 {
        send_opaque(&gw, "127.0.0.2", &format!("opaque-gone-{i}"), true);
    }
    // Well within the endpoint's 3 s: nothing is held for the clients that left.
    let gone = wait_for(
        "every abandoned request noticed",
        Duration::from_secs(2),
        || {
            let gone = gw.metric("tollgate_clients_gone_total", &[]);
            (gone >= 300.0).then_some(gone)
        },
    );
    assert_eq!(gone, 300.0);
    assert_eq!(gw.metric("tollgate_auth_network_waits_in_flight", &[]), 0.0);
    let fds = open_fds(pid);
    assert!(
        fds <= fds_before + 20,
        "{fds} descriptors open, {fds_before} before the abandoned requests"
    );
    // A client can still be there when its call starts: the test's thread may be put
    // aside between writing a request and closing, while the gateway starts the call (24 of
    // 300 with the whole suite running on 2 cores; 0 to 3 alone). On a0baa6c all 300 start.
    assert!(
        server.calls() <= 100,
        "{} calls to the endpoint for 300 clients that had left",
        server.calls()
    );
    // A client that stays still gets its answer.
    let token = key.sign(json!({ "iss": "https://jwt.test", "sub": "stays" }));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&token))]).status,
        200
    );
}

#[test]
fn a_request_body_survives_a_wait_on_introspection() {
    // Found by the attacker review of issue 22: the client watch read the body of a POST
    // that waited on an introspection call, and the upstream got none of it.
    let SlowEndpoint {
        server,
        gw,
        _jwks,
        _echo,
        ..
    } = slow_endpoint(500, "");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    server.answer(
        "opaque-poster",
        json!({"active": true, "iss": ISS, "sub": "poster", "exp": exp}),
    );
    let r = raw_request(
        gw.port,
        "POST /api/orders HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer opaque-poster\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_bytes"], 5, "{}", r.body);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("poster")
    );
}

#[test]
fn a_client_that_starts_calls_and_leaves_is_held_to_its_failed_auth_limit() {
    // Found by the attacker review of issue 22: leaving freed the client's places at once
    // while its calls kept running at the identity provider, so one address kept ~190
    // calls there at once. Leaving mid-check now counts as a failed authentication.
    // Every field bound: a field left to `..` would be dropped (its server stopped) here.
    let SlowEndpoint {
        server,
        key,
        gw,
        _jwks,
        _echo,
    } = slow_endpoint(3000, "  failed_auth_limit: { rate: 1/min, burst: 3 }\n");
    for i in 0..20 {
        let s = send_opaque(&gw, "127.0.0.3", &format!("opaque-leaver-{i}"), false).unwrap();
        // Long enough for the call to start, then gone.
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
    }
    // A burst of 3, and a little room for a failure recorded just after the next arrival
    // on a loaded machine; on a0baa6c all 20 start.
    assert!(
        server.calls() <= 8,
        "{} calls started by one client that kept leaving",
        server.calls()
    );
    let r = answer_of(send_opaque(&gw, "127.0.0.3", "opaque-next", false).unwrap()).unwrap();
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (429, Some("failed_auth_limit"))
    );
    // Another client is not affected.
    let token = key.sign(json!({ "iss": "https://jwt.test", "sub": "other" }));
    assert_eq!(
        gw.get("/api", &[("authorization", &bearer(&token))]).status,
        200
    );
}
