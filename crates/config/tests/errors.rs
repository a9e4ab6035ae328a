//! A bad config is refused with every problem and its YAML path, at once.

use tollgate_config::{parse, Audiences};

fn problems(yaml: &str) -> Vec<String> {
    parse(yaml)
        .unwrap_err()
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect()
}

/// Each expected problem starts one reported problem, and nothing else (but `unlisted` more)
/// was reported.
fn assert_problems(reported: &[String], expected: &[&str], unlisted: usize) {
    for e in expected {
        assert!(
            reported.iter().any(|l| l.starts_with(e)),
            "missing {e:?} in {reported:#?}"
        );
    }
    assert_eq!(reported.len(), expected.len() + unlisted, "{reported:#?}");
}

const GOOD: &str = r#"
listen: { http: "127.0.0.1:8080" }
upstreams:
  echo:
    backends: [{ addr: "127.0.0.1:9000", weight: 3 }, { addr: "localhost:9001" }]
    health_check: { type: http, path: /healthz, interval: 2s, unhealthy_threshold: 2 }
    connect_timeout: 250ms
routes:
  - { name: api, host: api.example.com, path: /api, methods: [get, POST], upstream: echo, strip_prefix: true }
  - { name: root, path: /, upstream: echo }
"#;

#[test]
fn good_config_is_typed_with_defaults() {
    let c = parse(GOOD).unwrap();
    let echo = c.upstreams.iter().find(|u| u.name == "echo").unwrap();
    assert_eq!(echo.backends[0].weight, 3);
    assert_eq!(echo.backends[1].weight, 1);
    assert_eq!(echo.connect_timeout, std::time::Duration::from_millis(250));
    assert_eq!(echo.read_timeout, std::time::Duration::from_secs(30));
    assert_eq!(echo.retries, 1);
    let hc = echo.health_check.as_ref().unwrap();
    assert_eq!(hc.unhealthy_threshold, 2);
    assert_eq!(hc.healthy_threshold, 2);
    assert_eq!(c.routes[0].methods, vec!["GET", "POST"]);
    assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9091");
    assert_eq!(c.server.grace_period, std::time::Duration::from_secs(5));
}

#[test]
fn unknown_keys_are_refused_in_every_section_at_once() {
    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080", htps: "x" }
bogus: 1
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9000", wieght: 2 }] }
routes:
  - { name: a, path: /, upstream: echo, method: [GET] }
  - { name: b, path: /b, upstream: echo }
"#,
    );
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p[0].starts_with("listen.htps: unknown field `htps`"),
        "{}",
        p[0]
    );
    assert!(p[1].starts_with("bogus: unknown section"), "{}", p[1]);
    assert!(
        p[2].starts_with("upstreams.echo.backends[0].wieght: unknown field"),
        "{}",
        p[2]
    );
    assert!(
        p[3].starts_with("routes[0].method: unknown field `method`"),
        "{}",
        p[3]
    );
}

#[test]
fn bad_references_name_the_route() {
    let p = problems(
        r#"
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: a, path: /a, upstream: billing }
  - { name: b, path: /b, upstream: echo }
  - { name: c, path: /c, upstream: users }
"#,
    );
    assert_eq!(
        p,
        vec![
            r#"routes[0].upstream: unknown upstream "billing""#,
            r#"routes[2].upstream: unknown upstream "users""#,
        ]
    );
}

#[test]
fn bad_durations_are_reported_with_their_paths() {
    let p = problems(
        r#"
server: { grace_period: soon }
upstreams:
  echo:
    backends: [{ addr: "127.0.0.1:9000" }]
    connect_timeout: 5
    read_timeout: 0s
    health_check: { type: tcp, interval: 2 parsecs }
routes:
  - { name: a, path: /, upstream: echo }
"#,
    );
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(
        p[0].starts_with("server.grace_period: invalid duration \"soon\""),
        "{}",
        p[0]
    );
    // Upstream fields are checked in declaration order: connect, read, then health check.
    assert!(
        p.iter()
            .any(|l| l.starts_with("upstreams.echo.connect_timeout: invalid duration \"5\"")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l == "upstreams.echo.read_timeout: must be greater than zero"),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("upstreams.echo.health_check.interval: invalid duration")),
        "{p:#?}"
    );
}

#[test]
fn duplicate_routes_and_names_are_refused() {
    let p = problems(
        r#"
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: a, path: /api, methods: [GET], upstream: echo }
  - { name: a, path: /other, upstream: echo }
  - { name: c, path: /api/, methods: [GET, POST], upstream: echo }
  - { name: d, path: /api, methods: [POST], host: x.com, upstream: echo }
"#,
    );
    assert_eq!(
        p,
        vec![
            r#"routes[1].name: duplicate route name "a", first used by routes[0]"#,
            "routes[2]: duplicate route: routes[0] already matches the same host, path and methods",
        ]
    );
}

#[test]
fn upstream_and_route_values_are_checked() {
    let p = problems(
        r#"
listen: { http: "nowhere" }
metrics: { listen: "127.0.0.1:9091" }
upstreams:
  echo:
    backends: [{ addr: "127.0.0.1", weight: 0 }, { addr: "127.0.0.1" }]
    lb: random
    hash_on: "header:"
    health_check: { type: tcp, path: /x, healthy_threshold: 0 }
  empty: { backends: [] }
routes:
  - { name: "a b", path: api, path_match: exact, strip_prefix: true, upstream: echo, methods: ["GE T"] }
"#,
    );
    let expected = [
        "listen.http: invalid address \"nowhere\"",
        "upstreams.echo.backends[0].addr: invalid backend address",
        "upstreams.echo.backends[0].weight: must be between 1 and 1000",
        "upstreams.echo.backends[1].addr: duplicate of upstreams.echo.backends[0]",
        "upstreams.echo.hash_on: expected client_ip, header:NAME or claim:NAME",
        "upstreams.echo.lb: expected round_robin, least_request, peak_ewma or consistent_hash",
        "upstreams.echo.health_check.path: only applies with type: http",
        "upstreams.echo.health_check.healthy_threshold: must be at least 1",
        "upstreams.empty.backends: at least one backend is required",
        "routes[0].name: must be non-empty",
        "routes[0].strip_prefix: only applies with path_match: prefix",
        "routes[0].methods[0]: invalid method",
        "routes[0].path: path must start with '/'",
    ];
    assert_problems(&p, &expected, 1); // + the invalid addr of backends[1]
}

#[test]
fn yaml_syntax_and_shape_errors() {
    assert!(problems("routes: [")[0].starts_with("invalid YAML"));
    assert_eq!(
        problems("- a\n- b"),
        vec!["the config must be a mapping of sections"]
    );
    assert_eq!(problems(""), vec!["routes: at least one route is required"]);
    assert_eq!(
        problems("upstreams: [a]\nroutes: {}"),
        vec![
            "upstreams: expected a mapping of upstream names to clusters",
            "routes: expected a list of routes"
        ]
    );
}

