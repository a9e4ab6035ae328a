//! `tollgate explain` and the proxy decide every request alike: both run the one pipeline,
//! explain in dry-run mode. Requests are enumerated (targets × methods × credentials), sent
//! raw to the real gateway, and given to `tollgate explain` with the same config; the
//! status and the error code of each must be the same.

use crate::common::*;
use serde_json::json;
use std::process::Command;

const ISS: &str = "https://issuer.test";

fn config(echo: &Echo, jwks_path: &std::path::Path) -> String {
    format!(
        "auth:
  failed_auth_limit: {{ rate: 1000/s, burst: 100000 }}
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
policies:
  orders:
    deny:
      - {{ claims: {{ suspended: true }} }}
    allow:
      - {{ roles: [admin] }}
      - {{ scopes: [orders:read], methods: [GET] }}
  admins:
    allow:
      - {{ roles: [admin] }}
upstreams:
  e: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: orders, path: /orders, upstream: e, policy: orders }}
  - {{ name: admin, path: /admin, path_match: exact, methods: [GET, POST], upstream: e, policy: admins }}
  - {{ name: public, path: /public, auth: none, methods: [GET], upstream: e }}
  - {{ name: optional, path: /opt, auth: optional, upstream: e }}
  - {{ name: vhost, host: a.test, path: /, auth: none, upstream: e }}
  - {{ name: lan, path: /lan, auth: none, upstream: e, ip_rules: {{ allow: [10.0.0.0/8] }} }}
  - {{ name: local, path: /local, upstream: e, policy: admins, ip_rules: {{ allow: [127.0.0.0/8] }} }}
  - name: limited
    path: /limited
    upstream: e
    rate_limits:
      - {{ name: roomy, key: client_ip, rate: 1000/s, burst: 100000, headers: true }}
",
        jwks_path.display(),
        echo.addr()
    )
}

/// `status error/detail`, as explain prints its verdict and as the proxy's JSON says it.
fn proxy_verdict(r: &Reply) -> String {
    let body = r.json();
    if r.status == 200 && body["server"].is_string() {
        return "allowed".into();
    }
    // Every refusal has a reason; a policy's or a limit's name follows it.
    let mut detail = format!("/{}", body["reason"].as_str().unwrap_or("?"));
    if let Some(name) = ["policy", "limit"].iter().find_map(|k| body[k].as_str()) {
        detail.push_str(&format!("/{name}"));
    }
    format!(
        "{} {}{detail}",
        r.status,
        body["error"].as_str().unwrap_or("?")
    )
}

