//! RBAC and rate limits through the real proxy: 403 and 429 answers and their headers,
//! shadow mode, and a global limit shared by
//! two gateways through a real redis-server.

use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const ISS: &str = "https://issuer.test";

fn provider(key: &TestKey, dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[key])).unwrap();
    format!(
        "auth:\n  providers:\n    - {{ name: main, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}\n",
        path.display()
    )
}

fn token(key: &TestKey, sub: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({ "iss": ISS, "sub": sub });
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    format!("Bearer {}", key.sign(claims))
}

const POLICIES: &str = "policies:
  orders:
    deny:
      - { claims: { suspended: true } }
    allow:
      - { roles: [admin] }
      - { scopes: [orders:read], methods: [GET] }
      - { scopes: { all_of: [orders:write, orders:read] }, methods: [POST] }
  audit:
    mode: shadow
    allow:
      - { roles: [auditor] }
";

fn rbac_gateway(echo: &Echo, key: &TestKey, dir: &tempfile::TempDir) -> (Gateway, String) {
    let yaml = format!(
        "{}{POLICIES}upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - {{ name: orders, path: /orders, upstream: e, policy: orders }}
  - {{ name: audit, path: /audit, upstream: e, policy: audit }}
",
        provider(key, dir),
        echo.addr()
    );
    (Gateway::start(&yaml), yaml)
}

#[test]
fn rbac_denies_with_insufficient_scope_and_allows_by_rule() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = rbac_gateway(&echo, &key, &dir);

    let reader = token(&key, "r", json!({ "scope": "orders:read" }));
    assert_eq!(
        gw.get("/orders/1", &[("authorization", &reader)]).status,
        200
    );

    let r = request(&gw.url("/orders"), "POST", &[("authorization", &reader)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    assert_eq!(r.json()["policy"], "orders");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"orders:write orders:read\"")
    );

    let admin = token(&key, "a", json!({ "roles": ["admin"] }));
    assert_eq!(
        request(&gw.url("/orders"), "POST", &[("authorization", &admin)]).status,
        200
    );
    let suspended = token(&key, "s", json!({ "roles": ["admin"], "suspended": true }));
    let r = gw.get("/orders", &[("authorization", &suspended)]);
    assert_eq!(r.status, 403, "deny wins over allow");

    assert_eq!(
        gw.metric(
            "tollgate_rbac_decisions_total",
            &[("route", "orders"), ("decision", "deny")]
        ),
        2.0
    );
    assert_eq!(
        gw.metric(
            "tollgate_rbac_decisions_total",
            &[("route", "orders"), ("decision", "allow")]
        ),
        2.0
    );
}

#[test]
fn shadow_mode_counts_but_lets_through() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let (gw, _) = rbac_gateway(&echo, &key, &dir);
    let nobody = token(&key, "n", json!({}));
    assert_eq!(gw.get("/audit", &[("authorization", &nobody)]).status, 200);
    let auditor = token(&key, "a", json!({ "roles": ["auditor"] }));
    assert_eq!(gw.get("/audit", &[("authorization", &auditor)]).status, 200);
    let count = |d| {
        gw.metric(
            "tollgate_rbac_decisions_total",
            &[("route", "audit"), ("decision", d)],
        )
    };
    assert_eq!(
        (count("shadow_deny"), count("allow"), count("deny")),
        (1.0, 1.0, 0.0)
    );
}

#[test]
fn local_limit_refuses_after_the_burst_with_headers() {
    let echo = Echo::start("E");
    let gw = Gateway::start(&format!(
        "upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - name: limited
    path: /
    upstream: e
    rate_limits:
      - {{ name: per-ip, key: client_ip, rate: 1/min, burst: 5, headers: true }}
",
        echo.addr()
    ));
    for i in 0..5 {
        let r = gw.get("/", &[]);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=5;w=300"));
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-ip\";r={};t={}", 4 - i, 60 * (i + 1)).as_str())
        );
    }
    let r = gw.get("/", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.json()["limit"], "per-ip");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=5;w=300"));
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"per-ip\";r=0;t="));
    assert_eq!(
        gw.metric(
            "tollgate_ratelimit_decisions_total",
            &[("limit", "per-ip"), ("decision", "deny")]
        ),
        1.0
    );
}

#[test]
fn limits_key_on_claims_and_pick_rates_by_tier() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "{}upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - name: api
    path: /
    upstream: e
    rate_limits:
      - name: per-user
        rate: 1/min
        burst: 2
        tiers: {{ claim: plan, values: {{ pro: {{ rate: 1/min, burst: 4 }} }} }}
",
        provider(&key, &dir),
        echo.addr()
    ));
    let admitted = |bearer: &str| {
        (0..6)
            .filter(|_| gw.get("/", &[("authorization", bearer)]).status == 200)
            .count()
    };
    assert_eq!(
        admitted(&token(&key, "free-1", json!({ "plan": "free" }))),
        2
    );
    assert_eq!(
        admitted(&token(&key, "free-2", json!({}))),
        2,
        "each subject has its own bucket"
    );
    assert_eq!(
        admitted(&token(&key, "pro-1", json!({ "plan": "pro" }))),
        4,
        "the pro tier's burst"
    );
}

