//! External authorization (`auth.ext_authz`) against a policy service of our own on
//! 127.0.0.1 (`policy_service.py`, Envoy ext_authz's HTTP protocol) that applies a real
//! rule: tenants by claim, writes by role. What the upstream and the service received are
//! the assertions; the service down, slow and failing shows fail-closed, the breaker and the
//! network budget.

use crate::common::*;
use serde_json::{json, Value};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const ISS: &str = "https://issuer.test";

/// The policy service, stopped on drop.
struct PolicyService {
    child: Option<Child>,
    port: u16,
}

impl PolicyService {
    fn start_on(port: u16) -> PolicyService {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/policy_service.py");
        let child = spawn_ready(
            Command::new("/usr/bin/python3")
                .arg(script)
                .arg(port.to_string()),
        );
        PolicyService {
            child: Some(child),
            port,
        }
    }

    fn control(&self, what: &str) -> Value {
        let r = request(
            &format!("http://127.0.0.1:{}/__control/{what}", self.port),
            "GET",
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    fn count(&self) -> u64 {
        self.control("count")["count"].as_u64().unwrap()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PolicyService {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Setup {
    gw: Gateway,
    echo: Echo,
    policy: PolicyService,
    key: TestKey,
    _dir: tempfile::TempDir,
}

fn setup(service_extra: &str) -> Setup {
    setup_with("300ms", service_extra)
}

fn setup_with(timeout: &str, service_extra: &str) -> Setup {
    let echo = Echo::start("E");
    let policy = PolicyService::start_on(free_port());
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key])).unwrap();
    let yaml = format!(
        "auth:
  forward_claims: [{{ claim: sub, header: x-auth-subject }}]
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\", token_sources: [bearer, \"query:access_token\"] }}
  ext_authz:
    tenants:
      url: \"http://127.0.0.1:{}/\"
      timeout: {timeout}
      send_headers: [x-trace]
      upstream_headers: [x-authz-tenant, x-authz-decision]
      client_headers: [x-authz-reason]
{service_extra}    lenient:
      url: \"http://127.0.0.1:{}\"
      timeout: 300ms
      failure_mode_allow: true
policies:
  users: {{ allow: [{{ roles: [user] }}] }}
upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: tenants, path: /tenants/, upstream: e, policy: users, ext_authz: tenants }}
  - {{ name: lenient, path: /lenient/, upstream: e, ext_authz: lenient }}
  - {{ name: plain, path: /plain/, upstream: e }}
  - {{ name: v1, path: /v1/, upstream: e, strip_prefix: true, ext_authz: tenants }}
",
        jwks_path.display(),
        policy.port,
        policy.port,
        echo.addr()
    );
    let gw = Gateway::start(&yaml);
    Setup {
        gw,
        echo,
        policy,
        key,
        _dir: dir,
    }
}

impl Setup {
    fn bearer(&self, sub: &str, tenant: &str, roles: &[&str]) -> String {
        let claims = json!({ "iss": ISS, "sub": sub, "exp": 4_000_000_000u64, "tenant": tenant, "roles": roles });
        format!("Bearer {}", self.key.sign(claims))
    }
}