#[test]
fn auth_policy_and_limit_problems_have_paths() {
    let p = problems(
        r#"
auth:
  providers:
    - { name: a, issuer: "https://a", audiences: [api], jwks_file: a.json, jwks_uri: "https://a/jwks" }
    - { name: a, issuer: "https://a", audiences: any, token_sources: [bearer, "smoke:signal"] }
  forward_claims:
    - { claim: sub, header: Authorization }
policies:
  p:
    mode: audit
    allow: [{}]
rate_limiting:
  redis: { url: "http://x", on_store_error: panic }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: e
    policy: missing
    providers: [nobody]
    rate_limits:
      - { name: l, rate: "fast", key: "cookie:x" }
      - { name: l, rate: "10/s", burst: 0, store: redis }
"#,
    );
    let expected = [
        "auth.providers[0]: has more than one key source",
        "auth.providers[1].name: duplicate provider name \"a\"",
        "auth.providers[1].issuer: auth.providers[0] has the same issuer",
        "auth.providers[1]: needs one key source",
        "auth.providers[1].token_sources[1]: expected bearer, header:NAME, cookie:NAME or query:NAME",
        "auth.forward_claims[0].header: Authorization is reserved",
        "policies.p.mode: expected enforce or shadow, found \"audit\"",
        "policies.p.allow[0]:",
        "rate_limiting.redis.url: must be a redis://",
        "rate_limiting.redis.on_store_error: expected allow, deny or local",
        "routes[0].policy: unknown policy \"missing\"",
        "routes[0].providers[0]: unknown provider \"nobody\"",
        "routes[0].rate_limits[0].key: expected client_ip, route, claim:PATH or header:NAME",
        "routes[0].rate_limits[0].rate:",
        "routes[0].rate_limits[1].name: \"l\" is used twice on this route",
        "routes[0].rate_limits[1].burst: must be at least 1",
    ];
    assert_problems(&p, &expected, 0);
}

#[test]
fn routes_default_to_required_auth_when_providers_exist() {
    let c = parse(
        r#"
auth:
  providers: [{ name: a, issuer: "https://a", audiences: any, jwks: { keys: [] } }]
policies:
  p: { allow: [{ roles: [admin] }] }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e, policy: p, rate_limits: [{ name: l, rate: 100/s }] }
  - { name: open, path: /open, upstream: e, auth: none, rate_limits: [{ name: l, rate: 5/min }] }
"#,
    )
    .unwrap();
    assert_eq!(c.routes[0].auth, tollgate_config::AuthMode::Required);
    assert_eq!(c.routes[0].providers, vec!["a"]);
    assert_eq!(
        c.routes[0].rate_limits[0].gcra.burst(),
        100,
        "burst defaults to the rate's count"
    );
    assert_eq!(
        c.routes[0].rate_limits[0].keys,
        vec![tollgate_config::LimitKey::Claim(
            tollgate_policy::ClaimPath::parse("sub").unwrap()
        )],
        "authenticated routes limit per subject by default"
    );
    assert_eq!(
        c.routes[1].rate_limits[0].keys,
        vec![tollgate_config::LimitKey::ClientIp]
    );
    assert!(c.policies.contains_key("p"));
    assert_eq!(c.auth.providers[0].audiences, Audiences::Any);
    assert!(c.auth.providers[0].token_types.is_empty());
    assert_eq!(c.rate_limiting.ipv6_prefix, 64);
    assert_eq!(c.routes[0].rate_limits[0].ipv6_prefix, 64);
}

/// A provider with `yaml` (a flow-mapping body after `name` and `issuer`) and a route.
fn with_provider(yaml: &str) -> String {
    format!(
        "auth:\n  providers:\n    - {{ name: a, issuer: \"https://a\", {yaml} }}\n\
         upstreams:\n  e: {{ backends: [{{ addr: \"127.0.0.1:9000\" }}] }}\n\
         routes:\n  - {{ name: r, path: /, upstream: e }}\n"
    )
}

#[test]
fn audiences_are_required_or_explicitly_any() {
    assert_eq!(
        problems(&with_provider("jwks: { keys: [] }")),
        ["auth.providers[0].audiences: required; list the accepted audiences, or write `audiences: any` to accept every audience"]
    );
    let any = parse(&with_provider("audiences: any, jwks: { keys: [] }")).unwrap();
    assert_eq!(any.auth.providers[0].audiences, Audiences::Any);
    let list = parse(&with_provider(
        "audiences: [api, \"api://b\"], jwks: { keys: [] }",
    ))
    .unwrap();
    assert_eq!(
        list.auth.providers[0].audiences,
        Audiences::List(vec!["api".into(), "api://b".into()])
    );
    assert_eq!(
        problems(&with_provider("audiences: api, jwks: { keys: [] }")),
        ["auth.providers[0].audiences: expected a list of audiences or `any`, found \"api\" (write [api] for one audience)"]
    );
    assert_eq!(
        problems(&with_provider("audiences: [], jwks: { keys: [] }")),
        ["auth.providers[0].audiences: must list at least one audience, or be `any` to accept every audience"]
    );
    assert_eq!(
        problems(&with_provider("audiences: [\"\"], jwks: { keys: [] }")),
        ["auth.providers[0].audiences[0]: must not be empty"]
    );
    let shape = problems(&with_provider("audiences: { a: 1 }, jwks: { keys: [] }"));
    assert_eq!(shape.len(), 1, "{shape:?}");
    assert!(
        shape[0].starts_with(
            "auth.providers[0].audiences: expected a list of audiences, or the word any"
        ),
        "{shape:?}"
    );
}

#[test]
fn token_types_are_kept_as_written() {
    let c = parse(&with_provider(
        "audiences: any, token_types: [at+jwt, application/JWT], jwks: { keys: [] }",
    ))
    .unwrap();
    assert_eq!(
        c.auth.providers[0].token_types,
        ["at+jwt", "application/JWT"]
    );
    assert_eq!(
        problems(&with_provider("audiences: any, token_types: [], jwks: { keys: [] }")),
        ["auth.providers[0].token_types: must list at least one type (leave it out to accept any typ)"]
    );
    assert_eq!(
        problems(&with_provider("audiences: any, token_types: [\"at jwt\", \"\"], jwks: { keys: [] }")),
        [
            "auth.providers[0].token_types[0]: expected a media type such as at+jwt, found \"at jwt\"",
            "auth.providers[0].token_types[1]: expected a media type such as at+jwt, found \"\"",
        ]
    );
}