fn redis_gateway(echo: &Echo, redis: &RedisServer, on_error: &str, timeout: &str) -> Gateway {
    Gateway::start(&format!(
        "rate_limiting:\n  redis: {{ url: \"{}\", timeout: {timeout}, on_store_error: {on_error} }}\n\
         upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - name: global
    path: /
    upstream: e
    rate_limits:
      - {{ name: fleet, key: route, rate: 1/h, burst: 100, store: redis }}
",
        redis.url(),
        echo.addr()
    ))
}

/// Waits until the gateway's Redis connection works: one request consumes one unit.
fn wait_for_redis(gw: &Gateway) {
    wait_for(
        "the gateway's redis connection",
        Duration::from_secs(10),
        || {
            gw.get("/", &[]);
            (gw.metric(
                "tollgate_ratelimit_store_errors_total",
                &[("store", "redis")],
            ) == 0.0
                || gw.metric(
                    "tollgate_ratelimit_decisions_total",
                    &[("decision", "allow")],
                ) > 0.0)
                .then_some(())
        },
    );
}

#[test]
fn two_gateways_share_one_limit_through_redis() {
    let echo = Echo::start("E");
    let redis = RedisServer::start();
    let a = redis_gateway(&echo, &redis, "deny", "200ms");
    let b = redis_gateway(&echo, &redis, "deny", "200ms");
    // Both connected: a store error would be a 429 from `on_store_error: deny`.
    wait_for(
        "both gateways connected to redis",
        Duration::from_secs(10),
        || {
            let errors = |g: &Gateway| {
                g.metric(
                    "tollgate_ratelimit_store_errors_total",
                    &[("store", "redis")],
                )
            };
            let a_ok = a.get("/", &[]).status == 200 && errors(&a) == 0.0;
            let b_ok = b.get("/", &[]).status == 200 && errors(&b) == 0.0;
            (a_ok && b_ok).then_some(())
        },
    );
    // Two clients hammer the two gateways at once: 300 attempts against a shared burst of 100.
    let run = |gw: &Gateway| {
        let url = gw.url("/");
        std::thread::spawn(move || {
            (0..150)
                .filter(|_| request(&url, "GET", &[]).status == 200)
                .count()
        })
    };
    let (ta, tb) = (run(&a), run(&b));
    let admitted = ta.join().unwrap() + tb.join().unwrap();
    // Every admission, the warm-up's included, is one `allow` from the shared store (a store
    // error would have been a deny here).
    let allowed = |g: &Gateway| {
        g.metric(
            "tollgate_ratelimit_decisions_total",
            &[("decision", "allow")],
        )
    };
    let total = allowed(&a) + allowed(&b);
    assert!(
        admitted >= 50 && admitted as f64 <= total,
        "the hammering got {admitted} of {total} admissions"
    );
    assert!(
        (95.0..=105.0).contains(&total),
        "combined admitted {total} for a shared burst of 100"
    );
}

#[test]
fn redis_outage_follows_on_store_error_and_recovers() {
    let echo = Echo::start("E");
    let mut redis = RedisServer::start();
    let allow = redis_gateway(&echo, &redis, "allow", "50ms");
    let deny = redis_gateway(&echo, &redis, "deny", "50ms");
    wait_for_redis(&allow);
    wait_for_redis(&deny);
    redis.stop();
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(allow.get("/", &[]).status, 200, "on_store_error: allow");
        let s = deny.get("/", &[]).status;
        assert_eq!(s, 429, "on_store_error: deny");
        // Generous against the 50 ms check timeout: what must not happen is a stall.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "requests stalled: {:?}",
            started.elapsed()
        );
    }
    assert!(
        allow.metric(
            "tollgate_ratelimit_store_errors_total",
            &[("store", "redis")]
        ) >= 20.0
    );

    redis.restart();
    // `allow` admits with or without the store, so its recovery shows in the store itself: the
    // restarted server is empty, and only `allow` sends requests until it holds a key.
    assert_eq!(redis.keys(), 0);
    wait_for(
        "allow writes through redis again",
        Duration::from_secs(20),
        || {
            assert_eq!(allow.get("/", &[]).status, 200);
            (redis.keys() > 0).then_some(())
        },
    );
    wait_for("recovery through redis", Duration::from_secs(20), || {
        let before = deny.metric(
            "tollgate_ratelimit_store_errors_total",
            &[("store", "redis")],
        );
        let ok = deny.get("/", &[]).status == 200;
        let after = deny.metric(
            "tollgate_ratelimit_store_errors_total",
            &[("store", "redis")],
        );
        (ok && after == before).then_some(())
    });
}