fn explain_verdict(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("verdict: "))
        .unwrap_or_else(|| {
            panic!(
                "no verdict in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let verdict = match line.strip_prefix("refused (") {
        Some(rest) => rest.trim_end_matches(')').to_owned(),
        None => line.to_owned(),
    };
    // The exit status says the same as the verdict line.
    assert_eq!(
        out.status.code(),
        Some(if verdict == "allowed" { 0 } else { 1 }),
        "{text}"
    );
    verdict
}

#[test]
fn explain_and_the_proxy_agree_on_every_enumerated_request() {
    let echo = Echo::start("E");
    let key = TestKey::es256("k");
    let other = TestKey::es256("k");
    let (_dir, jwks_path) = jwks_file(&[&key]);
    let gw = Gateway::start(&config(&echo, &jwks_path));

    let sign = |k: &TestKey, extra: serde_json::Value| {
        let mut claims = json!({ "iss": ISS, "sub": "s", "exp": 4_000_000_000u64 });
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        format!("Bearer {}", k.sign(claims))
    };
    let reader = sign(&key, json!({ "scope": "orders:read" }));
    let admin = sign(&key, json!({ "roles": ["admin"] }));
    let suspended = sign(&key, json!({ "roles": ["admin"], "suspended": true }));
    let expired = sign(&key, json!({ "roles": ["admin"], "exp": 1_000_000_000u64 }));
    let forged = sign(&other, json!({ "roles": ["admin"] }));
    let credentials: Vec<(&str, Vec<&str>)> = vec![
        ("none", vec![]),
        ("reader", vec![&reader]),
        ("admin", vec![&admin]),
        ("suspended", vec![&suspended]),
        ("expired", vec![&expired]),
        ("forged", vec![&forged]),
        ("two tokens", vec![&reader, &admin]),
    ];
    let targets = [
        (None, "/orders"),
        (None, "/orders/1?x=1"),
        (None, "/admin"),
        (None, "/admin/"),
        (None, "/%61dmin"),
        (None, "//admin"),
        (None, "/x/../admin"),
        (None, "/public/a"),
        (None, "/opt"),
        (None, "/limited"),
        (None, "/nowhere"),
        (None, "/lan"),
        (None, "/local"),
        (Some("a.test"), "/anything"),
    ];
    let methods = ["GET", "POST", "DELETE", "get"];

    let own_host = format!("127.0.0.1:{}", gw.port);
    let mut compared = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (host, target) in targets {
        let host = host.unwrap_or(&own_host);
        for method in methods {
            for (who, tokens) in &credentials {
                let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
                for t in tokens {
                    raw.push_str(&format!("Authorization: {t}\r\n"));
                }
                raw.push_str("Connection: close\r\n\r\n");
                let reply = raw_request(gw.port, &raw).unwrap();
                let proxy = proxy_verdict(&reply);

                let mut cmd = Command::new(BIN);
                cmd.args(["explain", "-c", gw.conf_path().to_str().unwrap()])
                    .args(["--method", method, "--path", target, "--host", host])
                    .args(["--client", "127.0.0.1"]);
                for t in tokens {
                    cmd.args(["--header", &format!("Authorization: {t}")]);
                }
                let explain = explain_verdict(&cmd.output().unwrap());
                assert_eq!(
                    explain, proxy,
                    "{method} {target} (host {host}) with {who}: explain and proxy differ"
                );
                seen.insert(proxy);
                compared += 1;
            }
        }
    }
    assert!(compared >= 100, "{compared} requests");
    // The enumeration reaches every kind of decision, so agreement means something.
    for expected in [
        "allowed",
        "400 bad_request/method_case",
        "404 not_found/no_route",
        "405 method_not_allowed/method",
        "400 invalid_request/malformed",
        "401 unauthorized/missing",
        "401 unauthorized/expired",
        "401 unauthorized/signature",
        "403 forbidden/policy/orders",
        "403 forbidden/policy/admins",
        "403 forbidden/ip",
    ] {
        assert!(seen.contains(expected), "no {expected:?} among {seen:?}");
    }
}

#[test]
fn explain_reads_a_shared_limit_in_redis_without_spending_it() {
    let echo = Echo::start("E");
    let redis = RedisServer::start();
    let gw = Gateway::start(&format!(
        "rate_limiting:\n  redis: {{ url: \"{}\", timeout: 500ms, on_store_error: deny }}\n\
         upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - name: shared
    path: /
    auth: none
    upstream: e
    rate_limits:
      - {{ name: fleet, key: route, rate: 1/h, burst: 2, store: redis }}
",
        redis.url(),
        echo.addr()
    ));
    let explain = || {
        let out = Command::new(BIN)
            .args([
                "explain",
                "-c",
                gw.conf_path().to_str().unwrap(),
                "--path",
                "/",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (explain_verdict(&out), text)
    };
    for _ in 0..3 {
        let (verdict, text) = explain();
        assert_eq!(verdict, "allowed", "{text}");
        assert!(
            text.contains("limit:   fleet: allows (1 of 2 left; dry run"),
            "{text}"
        );
    }
    // The three dry runs spent nothing: the proxy still has both requests of the burst
    // (the first 200 comes once its Redis connection is up; refusals before that spend
    // nothing either, under `on_store_error: deny`).
    wait_for(
        "the proxy's first admitted request",
        std::time::Duration::from_secs(10),
        || (gw.get("/", &[]).status == 200).then_some(()),
    );
    let (verdict, text) = explain();
    assert_eq!(verdict, "allowed", "{text}");
    assert!(text.contains("fleet: allows (0 of 2 left"), "{text}");
    assert_eq!(gw.get("/", &[]).status, 200);
    assert_eq!(gw.get("/", &[]).status, 429);
    let (verdict, text) = explain();
    assert_eq!(verdict, "429 rate_limited/rate_limit/fleet", "{text}");
}

#[test]
fn explain_shows_the_upstream_a_verified_token_reaches_and_the_proxy_sends_it_there() {
    let beta = Echo::start("beta");
    let stable = Echo::start("stable");
    let key = TestKey::es256("k");
    let (dir, jwks_path) = jwks_file(&[&key]);
    let yaml = format!(
        "auth:
  providers:
    - {{ name: main, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
upstreams:
  beta: {{ backends: [{{ addr: \"{}\" }}] }}
  stable: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: api
    path: /
    upstreams: [{{ name: beta, when: {{ claim: {{ tenant: acme }} }} }}, {{ name: stable }}]
",
        jwks_path.display(),
        beta.addr(),
        stable.addr()
    );
    let gw = Gateway::start(&yaml);
    let conf = dir.path().join("explain.yaml");
    std::fs::write(&conf, &yaml).unwrap();
    let token = key.sign(json!({ "iss": ISS, "sub": "s", "tenant": "acme" }));
    let explain = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["explain", "-c", conf.to_str().unwrap(), "--path", "/x"])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = explain(&["--token", &token]);
    assert!(
        out.contains("route:   api -> upstream beta (upstreams[0].when holds)"),
        "{out}"
    );
    let r = gw.get("/x", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(r.server(), "beta", "the proxy agrees");
    let out = explain(&["--claims", r#"{"sub":"s","tenant":"other"}"#]);
    assert!(
        out.contains("route:   api -> upstream stable (no when holds; weighted split"),
        "{out}"
    );
    // A token that fails verification never reaches a claim-matched upstream.
    let forged = TestKey::es256("k").sign(json!({ "iss": ISS, "sub": "s", "tenant": "acme" }));
    let out = explain(&["--token", &forged]);
    assert!(
        out.contains("-> upstreams beta, stable (chosen after authorization, not reached)"),
        "{out}"
    );
    assert_eq!(beta.count(), 1);
}
