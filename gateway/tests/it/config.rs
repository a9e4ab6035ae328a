//! The invariant between `tollgate check` and `tollgate run`: a config that validates
//! compiles into a runtime snapshot, and compiles again (a reload), without panicking and
//! without a problem that validation should have found. Configs are generated from a
//! grammar of the sections with values drawn from valid and invalid ones that broke this
//! before (health-check paths and hosts, Redis URLs, bursts, header and claim names, ...).
//! No generated config needs I/O: inline keys and IP-literal backends only.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use std::cell::Cell;
use tollgate::request::runtime::RuntimeSnapshot;

const JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"k","alg":"ES256","x":"mcViQ6qskFUJI0NOHlIXvx83C9CLvbQhG30mBQx1GD4","y":"__7xcJZLc2vXBUmBRPoTBCYrQJ__KQJHpQsGbu8gXjk"}"#;

/// A value, valid 19 times in 20 (`""` stands for the key left out), so that whole
/// configs validate often enough while every invalid value is still tried.
fn pick(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
) -> impl Strategy<Value = String> {
    prop_oneof![
        19 => proptest::sample::select(valid).prop_map(str::to_owned),
        1 => proptest::sample::select(invalid).prop_map(str::to_owned),
    ]
}

/// `key: value` when `value` is not empty (an absent key), for flow mappings.
fn field(key: &str, value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!("{key}: {value}, ")
    }
}

fn health_check() -> impl Strategy<Value = String> {
    (
        pick(&["http", "tcp"], &["grpc", "\"\""]),
        pick(
            &["", "\"/\"", "\"/h?x=1\"", "/health"],
            &["\"/a b\"", "health", "\"/%zz\"", "\"\""],
        ),
        pick(
            &["", "a.test", "\"A.TEST\""],
            &["\"bad host\"", "a_b", "\"[::1]\"", "\"A.TEST:80\"", "\"\""],
        ),
        pick(&["", "1s", "250ms"], &["0s", "soon"]),
    )
        .prop_map(|(kind, path, host, interval)| {
            // `path` and `host` belong to HTTP checks (a TCP check with them is refused).
            let (path, host) = if kind == "tcp" {
                (String::new(), String::new())
            } else {
                (path, host)
            };
            format!(
                "{{ {}{}{}{} }}",
                field("type", &kind),
                field("path", &path),
                field("host", &host),
                field("interval", &interval)
            )
        })
}

fn upstream(name: &'static str) -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(
            (
                pick(
                    &["127.0.0.{n}:9000", "[::{n}]:80"],
                    &["127.0.0.1:0", "bad", "1.2.3.4:70000"],
                ),
                pick(&["", "1", "1000"], &["0", "1001"]),
            ),
            1..3,
        ),
        pick(
            &["", "round_robin", "consistent_hash"],
            &["bogus", "\"consistent_hash:header:x-user\""],
        ),
        proptest::option::of(health_check()),
        pick(&["", "0", "3"], &["-1"]),
    )
        .prop_map(move |(backends, lb, hc, retries)| {
            let list: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(n, (addr, w))| {
                    let addr = addr.replace("{n}", &(n + 1).to_string());
                    format!("{{ addr: \"{addr}\", {}}}", field("weight", w))
                })
                .collect();
            format!(
                "  {name}: {{ backends: [{}], {}{}{}}}\n",
                list.join(", "),
                field("lb", &lb),
                hc.map(|h| field("health_check", &h)).unwrap_or_default(),
                field("retries", &retries)
            )
        })
}

fn limit(j: usize) -> impl Strategy<Value = String> {
    (
        pick(&["l{j}"], &["bad name", "l0"]),
        pick(
            &["1/s", "100/min", "1/h", "1000000/s"],
            &["0/s", "fast", "1000000/ms"],
        ),
        pick(&["", "1", "100"], &["0", "4000000000"]),
        pick(
            &[
                "",
                "client_ip",
                "route",
                "\"claim:sub\"",
                "\"header:x-key\"",
                "[client_ip, \"claim:tenant\"]",
            ],
            &[
                "\"claim:a..b\"",
                "\"header:bad name\"",
                "\"cookie:x\"",
                "[]",
            ],
        ),
        pick(&["", "local", "redis"], &["disk"]),
        pick(
            &[
                "",
                "{ claim: plan, values: { pro: { rate: 10/s, burst: 20 } } }",
            ],
            &[
                "{ claim: \"a..b\", values: {} }",
                "{ claim: plan, values: { pro: { rate: 1/h, burst: 4000000000 } } }",
            ],
        ),
    )
        .prop_map(move |(name, rate, burst, key, store, tiers)| {
            let name = name.replace("{j}", &j.to_string());
            format!(
                "{{ name: \"{name}\", rate: \"{rate}\", {}{}{}{}}}",
                field("burst", &burst),
                field("key", &key),
                field("store", &store),
                field("tiers", &tiers)
            )
        })
}