#[test]
fn jwks_uri_must_be_https_except_on_loopback_or_when_insecure_http_is_said() {
    for ok in [
        "jwks_uri: \"https://idp.example/jwks\"",
        "jwks_uri: \"http://127.0.0.1:8080/jwks\"",
        "jwks_uri: \"http://127.8.9.10/jwks\"",
        "jwks_uri: \"http://localhost/jwks\"",
        "jwks_uri: \"http://LOCALHOST:9/jwks\"",
        "jwks_uri: \"http://[::1]:8080/jwks\"",
        "jwks_uri: \"http://idp.internal/jwks\", insecure_http: true",
    ] {
        let c = parse(&with_provider(&format!("audiences: any, {ok}")));
        assert!(c.is_ok(), "{ok}: {c:?}");
    }
    let https_only =
        "must be an https:// URL (http:// only on a loopback host, or with insecure_http: true)";
    for bad in [
        "jwks_uri: \"http://idp.example/jwks\"",
        "jwks_uri: \"http://idp.example/jwks\", insecure_http: false",
        // Look-alikes of a loopback host are not one.
        "jwks_uri: \"http://localhost.evil.example/jwks\"",
        "jwks_uri: \"http://127.0.0.1.evil.example/jwks\"",
        "jwks_uri: \"http://[::2]/jwks\"",
    ] {
        assert_eq!(
            problems(&with_provider(&format!("audiences: any, {bad}"))),
            [format!("auth.providers[0].jwks_uri: {https_only}")],
            "{bad}"
        );
    }
    // A loopback look-alike with userinfo, and credentials in any URL, are refused as such.
    for bad in [
        "jwks_uri: \"http://127.0.0.1@evil.example/jwks\"",
        "jwks_uri: \"https://user:pass@idp.example/jwks\"",
    ] {
        assert_eq!(
            problems(&with_provider(&format!("audiences: any, {bad}"))),
            ["auth.providers[0].jwks_uri: must not carry credentials (user@host)"],
            "{bad}"
        );
    }
    assert_eq!(
        problems(&with_provider(
            "audiences: any, jwks_uri: \"ftp://idp/jwks\""
        )),
        ["auth.providers[0].jwks_uri: must be an https:// URL"]
    );
    assert_eq!(
        problems(&with_provider(
            "audiences: any, jwks_uri: \"https:///jwks\""
        )),
        ["auth.providers[0].jwks_uri: has no host"]
    );
    assert_eq!(
        problems(&with_provider(
            "audiences: any, jwks: { keys: [] }, insecure_http: true"
        )),
        ["auth.providers[0].insecure_http: only applies with an http:// jwks_uri or discovery URL"]
    );
}

#[test]
fn ipv6_prefix_is_set_under_rate_limiting_or_per_limit() {
    let c = parse(
        r#"
rate_limiting: { ipv6_prefix: 56 }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: e
    rate_limits: [{ name: a, rate: 1/s }, { name: b, rate: 1/s, ipv6_prefix: 128 }]
"#,
    )
    .unwrap();
    assert_eq!(c.rate_limiting.ipv6_prefix, 56);
    let limits = &c.routes[0].rate_limits;
    assert_eq!((limits[0].ipv6_prefix, limits[1].ipv6_prefix), (56, 128));
    assert_eq!(
        problems(
            r#"
rate_limiting: { ipv6_prefix: 0 }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e, rate_limits: [{ name: a, rate: 1/s, ipv6_prefix: 129 }] }
"#
        ),
        [
            "rate_limiting.ipv6_prefix: must be between 1 and 128, found 0",
            "routes[0].rate_limits[0].ipv6_prefix: must be between 1 and 128, found 129",
        ]
    );
}

#[test]
fn server_http_problems_are_reported_with_their_paths_at_once() {
    let yaml = r#"
server:
  http: { escaped_slashes: keep, path_params: allow, body_timeout: 0s, trusted_proxies: [10.0.0.0/33], max_header_bytes: 2MiB, max_headers: 300 }
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: a, path: "/a//b", upstream: echo, max_body: lots }
  - { name: b, path: "/%61pi", upstream: echo }
"#;
    assert_eq!(
        problems(yaml),
        [
            "server.http.escaped_slashes: expected reject or decode, found \"keep\"",
            "server.http.path_params: expected reject or strip, found \"allow\"",
            "server.http.trusted_proxies[0]: expected an address or CIDR such as 10.0.0.0/8, found \"10.0.0.0/33\"",
            "server.http.max_header_bytes: must be less than 1MiB (Pingora's own ceiling)",
            "server.http.max_headers: must be between 1 and 256 (Pingora parses at most 256 header fields)",
            "server.http.body_timeout: must be greater than zero",
            "routes[0].max_body: expected a size such as 65536 or \"64KiB\", found \"lots\"",
            "routes[0].path: requests are matched on normalised paths: write \"/a/b\"",
            "routes[1].path: requests are matched on normalised paths: write \"/api\"",
        ]
    );
}

#[test]
fn server_http_defaults_are_the_safe_ones_and_options_are_read() {
    let c = parse(GOOD).unwrap();
    let h = &c.server.http;
    assert!(h.trusted_proxies.is_empty());
    assert_eq!(h.max_header_bytes, 64 << 10);
    assert_eq!(h.header_timeout, std::time::Duration::from_secs(10));
    assert_eq!(c.routes[0].max_body, 64 << 20);
    let yaml = GOOD.replace(
        "listen:",
        "server: { http: { escaped_slashes: decode, path_params: strip, merge_slashes: false, trusted_proxies: [10.0.0.0/8, 192.0.2.1] } }\nlisten:",
    );
    let c = parse(&yaml).unwrap();
    let h = &c.server.http;
    assert_eq!(
        h.path.escaped_slashes,
        tollgate_config::EscapedSlashes::Decode
    );
    assert_eq!(h.path.path_params, tollgate_config::PathParams::Strip);
    assert!(!h.path.merge_slashes);
    assert_eq!(h.trusted_proxies.len(), 2);
}

#[test]
fn path_case_is_read_and_checked() {
    let with_iis = |routes: &str| {
        GOOD.replace(
            "routes:\n",
            "  iis: { backends: [{ addr: \"127.0.0.1:9002\" }] }\nroutes:\n",
        )
        .replace("  - { name: root, path: /, upstream: echo }", routes)
    };
    let c = parse(&with_iis(
        "  - { name: root, path: /, upstream: echo }
  - { name: legacy, path: /Legacy, upstream: iis, path_case: insensitive }
  - { name: plain, path: /plain, upstream: echo, path_case: sensitive }",
    ))
    .unwrap();
    assert!(!c.routes[0].case_insensitive);
    assert!(c.routes[2].case_insensitive);
    assert!(!c.routes[3].case_insensitive);

    let p = problems(&with_iis(
        "  - { name: root, path: /, upstream: echo, path_case: lower }
  - { name: legacy, path: /LEGACY/, upstream: iis, path_case: insensitive }
  - { name: other, path: /legacy, upstream: iis }
  - { name: exact, host: api.example.com, path: /API, path_match: exact, upstream: iis, path_case: insensitive }",
    ));
    assert_eq!(
        p,
        [
            "routes[1].path_case: expected sensitive or insensitive, found \"lower\"",
            "routes[3].path_case: routes[2] sends upstream \"iis\" paths with path_case: \
             insensitive; an upstream ignores letter case or does not, so every route to it must \
             say the same (or a route compared case-sensitively would reach what another \
             protects under a different case)",
            "routes[3].path: routes[2] has the same host and the same path but for letter case \
             (or a trailing / or the match kind), and one of the two has path_case: insensitive",
            "routes[4].path: routes[0] has the same host and the same path but for letter case \
             (or a trailing / or the match kind), and one of the two has path_case: insensitive",
        ],
        "{p:#?}"
    );
}

