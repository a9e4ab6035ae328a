//! The read-only admin view on the metrics listener: what a running gateway holds (its
//! config, routes, backends, keys, deny list) as JSON, never a secret, and nothing in it
//! can change state.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

const REDIS_PASSWORD: &str = "hunter2-the-redis-password";
const HMAC: &str = "an hmac secret that is at least thirty-two bytes long";

fn admin(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = request(
        &format!("http://127.0.0.1:{}{path}", gw.metrics_port),
        "GET",
        headers,
    );
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn the_admin_view_shows_config_routes_backends_keys_and_revocations_without_a_secret() {
    let key = TestKey::es256("kid-1");
    let (dir, jwks) = jwks_file(&[&key]);
    let revoked = dir.path().join("revoked.jsonl");
    std::fs::write(
        &revoked,
        "{\"jti\": \"gone\"}\n{\"sub\": \"bob\", \"revoked_before\": 1}\n",
    )
    .unwrap();
    let remote = JwksServer::start(&crate::common::jwks(&[&key]));
    let remote_url = remote.url();
    let up = Echo::start("up");
    let mut down = Echo::start("down");
    let gw = Gateway::start_with_env(
        &[("ADMIN_TEST_HMAC", HMAC)],
        &format!(
            "auth:
  providers:
    - {{ name: main, issuer: \"https://main.test\", audiences: any, jwks_file: \"{}\" }}
    - {{ name: shared, issuer: \"https://hmac.test\", audiences: any, hmac_secret_env: ADMIN_TEST_HMAC }}
    - {{ name: remote, issuer: \"https://remote.test\", audiences: any, jwks_uri: \"{}\", refresh: {{ interval: 10m }} }}
  revocation: {{ file: \"{}\" }}
rate_limiting:
  redis: {{ url: \"redis://:{REDIS_PASSWORD}@127.0.0.1:1/\", on_store_error: allow }}
upstreams:
  pool:
    backends: [{{ addr: \"{}\" }}, {{ addr: \"{}\" }}]
    health_check: {{ type: tcp, interval: 100ms }}
routes:
  - {{ name: api, path: /api, upstream: pool, providers: [main] }}
",
            jwks.display(),
            remote.url(),
            revoked.display(),
            up.addr(),
            down.addr()
        ),
    );
    let mut seen = String::new();
    let (status, config) = admin(&gw, "/admin/config", &[]);
    assert_eq!(status, 200);
    assert_eq!(config["generation"], 1);
    assert_eq!(config["sha256"].as_str().map(str::len), Some(64));
    assert_eq!(
        config["config"]["rate_limiting"]["redis"]["url"],
        "redis://[redacted]@127.0.0.1:1/"
    );
    assert_eq!(
        config["config"]["auth"]["providers"][1]["hmac_secret_env"],
        "ADMIN_TEST_HMAC"
    );
    seen.push_str(&config.to_string());

    let (status, routes) = admin(&gw, "/admin/routes", &[]);
    assert_eq!(status, 200);
    assert_eq!(routes["routes"][0]["name"], "api");
    assert_eq!(routes["routes"][0]["providers"], json!(["main"]));
    assert_eq!(
        routes["routes"][0]["upstreams"],
        json!([{"name": "pool", "weight": 1, "conditional": false}])
    );
    seen.push_str(&routes.to_string());

    let (status, keys) = admin(&gw, "/admin/keys", &[]);
    assert_eq!(status, 200);
    let main = &keys["providers"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(
        main["keys"],
        json!([{"kid": "kid-1", "alg": "ES256", "kty": "EC"}])
    );
    assert_eq!(main["ready"], true);
    assert_eq!(
        keys["providers"][1]["source"]["hmac_secret_env"],
        "ADMIN_TEST_HMAC"
    );
    assert_eq!(keys["providers"][1]["keys"][0]["kty"], "oct");
    // A jwks_uri provider says when it fetches next: within its refresh interval (or the
    // answer's max-age, clamped to 1 min .. 1 h).
    let remote = &keys["providers"][2];
    assert_eq!(remote["source"]["jwks_uri"], remote_url);
    let next = remote["next_refresh_unix"].as_u64().expect("scheduled") as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now + 50..=now + 3_601).contains(&next), "{next} vs {now}");
    assert_eq!(
        main["next_refresh_unix"],
        Value::Null,
        "a file is watched, not fetched"
    );
    seen.push_str(&keys.to_string());

    let (status, revocations) = admin(&gw, "/admin/revocations", &[]);
    assert_eq!(status, 200);
    assert_eq!(revocations["deny_list"]["jtis"], 1);
    assert_eq!(revocations["deny_list"]["subjects"], 1);
    assert_eq!(revocations["deny_list"]["ready"], true);
    seen.push_str(&revocations.to_string());

    // A backend that goes down shows as unhealthy once its checks fail.
    down.stop();
    let upstreams = wait_for(
        "the stopped backend marked unhealthy",
        Duration::from_secs(10),
        || {
            let (_, u) = admin(&gw, "/admin/upstreams", &[]);
            let backends = u["upstreams"][0]["backends"].as_array()?.clone();
            let healthy: Vec<bool> = backends
                .iter()
                .map(|b| b["healthy"].as_bool().unwrap())
                .collect();
            (healthy == [true, false]).then_some(u)
        },
    );
    let backend = &upstreams["upstreams"][0]["backends"][0];
    assert_eq!(backend["addr"], up.addr().as_str());
    for field in [
        "in_flight",
        "ejected",
        "ejected_for_ms",
        "ewma_ms",
        "consecutive_failures",
    ] {
        assert!(!backend[field].is_null(), "{field} in {backend}");
    }
    seen.push_str(&upstreams.to_string());

    // No secret anywhere, and no private key member.
    for secret in [REDIS_PASSWORD, HMAC, "\"d\":"] {
        assert!(!seen.contains(secret), "{secret} shown");
    }
    // Read-only, and nothing else there.
    let r = request(
        &format!("http://127.0.0.1:{}/admin/config", gw.metrics_port),
        "POST",
        &[],
    );
    assert_eq!(r.status, 405);
    assert_eq!(admin(&gw, "/admin/nothing", &[]).0, 404);
    // A reload is a new generation.
    gw.reload_file(&std::fs::read_to_string(gw.conf_path()).unwrap());
    wait_for("generation 2", Duration::from_secs(10), || {
        (admin(&gw, "/admin/config", &[]).1["generation"] == 2).then_some(())
    });
}

#[test]
fn with_a_bearer_file_every_admin_request_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "an-admin-token-of-at-least-thirty-two-bytes";
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let echo = Echo::start("E");
    let gw = Gateway::start(&format!(
        "upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: open, path: /, upstream: echo, auth: none }}
",
        echo.addr()
    ));
    // Open to loopback by default; the token set by a reload, without a restart.
    assert_eq!(admin(&gw, "/admin/routes", &[]).0, 200);
    let listen = format!("metrics: {{ listen: \"127.0.0.1:{}\" }}", gw.metrics_port);
    let text = std::fs::read_to_string(gw.conf_path()).unwrap();
    assert!(text.contains(&listen), "{text}");
    gw.reload_file(&text.replace(
        &listen,
        &format!(
            "metrics: {{ listen: \"127.0.0.1:{}\", admin: {{ bearer_file: \"{}\" }} }}",
            gw.metrics_port,
            file.display()
        ),
    ));
    wait_for("the admin token in force", Duration::from_secs(10), || {
        (admin(&gw, "/admin/routes", &[]).0 == 401).then_some(())
    });
    assert_eq!(
        admin(&gw, "/admin/routes", &[("authorization", "Bearer wrong")]).0,
        401
    );
    let (status, body) = admin(
        &gw,
        "/admin/routes",
        &[("authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(status, 200);
    assert_eq!(body["routes"][0]["name"], "open");
    // The metrics themselves stay open to the scraper.
    assert_eq!(admin(&gw, "/metrics", &[]).0, 200);
}
