//! deploy/: what operators apply must match what the gateway exports. Every metric that the
//! Prometheus rules name is scraped from a running gateway that has each kind of series
//! (a `jwks_uri` provider, a health-checked upstream, a Redis limit, a refused reload).

use crate::common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// The metric families an expression file names: `tollgate_…` identifiers, with the
/// histogram suffixes folded into their family (recording rules, `tollgate:…`, excluded).
fn families_named_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("tollgate_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // Skip parts of other identifiers and of recording-rule names (`tollgate:x_tollgate_`).
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            let name = &text[start..end];
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(family.to_owned());
        }
        i = end;
    }
    out
}

/// Waits until a scrape of `gw` holds every family in `named` (some appear with their first
/// sample); panics naming the ones still missing after 10 s.
fn assert_exported(gw: &Gateway, named: &BTreeSet<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = gw.scrape();
        let families: BTreeSet<&str> = scrape
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let missing: Vec<&String> = named
            .iter()
            .filter(|f| !families.contains(f.as_str()))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not exported: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_metric_the_prometheus_rules_name_is_exported() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/tollgate-rules.yaml"
    ))
    .unwrap();
    let named = families_named_in(&rules);
    assert!(named.len() >= 8, "{named:?}");

    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let jwks_server = JwksServer::start(&jwks(&[&key]));
    let redis = RedisServer::start();
    let yaml = format!(
        "auth:\n  providers:\n    - {{ name: idp, issuer: \"https://i.test\", audiences: any, jwks_uri: \"{}\" }}\n\
         rate_limiting:\n  redis: {{ url: \"{}\", on_store_error: local }}\n\
         upstreams:\n  e:\n    backends: [{{ addr: \"{}\" }}]\n    health_check: {{ type: tcp, interval: 100ms }}\n\
         routes:\n  - name: api\n    path: /\n    upstream: e\n    rate_limits:\n      - {{ name: fleet, key: route, rate: 100/s, store: redis }}\n",
        jwks_server.url(),
        redis.url(),
        echo.addr()
    );
    // With the HTTPS listener, whose certificate and handshake series the rules name.
    let pki = crate::tls::Pki::new("Test CA");
    let cert = pki.server("api", &["api.test"]);
    let gw = Gateway::start_with_tls(&format!("{{ {} }}", cert.certificates()), &yaml);
    assert_eq!(gw.get("/", &[]).status, 401);
    gw.reload("routes: [{ name: broken, path: /, upstream: nowhere }]\n");
    assert_exported(&gw, &named);
}

#[test]
fn the_family_reader_finds_names_and_folds_histogram_suffixes() {
    let text = "rate(tollgate_a_total[5m]) / x:tollgate_no tollgate:rec histogram_quantile(0.9, \
                tollgate_d_seconds_bucket) tollgate_d_seconds_count";
    let names: Vec<String> = families_named_in(text).into_iter().collect();
    assert_eq!(names, ["tollgate_a_total", "tollgate_d_seconds"]);
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/tollgate-dashboard.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let queries: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut named = families_named_in(&queries.join("\n"));
    // The process collector's series are named process_*, not tollgate_*.
    named.insert("process_resident_memory_bytes".into());
    named.insert("process_open_fds".into());

    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let jwks_server = JwksServer::start(&jwks(&[&key]));
    let redis = RedisServer::start();
    let gw = Gateway::start_with_http(
        "{ max_connections_per_client: 3 }",
        &format!(
        "auth:\n  failed_auth_limit: {{ rate: 1/min, burst: 1 }}\n  providers:\n    - {{ name: idp, issuer: \"https://i.test\", audiences: any, jwks_uri: \"{}\" }}\n\
         policies:\n  p:\n    allow: [{{ roles: [admin] }}]\n\
         rate_limiting:\n  redis: {{ url: \"{}\", on_store_error: local }}\n\
         upstreams:\n  e:\n    backends: [{{ addr: \"{}\" }}]\n    health_check: {{ type: tcp, interval: 100ms }}\n\
         routes:\n  - name: api\n    path: /\n    upstream: e\n    policy: p\n    rate_limits:\n      - {{ name: fleet, key: route, rate: 100/s, store: redis }}\n",
        jwks_server.url(),
        redis.url(),
        echo.addr()
    ),
    );
    // One of each kind of traffic: allowed, refused by RBAC, refused without a token, forged,
    // and a request with a bad Host (a bad request).
    let admin =
        key.sign(serde_json::json!({ "iss": "https://i.test", "sub": "a", "roles": ["admin"] }));
    let reader = key.sign(serde_json::json!({ "iss": "https://i.test", "sub": "r" }));
    let forger = TestKey::es256("k");
    let forged = |sub: &str| {
        let t = forger.sign(serde_json::json!({ "iss": "https://i.test", "sub": sub }));
        format!("Bearer {t}")
    };
    assert_eq!(
        gw.get("/", &[("authorization", &format!("Bearer {admin}"))])
            .status,
        200
    );
    assert_eq!(
        gw.get("/", &[("authorization", &format!("Bearer {reader}"))])
            .status,
        403
    );
    assert_eq!(gw.get("/", &[]).status, 401);
    // Two failures spend the failed-auth burst; the third forgery is braked before checking.
    assert_eq!(gw.get("/", &[("authorization", &forged("f1"))]).status, 401);
    assert_eq!(gw.get("/", &[("authorization", &forged("f2"))]).status, 401);
    assert_eq!(gw.get("/", &[("authorization", &forged("f3"))]).status, 429);
    // Past the per-client connection cap (3): 503 at accept.
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap())
        .collect();
    // The refusal is counted at accept; the client may see a reset instead of the 503 (the
    // gateway closes with the request unread), so the counter is what is waited for.
    wait_for(
        "the connection cap to refuse",
        Duration::from_secs(5),
        || {
            let _ = raw_request(
                gw.port,
                "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
            (gw.metric("tollgate_connections_refused_total", &[("limit", "client")]) >= 1.0)
                .then_some(())
        },
    );
    drop(held);
    // A malformed Host (once the held connections are released): a bad request.
    wait_for("a 400 for a malformed Host", Duration::from_secs(5), || {
        let r = raw_request(
            gw.port,
            "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        );
        r.ok().filter(|r| r.status == 400).map(|_| ())
    });
    gw.reload("routes: [{ name: broken, path: /, upstream: nowhere }]\n");
    assert_exported(&gw, &named);
}