/// Attack review of `check` against `run`: these passed `check` and then panicked (health
/// checks) or failed (Redis) when the gateway started.
#[test]
fn health_check_paths_and_hosts_and_redis_urls_are_read_as_the_gateway_reads_them() {
    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
rate_limiting:
  redis: { url: "redis://h:abc/" }
upstreams:
  a: { backends: [{ addr: "127.0.0.1:9000" }], health_check: { type: http, path: "/a b" } }
  b: { backends: [{ addr: "127.0.0.1:9001" }], health_check: { type: http, host: "bad host\u0001" } }
  c: { backends: [{ addr: "127.0.0.1:9002" }], health_check: { type: http, path: "/healthz?full=1", host: "app.internal:8080" } }
routes:
  - { name: a, path: /a, upstream: a }
  - { name: b, path: /b, upstream: b }
  - { name: c, path: /c, upstream: c }
"#,
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p.iter()
            .any(|m| m.starts_with("rate_limiting.redis.url: not a usable Redis URL")),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|m| m
            == "upstreams.a.health_check.path: must be an absolute path (and query) without \
                spaces or control characters"),
        "{p:#?}"
    );
    assert!(
        p.iter().any(|m| m
            == "upstreams.b.health_check.host: must be a host name or IP literal, with an \
                optional port"),
        "{p:#?}"
    );
}

#[test]
fn limits_that_run_would_refuse_are_refused_by_check() {
    // A burst whose window cannot be counted in (about 4 billion hours) and a header key
    // that is not a header name: both used to pass validation and fail in the gateway.
    let p = problems(
        r#"
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: e
    rate_limits:
      - { name: long, rate: 1/h, burst: 4000000000 }
      - { name: hdr, rate: 1/s, key: "header:bad name" }
      - name: tiered
        rate: 1/s
        tiers: { claim: plan, values: { pro: { rate: 1/h, burst: 4000000000 } } }
"#,
    );
    let expected = [
        "routes[0].rate_limits[0].burst: ",
        "routes[0].rate_limits[1].key: expected client_ip, route, claim:PATH or header:NAME",
        "routes[0].rate_limits[2].tiers.values.pro.burst: ",
    ];
    assert_problems(&p, &expected, 0);
}

#[test]
fn logging_subject_and_sampling_are_checked() {
    let p = problems(
        r#"
logging: { subject: hashed, subject_salt: short, access_log_sample: 1.5 }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    assert_problems(
        &p,
        &[
            "logging.access_log_sample: must be between 0 and 1",
            "logging.subject_salt: subject: hashed needs a subject_salt of at least 16 characters",
        ],
        0,
    );
    let p = problems(
        r#"
logging: { subject: named }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    assert_problems(&p, &["logging.subject: expected omit, plain or hashed"], 0);
}

#[test]
fn tls_settings_are_refused_with_every_problem_and_its_path() {
    let reported = problems(
        r#"
listen:
  http: "127.0.0.1:8080"
  https: "127.0.0.1:8080"
  tls:
    certificates: []
    client_auth: sometimes
    client_cert_headers: { subject: Host, sha256: "bad header" }
    hsts: { max_age: 1d, preload: true }
upstreams: { echo: { backends: [{ addr: "127.0.0.1:9000" }] } }
routes:
  - { name: a, path: /, upstream: echo, client_certificate: maybe }
"#,
    );
    assert_problems(
        &reported,
        &[
            "listen.https: must use another port",
            "listen.tls.certificates: list at least one",
            "listen.tls.client_auth: expected none, optional or required",
            "listen.tls.client_cert_headers.subject: Host is reserved",
            "listen.tls.client_cert_headers.sha256: \"bad header\" is not a valid header name",
            "listen.tls.hsts.preload: preload lists require",
            "routes[0].client_certificate: expected any or required",
        ],
        0,
    );
    let reported = problems(
        r#"
listen: { https: "127.0.0.1:8443" }
upstreams: { echo: { backends: [{ addr: "127.0.0.1:9000" }] } }
routes: [{ name: a, path: /, upstream: echo }]
"#,
    );
    assert_problems(&reported, &["listen.tls: listen.https needs listen.tls"], 0);
    let reported = problems(
        r#"
listen: { https: "127.0.0.1:8443", tls: { certificates: [{ cert: c.pem, key: k.pem }], client_auth: required } }
upstreams: { echo: { backends: [{ addr: "127.0.0.1:9000" }] } }
routes: [{ name: a, path: /, upstream: echo }]
"#,
    );
    assert_problems(&reported, &["listen.tls.client_ca: client_auth needs"], 0);
}

#[test]
fn tls_defaults_and_hsts_value() {
    let c = parse(
        r#"
listen: { https: "127.0.0.1:8443", tls: { certificates: [{ cert: c.pem, key: k.pem }], hsts: { max_age: 365d, include_subdomains: true, preload: true } } }
upstreams: { echo: { backends: [{ addr: "127.0.0.1:9000" }] } }
routes: [{ name: a, path: /, upstream: echo, require_certificate_binding: true }]
"#,
    )
    .unwrap();
    let tls = c.listen.tls.unwrap();
    assert_eq!(tls.client_auth, tollgate_config::ClientAuth::None);
    assert_eq!(tls.watch, std::time::Duration::from_secs(10));
    assert!(!tls.redirect_http);
    assert_eq!(
        tls.hsts.as_deref(),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    assert!(c.routes[0].require_certificate_binding);
    assert!(!c.routes[0].require_client_certificate);
}

#[test]
fn front_door_options_are_typed_with_their_defaults() {
    use std::time::Duration;
    use tollgate_config::{Condition, HashOn, LoadBalancing};
    let c = parse(
        r#"
auth:
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null }]
upstreams:
  v1:
    backends: [{ addr: "127.0.0.1:9000" }]
    lb: least_request
    slow_start: 20s
    outlier_detection: { consecutive_failures: 3, success_rate: {} }
    circuit_breaker: { max_requests: 10 }
  v2:
    backends: [{ addr: "127.0.0.1:9001" }]
    lb: consistent_hash
    hash_on: claim:sub
routes:
  - name: api
    path: /
    upstreams:
      - { name: v2, when: { claim: { plan: beta }, header: { X-Canary: 1 } } }
      - { name: v1, weight: 90 }
      - { name: v2, weight: 10 }
    mirror: { upstream: v2, percent: 5 }
    retry_on: [reset, 503, "502"]
"#,
    )
    .unwrap();
    let v1 = c.upstreams.iter().find(|u| u.name == "v1").unwrap();
    assert_eq!(v1.lb, LoadBalancing::LeastRequest);
    assert_eq!(v1.slow_start, Some(Duration::from_secs(20)));
    let od = v1.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_failures, 3);
    assert_eq!(od.base_ejection_time, Duration::from_secs(30));
    assert_eq!(od.max_ejection_time, Duration::from_secs(300));
    assert_eq!(od.interval, Duration::from_secs(10));
    assert_eq!(od.max_ejected_percent, 50);
    let sr = od.success_rate.as_ref().unwrap();
    assert_eq!((sr.min_requests, sr.threshold), (20, 0.8));
    assert_eq!(v1.circuit_breaker.max_requests, 10);
    assert_eq!(v1.circuit_breaker.max_pending, 1024);
    assert_eq!(v1.circuit_breaker.max_connections, 1024);
    assert_eq!(v1.circuit_breaker.retry_after, Duration::from_secs(1));
    assert_eq!(
        (v1.retry_budget.percent, v1.retry_budget.min_retries),
        (20.0, 3)
    );
    let v2 = c.upstreams.iter().find(|u| u.name == "v2").unwrap();
    assert_eq!(
        v2.lb,
        LoadBalancing::ConsistentHash(HashOn::Claim("sub".into()))
    );
    let r = &c.routes[0];
    assert_eq!(r.targets.len(), 3);
    assert_eq!(
        r.targets[0].when,
        vec![
            Condition::Header("x-canary".into(), "1".into()),
            Condition::Claim("plan".into(), "beta".into()),
        ]
    );
    assert_eq!((r.targets[1].weight, r.targets[2].weight), (90, 10));
    let m = r.mirror.as_ref().unwrap();
    assert_eq!((m.upstream.as_str(), m.percent), ("v2", 5.0));
    assert!(r.retry_on.reset);
    assert_eq!(r.retry_on.statuses, vec![503, 502]);
}