#[test]
fn the_policy_service_decides_and_only_its_headers_reach_the_upstream() {
    let s = setup("");
    let alice = s.bearer("alice", "acme", &["user"]);
    let r = s.gw.get(
        "/tenants/acme/orders?page=2",
        &[
            ("authorization", &alice),
            ("x-trace", "t-1"),
            ("x-authz-tenant", "globex"),
            ("x-authz-decision", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-authz-tenant").as_deref(), Some("acme"));
    assert_eq!(
        r.upstream_header("x-authz-decision").as_deref(),
        Some("allow")
    );
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    // What the service was asked: the method, the path and query, the verified claims, the
    // chosen header, and not the token.
    let last = s.policy.control("last");
    assert_eq!(last["method"], "GET");
    assert_eq!(last["path"], "/tenants/acme/orders?page=2");
    assert_eq!(last["claims"]["sub"], "alice");
    assert_eq!(last["claims"]["tenant"], "acme");
    assert_eq!(last["headers"]["x-trace"], "t-1");
    assert_eq!(last["headers"]["x-tollgate-route"], "tenants");
    assert!(last["headers"].get("authorization").is_none(), "{last}");

    // Another tenant's data: the service's 403, its body and its chosen header.
    s.echo.set("status=200");
    let before = s.echo.count();
    let r =
        s.gw.get("/tenants/globex/orders", &[("authorization", &alice)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json(), json!({ "error": "tenant_mismatch" }));
    assert_eq!(r.header("x-authz-reason"), Some("tenant"));
    assert!(r.header("x-request-id").is_some());
    // A write without the role `writer`: denied by the rule; with it: allowed.
    let r = request(
        &s.gw.url("/tenants/acme/orders"),
        "POST",
        &[("authorization", &alice)],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "read_only");
    let writer = s.bearer("wendy", "acme", &["user", "writer"]);
    let r = request(
        &s.gw.url("/tenants/acme/orders"),
        "POST",
        &[("authorization", &writer)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        s.echo.count(),
        before + 1,
        "denied requests never reached the upstream"
    );

    // RBAC comes first: a caller without `user` is refused without asking the service.
    let asked = s.policy.count();
    let nobody = s.bearer("nobody", "acme", &[]);
    let r =
        s.gw.get("/tenants/acme/orders", &[("authorization", &nobody)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "policy");
    assert_eq!(s.policy.count(), asked);
    assert_eq!(
        s.gw.metric(
            "tollgate_ext_authz_checks_total",
            &[("service", "tenants"), ("result", "allow")]
        ),
        2.0
    );
    assert_eq!(
        s.gw.metric(
            "tollgate_ext_authz_checks_total",
            &[("service", "tenants"), ("result", "deny")]
        ),
        2.0
    );
}

#[test]
fn a_down_slow_or_failing_service_fails_closed_and_opens_the_circuit() {
    let mut s = setup("      failure_threshold: 3\n      open_for: 1h\n");
    let alice = s.bearer("alice", "acme", &["user"]);
    let get = |path: &str| s.gw.get(path, &[("authorization", &alice)]);
    assert_eq!(get("/tenants/acme/a").status, 200);
    // Slow past the timeout: 503, never the upstream.
    s.policy.control("set?delay_ms=1000");
    let before = s.echo.count();
    let r = get("/tenants/acme/a");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "ext_authz_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // A 5xx answer is a decision: it denies with its status and the breaker does not count
    // it (so a `failure_mode_allow` service's denials never turn into passes).
    s.policy.control("set?delay_ms=0");
    s.policy.control("set?status=500");
    let r = get("/tenants/acme/a");
    assert_eq!(r.status, 500);
    assert_eq!(r.json(), json!({ "error": "forced" }));
    // Down: three failures in a row (the 500 answer ended the first run) open the circuit.
    s.policy.stop();
    for _ in 0..3 {
        let r = get("/tenants/acme/a");
        assert_eq!(r.status, 503);
    }
    assert_eq!(s.echo.count(), before, "nothing reached the upstream");
    // Open: refused at once without a call, even once the service is back.
    let port = s.policy.port;
    s.policy = PolicyService::start_on(port);
    let r = get("/tenants/acme/a");
    assert_eq!(r.status, 503);
    assert_eq!(s.policy.count(), 0, "an open circuit makes no call");
    assert_eq!(
        s.gw.metric(
            "tollgate_ext_authz_checks_total",
            &[("service", "tenants"), ("result", "circuit_open")]
        ),
        1.0
    );
    // `failure_mode_allow: true` lets requests through while its service is down.
    s.policy.stop();
    let r = get("/lenient/x");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.echo.count(), before + 1);
    // …but an answer is a decision, whatever its size: a 403 with a body over 64 KiB is a
    // 403 (the gateway's JSON instead of the body), not a failure to let through.
    s.policy = PolicyService::start_on(port);
    s.policy.control("set?big=70000");
    let r = get("/lenient/x");
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["reason"], "ext_authz");
    assert_eq!(s.echo.count(), before + 1);
    wait_for("the access line", Duration::from_secs(5), || {
        let log = s.gw.proc.log_text();
        log.contains("\"ext_authz\":\"failure_allowed\"")
            .then_some(())
    });
}

#[test]
fn the_service_judges_the_request_the_upstream_receives() {
    let s = setup("");
    let alice = s.bearer("alice", "acme", &["user"]);
    let token = alice.trim_start_matches("Bearer ");
    // A token in the query and a prefix the route strips: the service is asked about what
    // the upstream gets, without the token.
    let r =
        s.gw.get(&format!("/v1/tenants/acme/x?access_token={token}&a=1"), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let last = s.policy.control("last");
    assert_eq!(last["path"], "/tenants/acme/x?a=1");
    assert_eq!(r.json()["path"], "/tenants/acme/x");
    assert_eq!(r.json()["query"], "a=1");
    assert!(
        !last.to_string().contains(token),
        "the token reached the service"
    );
    // The prefix hides nothing: another tenant behind it is still denied.
    let r =
        s.gw.get("/v1/tenants/globex/x", &[("authorization", &alice)]);
    assert_eq!(r.status, 403);
}

#[test]
fn decisions_are_cached_per_caller_route_and_method() {
    let s = setup("      cache_ttl: 1h\n");
    let alice = s.bearer("alice", "acme", &["user"]);
    let bob = s.bearer("bob", "globex", &["user"]);
    for _ in 0..3 {
        assert_eq!(
            s.gw.get("/tenants/acme/a", &[("authorization", &alice)])
                .status,
            200
        );
    }
    assert_eq!(s.policy.count(), 1, "one check for three GETs");
    assert_eq!(
        request(
            &s.gw.url("/tenants/acme/a"),
            "POST",
            &[("authorization", &alice)]
        )
        .status,
        403
    );
    assert_eq!(s.policy.count(), 2, "another method is another decision");
    for _ in 0..2 {
        assert_eq!(
            s.gw.get("/tenants/acme/a", &[("authorization", &bob)])
                .status,
            403
        );
    }
    assert_eq!(
        s.policy.count(),
        3,
        "another caller is another decision; denials are cached too"
    );
    // A cached allow still carries the service's headers upstream.
    let r = s.gw.get("/tenants/acme/b", &[("authorization", &alice)]);
    assert_eq!(r.upstream_header("x-authz-tenant").as_deref(), Some("acme"));
}

#[test]
fn a_stalled_service_holds_only_its_own_budget_never_other_routes() {
    let s = setup_with("5s", "      max_in_flight: 2\n");
    let alice = s.bearer("alice", "acme", &["user"]);
    s.policy.control("set?delay_ms=3000");
    let url = s.gw.url("/tenants/acme/a");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (url, alice) = (url.clone(), alice.clone());
            std::thread::spawn(move || request(&url, "GET", &[("authorization", &alice)]).status)
        })
        .collect();
    wait_for("two checks in flight", Duration::from_secs(5), || {
        (s.gw.metric("tollgate_auth_network_waits_in_flight", &[]) >= 2.0).then_some(())
    });
    // The budget is spent: refused at once, not queued behind the stalled service.
    let started = Instant::now();
    let r = s.gw.get("/tenants/acme/a", &[("authorization", &alice)]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "network_budget");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered without waiting"
    );
    // Other routes, and their signature checks, go on meanwhile.
    let carol = s.bearer("carol", "acme", &[]);
    assert_eq!(
        s.gw.get("/plain/x", &[("authorization", &carol)]).status,
        200
    );
    for w in waiting {
        assert_eq!(w.join().unwrap(), 200, "the stalled checks end as allowed");
    }
}

#[test]
fn check_refuses_bad_ext_authz_services_at_their_paths() {
    let (code, _, err) = tollgate_check(
        "auth:
  forward_claims: [{ claim: sub, header: x-auth-subject }]
  providers:
    - { name: idp, issuer: \"https://i\", audiences: any, jwks_file: none.json }
  ext_authz:
    a:
      url: \"http://policy.internal/check\"
      upstream_headers: [x-forwarded-for, x-auth-subject, \"bad header\", x_real_ip]
      client_headers: [content-length, grpc-status]
      timeout: 0s
    b: { url: \"https://p.example/x?y=1\", failure_threshold: 0 }
upstreams:\n  e: { backends: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - { name: r, path: /, upstream: e, ext_authz: c }
",
    );
    assert_eq!(code, 1);
    for expected in [
        "auth.ext_authz.a.url: must be an https:// URL (http:// only on a loopback host, or with insecure_http: true)",
        "auth.ext_authz.a.upstream_headers[0]: x-forwarded-for is written by the gateway",
        "auth.ext_authz.a.upstream_headers[1]: x-auth-subject carries a forwarded claim",
        "auth.ext_authz.a.upstream_headers[2]: \"bad header\" is not a header name",
        "auth.ext_authz.a.upstream_headers[3]: x_real_ip is written by the gateway",
        "auth.ext_authz.a.timeout: must be greater than zero",
        "auth.ext_authz.a.client_headers[0]: content-length is written by the gateway",
        "auth.ext_authz.a.client_headers[1]: grpc-status is written by the gateway",
        "auth.ext_authz.b.url: must not have a query or fragment",
        "auth.ext_authz.b.failure_threshold: must be at least 1",
        "routes[0].ext_authz: unknown service \"c\" (not in auth.ext_authz)",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn a_shadow_never_gets_what_the_authorization_service_set() {
    use crate::edge::{one_received, RecordingUpstream};
    let primary = RecordingUpstream::start();
    let shadow = RecordingUpstream::start();
    let policy = PolicyService::start_on(free_port());
    let key = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&key])).unwrap();
    let gw = Gateway::start(&format!(
        "auth:
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
  ext_authz:
    tenants: {{ url: \"http://127.0.0.1:{}\", upstream_headers: [x-authz-tenant] }}
upstreams:
  app: {{ backends: [{{ addr: \"{}\" }}] }}
  shadow: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: t, path: /tenants/, upstream: app, ext_authz: tenants, mirror: {{ upstream: shadow }} }}
",
        jwks_path.display(),
        policy.port,
        primary.addr(),
        shadow.addr(),
    ));
    let claims = json!({ "iss": ISS, "sub": "alice", "exp": 4_000_000_000u64, "tenant": "acme" });
    let token = key.sign(claims);
    let r = raw_request(
        gw.port,
        &format!("GET /tenants/acme/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nX-Authz-Tenant: forged\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        one_received(&primary, "production").header("x-authz-tenant"),
        ["acme"]
    );
    let copy = one_received(&shadow, "the shadow's copy");
    assert!(copy.header("x-authz-tenant").is_empty(), "{}", copy.head);
}