fn route(i: usize) -> impl Strategy<Value = String> {
    (
        pick(
            &["/", "/api", "/A", "/api/"],
            &["api", "/a/../b", "/%2F", "/a//b", "", "/x y"],
        ),
        pick(
            &["", "a.test", "\"*.x.test\""],
            &["\"A.TEST:80\"", "\"bad host\"", "\"[::1]\""],
        ),
        pick(
            &["", "[GET]", "[GET, POST]"],
            &["[get]", "[GET, GET]", "[FOO]", "[]"],
        ),
        pick(&["", "prefix", "exact"], &["regex"]),
        pick(&["", "sensitive", "insensitive"], &["weird"]),
        pick(&["", "true", "false"], &["maybe"]),
        pick(&["", "none", "optional"], &["bogus", "required"]),
        pick(&["a"], &["b", "missing"]),
        pick(&["", "\"1KiB\"", "10"], &["0", "x"]),
        (0usize..3).prop_flat_map(|n| (0..n).map(limit).collect::<Vec<_>>()),
        pick(&["", "p"], &["nope"]),
    )
        .prop_map(
            move |(
                path,
                host,
                methods,
                path_match,
                case,
                strip,
                auth,
                upstream,
                body,
                limits,
                policy,
            )| {
                let limits = if limits.is_empty() {
                    String::new()
                } else {
                    format!("rate_limits: [{}], ", limits.join(", "))
                };
                format!(
                    "  - {{ name: r{i}, path: \"{path}\", {}{}{}{}{}{}{}{}{}{limits}}}\n",
                    field("host", &host),
                    field("methods", &methods),
                    field("path_match", &path_match),
                    field("path_case", &case),
                    field("strip_prefix", &strip),
                    field("auth", &auth),
                    field("upstream", &upstream),
                    field("max_body", &body),
                    field("policy", &policy)
                )
            },
        )
}

fn config() -> impl Strategy<Value = String> {
    (
        upstream("a"),
        proptest::option::of(upstream("b")),
        (1usize..4).prop_flat_map(|n| (0..n).map(route).collect::<Vec<_>>()),
        proptest::option::of((
            pick(&["sub", "x.y"], &["\"a..b\""]),
            pick(&["x-user", "X-Up"], &["Authorization", "\"bad header\""]),
        )),
        pick(&["", "\"redis://127.0.0.1:6379\"", "\"redis://[::1]:1/0\""], &["\"redis://h:abc/\"", "\"http://x\"", "\"rediss://a.test/2\""]),
        pick(&["", "allow", "deny", "local"], &["maybe"]),
        pick(&["", "[\"10.0.0.0/8\"]", "[\"::1/128\"]"], &["[bad]"]),
        pick(&["", "[x-role]"], &["[\"bad header\"]"]),
        proptest::bool::ANY,
    )
        .prop_map(
            |(a, b, routes, forward, redis, on_error, proxies, overrides, with_auth)| {
                let mut y = String::from("server: { http: { ");
                y.push_str(&field("trusted_proxies", &proxies));
                y.push_str(&field("override_headers", &overrides));
                y.push_str("} }\n");
                if with_auth {
                    y.push_str(&format!(
                        "auth:\n  providers:\n    - {{ name: main, issuer: \"https://i.test\", audiences: any, jwks: {{ keys: [{JWK}] }} }}\n"
                    ));
                    if let Some((claim, header)) = forward {
                        y.push_str(&format!(
                            "  forward_claims:\n    - {{ claim: {claim}, header: {header} }}\n"
                        ));
                    }
                }
                if !redis.is_empty() {
                    y.push_str(&format!(
                        "rate_limiting:\n  redis: {{ url: {redis}, {}}}\n",
                        field("on_store_error", &on_error)
                    ));
                }
                y.push_str("policies:\n  p:\n    allow:\n      - { roles: [admin] }\n");
                y.push_str("upstreams:\n");
                y.push_str(&a);
                y.push_str(&b.unwrap_or_default());
                y.push_str("routes:\n");
                for r in routes {
                    y.push_str(&r);
                }
                y
            },
        )
}

#[test]
fn every_config_that_validates_compiles_and_recompiles() {
    let accepted = Cell::new(0u32);
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 600,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    runner
        .run(&config(), |yaml| {
            let config = match tollgate_config::parse(&yaml) {
                Ok(c) => c,
                Err(_) => return Ok(()),
            };
            accepted.set(accepted.get() + 1);
            for round in ["start", "reload"] {
                if let Err(e) = RuntimeSnapshot::compile(&config) {
                    panic!("{round}: validated config refused by the gateway: {e}\n{yaml}");
                }
            }
            tollgate::limits::Stores::new(&config.rate_limiting)
                .unwrap_or_else(|e| panic!("rate-limit stores refused: {e}\n{yaml}"));
            Ok(())
        })
        .unwrap();
    // The grammar must reach valid configs often enough for the invariant to be exercised:
    // about 7 % of them validate (45 of 600 on average; fewer than 20 is a broken grammar,
    // not bad luck).
    eprintln!("{} of 600 generated configs validated", accepted.get());
    assert!(
        accepted.get() >= 20,
        "only {} configs validated",
        accepted.get()
    );
}