#[test]
fn front_door_problems_are_reported_with_their_paths_at_once() {
    let p = problems(
        r#"
upstreams:
  u:
    backends: [{ addr: "127.0.0.1:9000" }]
    lb: fastest
    outlier_detection: { consecutive_failures: 0, success_rate: { threshold: 1.5 }, max_ejected_percent: 101, base_ejection_time: 10s, max_ejection_time: 5s }
    circuit_breaker: { max_pending: 0 }
    retry_budget: { percent: 120 }
  h:
    backends: [{ addr: "127.0.0.1:9001" }]
    lb: consistent_hash
    slow_start: 5s
  k:
    backends: [{ addr: "127.0.0.1:9002" }]
    lb: least_request
    hash_on: claim:sub
routes:
  - { name: both, path: /a, upstream: u, upstreams: [{ name: u }] }
  - { name: none, path: /b }
  - name: split
    path: /c
    upstreams: [{ name: nowhere }, { name: u, weight: 0 }, { name: h, weight: 2, when: { header: { x: 1 } } }]
    mirror: { upstream: shadow, percent: 0 }
    retry_on: [400, sometimes]
  - name: onlywhen
    path: /d
    auth: none
    upstreams: [{ name: u, when: { claim: { plan: beta } } }, { name: h, when: {} }]
"#,
    );
    assert_problems(
        &p,
        &[
            "upstreams.u.lb: expected round_robin, least_request, peak_ewma or consistent_hash",
            "upstreams.k.hash_on: only applies with lb: consistent_hash",
            "upstreams.u.outlier_detection.consecutive_failures: must be at least 1",
            "upstreams.u.outlier_detection.success_rate.threshold: must be a share",
            "upstreams.u.outlier_detection.max_ejected_percent: must be between 0 and 100",
            "upstreams.u.outlier_detection.max_ejection_time: must not be shorter",
            "upstreams.u.circuit_breaker.max_pending: must be at least 1",
            "upstreams.u.retry_budget.percent: must be between 0 and 100",
            "upstreams.h.slow_start: applies to round_robin and least_request",
            "routes[0].upstreams: give either upstream or upstreams, not both",
            "routes[1].upstream: required",
            "routes[2].upstreams[0].name: unknown upstream \"nowhere\"",
            "routes[2].upstreams[1].weight: must be between 1 and 10000",
            "routes[2].upstreams[2].weight: an entry with when takes every request",
            "routes[2].mirror.upstream: unknown upstream \"shadow\"",
            "routes[2].mirror.percent: must be above 0",
            "routes[2].retry_on[0]: expected reset or an HTTP status",
            "routes[2].retry_on[1]: expected reset or an HTTP status",
            "routes[3].upstreams[0].when.claim: matches claims of a verified token",
            "routes[3].upstreams[1].when: must name at least one header, cookie or claim",
            "routes[3].upstreams: needs at least one entry without when",
        ],
        0,
    );
}

#[test]
fn srv_backends_need_dns_take_their_weights_from_dns_and_need_sni_for_tls() {
    let c = parse(
        r#"
upstreams:
  api:
    backends: [{ addr: "srv:_http._tcp.api.test" }, { addr: "api.test:8080" }]
    dns: { resolver: "127.0.0.1:5353" }
routes:
  - { name: all, path: /, upstream: api }
"#,
    )
    .unwrap();
    let api = &c.upstreams[0];
    assert_eq!(api.backends[0].srv(), Some("_http._tcp.api.test"));
    assert_eq!(api.backends[1].srv(), None);
    assert_eq!(api.backends[0].weight, 1);
    let p = problems(
        r#"
upstreams:
  nodns:
    backends: [{ addr: "srv:_http._tcp.api.test", weight: 3 }]
  tls:
    backends: [{ addr: "srv:_https._tcp.api.test" }]
    dns: {}
    tls: {}
  bad:
    backends: [{ addr: "srv:" }, { addr: "srv:a b" }]
    dns: {}
routes:
  - { name: a, path: /a, upstream: nodns }
  - { name: b, path: /b, upstream: tls }
  - { name: c, path: /c, upstream: bad }
"#,
    );
    assert_problems(
        &p,
        &[
            "upstreams.nodns.backends[0].addr: an SRV backend is looked up and re-resolved in the background: add upstreams.nodns.dns",
            "upstreams.nodns.backends[0].weight: an SRV backend takes its weights from its SRV records",
            "upstreams.tls.tls.sni: SRV backends have no name to check their certificate against",
            "upstreams.bad.backends[0].addr: invalid backend address \"srv:\", expected host:port or srv:NAME",
            "upstreams.bad.backends[1].addr: invalid backend address \"srv:a b\"",
        ],
        0,
    );
}

#[test]
fn discovery_is_at_the_issuer_or_a_url_and_held_to_the_jwks_uri_rules() {
    use tollgate_config::KeySource;
    let keys = |yaml: &str| {
        parse(&with_provider(yaml)).unwrap().auth.providers[0]
            .keys
            .clone()
    };
    // OIDC Discovery §4: the issuer without its trailing `/`, then the well-known path.
    assert_eq!(
        keys("audiences: any, discovery: true"),
        KeySource::Discovery("https://a/.well-known/openid-configuration".into())
    );
    assert_eq!(
        keys("audiences: any, discovery: \"http://127.0.0.1:8080/realms/x/.well-known/openid-configuration\""),
        KeySource::Discovery(
            "http://127.0.0.1:8080/realms/x/.well-known/openid-configuration".into()
        )
    );
    assert_eq!(
        problems(&with_provider(
            "audiences: any, discovery: \"http://idp.example/.well-known/openid-configuration\""
        )),
        ["auth.providers[0].discovery: must be an https:// URL (http:// only on a loopback host, or with insecure_http: true)"]
    );
    assert_eq!(
        problems(&with_provider(
            "audiences: any, discovery: true, jwks_uri: \"https://a/jwks\""
        )),
        ["auth.providers[0]: has more than one key source; give exactly one"]
    );
    assert_eq!(
        problems(&with_provider("audiences: any, discovery: false")),
        ["auth.providers[0]: needs one key source: jwks, jwks_file, jwks_uri, discovery, hmac_secret_file, hmac_secret_env, type: introspection or type: api_key"]
    );
    assert!(parse(&with_provider(
        "audiences: any, discovery: \"http://idp.example/.well-known/openid-configuration\", insecure_http: true"
    ))
    .is_ok());
}

#[test]
fn a_when_value_yaml_would_rewrite_is_refused_and_integers_are_decimal() {
    let yaml = |v: &str| {
        format!(
            "upstreams:\n  a: {{ backends: [{{ addr: \"127.0.0.1:9000\" }}] }}\n  b: {{ backends: [{{ addr: \"127.0.0.1:9001\" }}] }}\n\
             routes:\n  - {{ name: r, path: /, upstreams: [{{ name: b, when: {{ header: {{ X-Canary: {v} }} }} }}, {{ name: a }}] }}\n"
        )
    };
    assert_eq!(
        problems(&yaml("1.50")),
        ["routes[0].upstreams[0].when.header.X-Canary: a decimal number is read as YAML rewrites it (1.50 as 1.5): quote it"]
    );
    assert_eq!(problems(&yaml("1e3")).len(), 1);
    assert!(parse(&yaml("\"1.50\"")).is_ok());
    let c = parse(&yaml("7")).unwrap();
    assert_eq!(
        c.routes[0].targets[0].when,
        vec![tollgate_config::Condition::Header(
            "x-canary".into(),
            "7".into()
        )]
    );
}

#[test]
fn upstream_tokens_need_signing_keys_a_verified_caller_and_leave_reserved_claims_alone() {
    let c = parse(
        r#"
auth:
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null }]
  signing_keys: { issuer: "https://gw", current: b, keys: [{ kid: a, file: a.pem }, { kid: b, file: b.pem }] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u, upstream_token: { audience: billing, claims: [roles, sub] } }
"#,
    )
    .unwrap();
    let t = c.routes[0].upstream_token.as_ref().unwrap();
    assert_eq!(t.header, http::header::AUTHORIZATION);
    assert_eq!(t.ttl, std::time::Duration::from_secs(60));
    assert_eq!(t.claims, ["sub", "roles"]);
    assert_eq!(c.auth.signing_keys.as_ref().unwrap().current, "b");

    let p = problems(
        r#"
auth:
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null }]
  signing_keys: { issuer: "", current: c, keys: [{ kid: a, file: a.pem }, { kid: a, file: "" }] }
  forward_claims: [{ claim: sub, header: X-Auth-Subject }]
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /r, auth: none, upstream: u, upstream_token: { audience: "", ttl: 48h, claims: [exp, act] } }
  - { name: k, path: /k, keep_authorization: true, upstream: u, upstream_token: { audience: x, header: "bad header" } }
  - { name: k2, path: /k2, keep_authorization: true, upstream: u, upstream_token: { audience: x } }
  - { name: h, path: /h, upstream: u, upstream_token: { audience: x, header: Content-Length } }
  - { name: f, path: /f, upstream: u, upstream_token: { audience: x, header: X-Auth-Subject } }
"#,
    );
    assert_problems(
        &p,
        &[
            "auth.signing_keys.issuer: must not be empty",
            "auth.signing_keys.keys[1].kid: already used by auth.signing_keys.keys[0]",
            "auth.signing_keys.keys[1].file: must not be empty",
            "auth.signing_keys.current: \"c\" is not the kid of a key",
            "routes[0].upstream_token: needs a verified caller",
            "routes[0].upstream_token.audience: must not be empty",
            "routes[0].upstream_token.ttl: must be between 1s and 24h",
            "routes[0].upstream_token.claims[0]: exp is set by the gateway",
            "routes[0].upstream_token.claims[1]: act is set by the gateway",
            "routes[1].upstream_token.header: invalid header name",
            "routes[2].upstream_token.header: the route keeps the caller's Authorization",
            "routes[3].upstream_token.header: content-length is reserved",
            "routes[4].upstream_token.header: x-auth-subject is already set from a claim by auth.forward_claims",
        ],
        0,
    );
    let p = problems(
        "upstreams:\n  u: { backends: [{ addr: \"127.0.0.1:9000\" }] }\nroutes:\n  - { name: r, path: /, upstream: u, upstream_token: { audience: x } }\n",
    );
    assert_problems(
        &p,
        &[
            "routes[0].upstream_token: needs auth.signing_keys",
            "routes[0].upstream_token: needs a verified caller",
        ],
        0,
    );
}

#[test]
fn dpop_is_off_optional_or_required_and_needs_the_authorization_header() {
    let c = parse(
        r#"
auth:
  dpop: { max_age: 30s, leeway: 0s, replay_cache_size: 1000 }
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null, dpop: optional }]
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u, dpop: required }
"#,
    )
    .unwrap();
    assert_eq!(
        c.auth.providers[0].dpop,
        tollgate_config::DpopMode::Optional
    );
    assert_eq!(c.routes[0].dpop, tollgate_config::DpopMode::Required);
    assert_eq!(c.auth.dpop.max_age, std::time::Duration::from_secs(30));
    assert_eq!(c.auth.dpop.leeway, std::time::Duration::ZERO);
    assert_eq!(c.auth.dpop.replay_cache_size, 1000);

    let p = problems(
        r#"
auth:
  dpop: { max_age: forever, replay_cache_size: 0 }
  providers:
    - { name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null, dpop: yes please }
    - { name: q, issuer: "https://q", audiences: any, jwks_file: /dev/null, dpop: required, token_sources: ["cookie:t"] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, auth: none, upstream: u, dpop: required }
"#,
    );
    assert_problems(
        &p,
        &[
            "auth.dpop.max_age:",
            "auth.dpop.replay_cache_size: must be at least 1",
            "auth.providers[0].dpop: expected off, optional or required, found \"yes please\"",
            "auth.providers[1].dpop: DPoP tokens come in the Authorization header",
            "routes[0].dpop: does not apply with auth: none",
        ],
        0,
    );
}

#[test]
fn an_introspection_provider_needs_an_endpoint_client_credentials_and_no_keys() {
    let c = parse(
        r#"
auth:
  providers:
    - name: p
      issuer: "https://i"
      audiences: any
      type: introspection
      introspection: { endpoint: "https://i/introspect", client_id: gw, client_secret_file: s.txt, tokens: all, cache_max_ttl: 1m }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u }
"#,
    )
    .unwrap();
    let tollgate_config::KeySource::Introspection(i) = &c.auth.providers[0].keys else {
        panic!("an introspection provider")
    };
    assert!(i.all_tokens);
    assert_eq!(i.cache_max_ttl, std::time::Duration::from_secs(60));
    assert_eq!(i.negative_cache_ttl, std::time::Duration::from_secs(10));
    assert_eq!(
        i.client_secret,
        tollgate_config::SecretSource::File("s.txt".into())
    );

    let p = problems(
        r#"
auth:
  providers:
    - { name: a, issuer: "https://a", audiences: any, type: introspection }
    - name: b
      issuer: "https://b"
      audiences: any
      type: introspection
      jwks_file: /dev/null
      introspection: { endpoint: "http://idp.example/introspect", client_id: "g:w", client_secret_file: s, client_secret_env: S, tokens: some, failure_threshold: 0 }
    - { name: c, issuer: "https://c", audiences: any, type: opaque, jwks_file: /dev/null }
    - { name: d, issuer: "https://d", audiences: any, introspection: { endpoint: "https://d/i", client_id: gw, client_secret_env: S } }
    - { name: e, issuer: "https://e", audiences: any, type: introspection, introspection: { endpoint: "https://u:p@e/i", client_id: gw, client_secret_env: S } }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u }
"#,
    );
    assert_problems(
        &p,
        &[
            "auth.providers[0].introspection: is required with type: introspection",
            "auth.providers[0]: needs one key source",
            "auth.providers[1].introspection.endpoint: must be an https:// URL",
            "auth.providers[1].introspection.client_id: must not be empty nor contain a colon",
            "auth.providers[1].introspection: needs exactly one of client_secret_file and client_secret_env",
            "auth.providers[1].introspection.tokens: expected opaque or all",
            "auth.providers[1].introspection.failure_threshold: must be at least 1",
            "auth.providers[1]: has more than one key source",
            "auth.providers[2].type: expected jwt, introspection or api_key",
            "auth.providers[3].type: must be introspection",
            "auth.providers[3]: needs one key source",
            "auth.providers[4].introspection.endpoint: must not carry credentials",
        ],
        0,
    );
}

#[test]
fn a_mirror_names_what_its_shadow_may_have_and_never_gets_the_primarys_audience() {
    let c = parse(
        r#"
auth:
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null }]
  signing_keys: { issuer: "https://gw", current: a, keys: [{ kid: a, file: a.pem }] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
  s: { backends: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: r, path: /, upstream: u, mirror: { upstream: s, upstream_token: { audience: shadow } } }
  - { name: o, path: /o, upstream: u, auth: none, mirror: { upstream: s, identity: true, cookies: true } }
"#,
    )
    .unwrap();
    let m = c.routes[0].mirror.as_ref().unwrap();
    assert_eq!((m.identity, m.cookies), (false, false));
    assert_eq!(m.upstream_token.as_ref().unwrap().audience, "shadow");
    let m = c.routes[1].mirror.as_ref().unwrap();
    assert_eq!(
        (m.identity, m.cookies, m.upstream_token.is_none()),
        (true, true, true)
    );

    let p = problems(
        r#"
auth:
  providers: [{ name: p, issuer: "https://i", audiences: any, jwks_file: /dev/null }]
  signing_keys: { issuer: "https://gw", current: a, keys: [{ kid: a, file: a.pem }] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
  s: { backends: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: r, path: /, upstream: u, upstream_token: { audience: billing }, mirror: { upstream: s, upstream_token: { audience: billing } } }
  - { name: o, path: /o, upstream: u, auth: none, mirror: { upstream: s, upstream_token: { audience: x } } }
  - { name: c, path: /c, upstream: u, upstream_token: { audience: other }, mirror: { upstream: s, upstream_token: { audience: billing } } }
"#,
    );
    assert_problems(
        &p,
        &[
            "routes[0].mirror.upstream_token.audience: must differ from the route's upstream_token.audience",
            "routes[1].mirror.upstream_token: needs a verified caller",
            "routes[2].mirror.upstream_token.audience: routes[0] mints its upstream's tokens for this audience",
        ],
        0,
    );
}

/// A `cookie:` token source names an RFC 6265 cookie (an RFC 9110 token): the gateway's one
/// cookie reader finds no other name, so no other could be read or stripped.
#[test]
fn a_token_cookie_name_must_be_a_cookie_name() {
    let reported = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
auth:
  providers:
    - { name: a, issuer: "https://a", audiences: any, jwks_file: /dev/null, token_sources: [bearer, "cookie:auth[0]", "cookie:ok_name"] }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e, providers: [a] }
"#,
    );
    assert_problems(
        &reported,
        &["auth.providers[0].token_sources[1]: expected bearer, header:NAME, cookie:NAME or query:NAME"],
        0,
    );
}

#[test]
fn every_file_a_config_names_is_relative_to_the_config_files_folder() {
    let yaml = r#"
listen:
  https: 127.0.0.1:8443
  tls: { certificates: [{ cert: tls/cert.pem, key: tls/key.pem }], client_auth: optional, client_ca: tls/ca.pem }
auth:
  providers: [{ name: p, issuer: "https://idp.example", audiences: [api], jwks_file: keys/jwks.json }]
  revocation: { file: revoked.jsonl }
  signing_keys: { issuer: "https://gw.example", current: a, keys: [{ kid: a, file: keys/a.pem }] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }], tls: { sni: u.internal, ca_file: /abs/ca.pem, client_cert: c.pem, client_key: k.pem } }
routes:
  - { name: r, path: /, upstream: u, upstream_token: { audience: u } }
"#;
    let mut c = parse(yaml).unwrap();
    c.resolve_paths(std::path::Path::new("/etc/tollgate"));
    let tls = c.listen.tls.as_ref().unwrap();
    assert_eq!(tls.certificates[0].cert, "/etc/tollgate/tls/cert.pem");
    assert_eq!(tls.client_ca.as_deref(), Some("/etc/tollgate/tls/ca.pem"));
    assert_eq!(
        c.auth.providers[0].keys,
        tollgate_config::KeySource::File("/etc/tollgate/keys/jwks.json".into())
    );
    assert_eq!(
        c.auth.revocation.as_ref().unwrap().source,
        tollgate_config::RevocationSource::File("/etc/tollgate/revoked.jsonl".into())
    );
    assert_eq!(
        c.auth.signing_keys.as_ref().unwrap().keys[0].file,
        "/etc/tollgate/keys/a.pem"
    );
    let up = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(
        up.ca_file.as_deref(),
        Some("/abs/ca.pem"),
        "absolute paths stay"
    );
    assert_eq!(
        up.client_cert,
        Some(("/etc/tollgate/c.pem".into(), "/etc/tollgate/k.pem".into()))
    );
}

#[test]
fn ip_rules_are_addresses_or_cidrs_and_an_allow_list_is_not_empty() {
    let yaml = r#"
server:
  http:
    ip_rules: { allow: [], deny: [10.0.0.0/33] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u, ip_rules: { allow: [10.0.0.0/8, office], deny: [fe80::/10] } }
"#;
    let reported = problems(yaml);
    assert_problems(
        &reported,
        &[
            "server.http.ip_rules.allow: an empty allow list lets no one in",
            "server.http.ip_rules.deny[0]: expected an address or CIDR such as 10.0.0.0/8, found \"10.0.0.0/33\"",
            "routes[0].ip_rules.allow[1]: expected an address or CIDR",
        ],
        0,
    );
}

#[test]
fn cors_origins_are_origins_and_any_never_goes_with_credentials() {
    let yaml = r#"
server:
  http:
    cors: { allow_origins: ["*"], allow_credentials: true }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: u
    cors: { allow_origins: ["https://app.example.com/", "app.example.com", "https://a.*.example.com", "null"], allow_headers: ["x y"], max_age: 5 }
"#;
    let reported = problems(yaml);
    assert_problems(
        &reported,
        &[
            "server.http.cors.allow_origins[0]: `*` cannot go with allow_credentials: true",
            "routes[0].cors.allow_origins[0]: expected an origin",
            "routes[0].cors.allow_origins[1]: expected an origin",
            "routes[0].cors.allow_origins[2]: `*` may only be the whole origin or its first label",
            "routes[0].cors.allow_origins[3]: expected an origin",
            "routes[0].cors.allow_headers[0]: \"x y\" is not a header name",
            "routes[0].cors.max_age: invalid duration",
        ],
        0,
    );
}

#[test]
fn a_cors_origin_pattern_matches_only_its_own_origins() {
    use tollgate_config::OriginPattern;
    let sub = OriginPattern::Subdomains {
        prefix: "https://".into(),
        suffix: ".example.com".into(),
    };
    assert!(sub.matches("https://app.example.com"));
    assert!(sub.matches("https://A.B.Example.COM"));
    for other in [
        "https://example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://evil.com/.example.com",
        "https://app.example.com.evil.com",
        "https://evil.com#.example.com",
        "https://user@x.example.com",
        "null",
    ] {
        assert!(!sub.matches(other), "{other}");
    }
    let exact = OriginPattern::Exact("https://app.example.com".into());
    assert!(exact.matches("https://APP.example.com"));
    assert!(!exact.matches("https://app.example.com.evil.com"));
    assert!(OriginPattern::Any.matches("https://anything.test"));
    assert!(!OriginPattern::Any.matches("null"));
}

#[test]
fn header_rules_never_touch_the_gateways_headers_and_name_known_variables() {
    let yaml = r#"
auth:
  providers: [{ name: p, issuer: "https://idp.example", audiences: [api], jwks_file: j.json }]
  forward_claims: [{ claim: sub, header: X-Auth-Subject }]
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: u
    headers:
      request:
        set: { X-Auth-Subject: x, Authorization: y, X-A: "${user}", X-B: "a\r\nb", X-C: "${claim.tenant" }
        remove: [X-Forwarded-For]
      response:
        set: { Content-Length: "1", X-Ok: "${route}" }
"#;
    let reported = problems(yaml);
    assert_problems(
        &reported,
        &[
            "routes[0].headers.request.set.X-Auth-Subject: x-auth-subject is the gateway's",
            "routes[0].headers.request.set.Authorization: authorization is the gateway's",
            "routes[0].headers.request.set.X-A: unknown variable ${user}",
            "routes[0].headers.request.set.X-B: a header value cannot hold control characters",
            "routes[0].headers.request.set.X-C: a `${` without its `}`",
            "routes[0].headers.request.remove[0]: x-forwarded-for is the gateway's",
            "routes[0].headers.response.set.Content-Length: content-length is the gateway's",
        ],
        0,
    );
}

#[test]
fn the_review_s_bypasses_are_refused() {
    let yaml = r#"
auth:
  providers: [{ name: p, issuer: "https://idp.example", audiences: [api], jwks_file: j.json }]
  forward_claims: [{ claim: sub, header: X-Auth-Subject }]
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - name: r
    path: /
    upstream: u
    ip_rules: { deny: ["::ffff:10.0.0.0/104"] }
    cors: { allow_origins: ["https://*.com", "http://[::1]:99999", "https://a:1:2", "https://x.example:443", "http://[::1]:8080"], allow_methods: [] }
    headers:
      request:
        set: { X_Auth_Subject: x, X_Forwarded_For: y }
        add: { X-Tenant: "${claim.tenant}", X-Ip: "${client_ip}" }
      response:
        set: { Access-Control-Allow-Origin: "*" }
"#;
    let reported = problems(yaml);
    assert_problems(
        &reported,
        &[
            "routes[0].ip_rules.deny[0]: \"::ffff:10.0.0.0/104\" is an IPv4-mapped range",
            "routes[0].cors.allow_origins[0]: `*.` must stand before a registrable name",
            "routes[0].cors.allow_origins[1]: expected an origin",
            "routes[0].cors.allow_origins[2]: expected an origin",
            "routes[0].cors.allow_origins[3]: expected an origin",
            "routes[0].cors.allow_methods: an empty list allows no method",
            "routes[0].headers.request.set.X_Auth_Subject: x_auth_subject is the gateway's",
            "routes[0].headers.request.set.X_Forwarded_For: x_forwarded_for is the gateway's",
            "routes[0].headers.request.add.X-Tenant: a value from a claim or the client address must be `set`",
            "routes[0].headers.request.add.X-Ip: a value from a claim or the client address must be `set`",
            "routes[0].headers.response.set.Access-Control-Allow-Origin: access-control-allow-origin is the gateway's",
        ],
        0,
    );
}

#[test]
fn a_shared_store_is_one_server_a_cluster_or_a_sentinel_master_with_every_url_checked() {
    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
rate_limiting:
  redis: { url: "redis://a:6379/", cluster: ["redis://b:7000/"] }
auth:
  revocation:
    redis: { sentinel: { master: "", nodes: ["redis://s1:26379/", "http://s2:26379/"] } }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    let expected = [
        "rate_limiting.redis: give only one of url, cluster and sentinel",
        "auth.revocation.redis.sentinel.master: must not be empty",
        "auth.revocation.redis.sentinel.nodes[1]: must be a redis:// or rediss:// URL",
    ];
    assert_problems(&p, &expected, 0);

    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
rate_limiting:
  redis: { cluster: [] }
auth:
  revocation:
    redis: { key: k }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    let expected = [
        "rate_limiting.redis.cluster: needs at least one redis:// URL",
        "auth.revocation.redis: needs url, cluster or sentinel",
    ];
    assert_problems(&p, &expected, 0);

    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
rate_limiting:
  redis: { cluster: ["redis://127.0.0.1:7000/2", "redis://127.0.0.1:7001/"] }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    let expected = ["rate_limiting.redis.cluster[0]: a Redis Cluster has only database 0"];
    assert_problems(&p, &expected, 0);

    let config = tollgate_config::parse(
        r#"
listen: { http: "127.0.0.1:8080" }
rate_limiting:
  redis: { sentinel: { master: fleet, nodes: ["redis://:pw@127.0.0.1:26379/"] }, on_store_error: deny }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    )
    .unwrap();
    assert_eq!(
        config.rate_limiting.redis.unwrap().server,
        tollgate_config::RedisServer::Sentinel {
            master: "fleet".into(),
            nodes: vec!["redis://:pw@127.0.0.1:26379/".into()],
        }
    );
}

#[test]
fn tracing_settings_are_checked_with_their_paths() {
    let p = problems(
        r#"
listen: { http: "127.0.0.1:8080" }
logging:
  tracing: { endpoint: "ftp://collector:4318/v1/traces", sample_ratio: 2, continue_from: everyone, queue_size: 0, batch_delay: soon }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    );
    let expected = [
        "logging.tracing.endpoint: must be an https:// URL",
        "logging.tracing.sample_ratio: must be between 0 and 1, found 2",
        "logging.tracing.continue_from: expected trusted_proxies, any or none, found \"everyone\"",
        "logging.tracing.queue_size: must be at least 1",
        "logging.tracing.batch_delay:",
    ];
    assert_problems(&p, &expected, 0);
    let config = tollgate_config::parse(
        r#"
listen: { http: "127.0.0.1:8080" }
logging: { tracing: { endpoint: "http://otel-collector:4318/v1/traces" } }
upstreams:
  e: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: e }
"#,
    )
    .unwrap();
    let t = config.logging.tracing.unwrap();
    assert_eq!(t.sample_ratio, 0.01);
    assert_eq!(
        t.continue_from,
        tollgate_config::ContinueFrom::TrustedProxies
    );
    assert_eq!((t.queue_size, t.batch_size), (4096, 512));
    assert_eq!(t.timeout, std::time::Duration::from_secs(2));
}
