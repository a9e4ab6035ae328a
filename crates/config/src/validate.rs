//! From YAML text to a typed [`Config`], collecting every problem with its path.

use crate::raw::*;
use crate::*;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::HashMap;
use tollgate_router::{RouteSpec, Router};

/// Collects problems as validation walks the file.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn finish(self, value: Config) -> Result<Config, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

/// Deserializes one node, reporting a failure at `base` joined with the path inside the node.
fn node<T: DeserializeOwned>(value: Value, base: &str, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match inner.as_str() {
                "." => base.to_owned(),
                _ if inner.starts_with('[') => format!("{base}{inner}"),
                _ => format!("{base}.{inner}"),
            };
            problems.add(path, e.into_inner().to_string());
            None
        }
    }
}

/// Reads the YAML into raw types. Problems are collected, not returned early, so that
/// validation still reports what is wrong elsewhere.
fn read_raw(yaml: &str, problems: &mut Problems) -> RawConfig {
    let doc: Value = match serde_yaml::from_str(yaml) {
        Ok(v) => v,
        Err(e) => {
            problems.add("", format!("invalid YAML: {e}"));
            return RawConfig::default();
        }
    };
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => Default::default(),
        _ => {
            problems.add("", "the config must be a mapping of sections");
            return RawConfig::default();
        }
    };
    let mut raw = RawConfig::default();
    for (key, value) in top {
        let Some(key) = key.as_str().map(str::to_owned) else {
            problems.add("", format!("section names must be strings, found {key:?}"));
            continue;
        };
        match key.as_str() {
            "server" => raw.server = node(value, &key, problems).unwrap_or_default(),
            "listen" => raw.listen = node(value, &key, problems).unwrap_or_default(),
            "metrics" => raw.metrics = node(value, &key, problems).unwrap_or_default(),
            "logging" => raw.logging = node(value, &key, problems).unwrap_or_default(),
            "auth" => {
                raw.auth = node(value, &key, problems).unwrap_or_default();
                for (i, value) in std::mem::take(&mut raw.auth.providers)
                    .into_iter()
                    .enumerate()
                {
                    let name = value.get("name").and_then(Value::as_str).map(str::to_owned);
                    match node(value, &format!("auth.providers[{i}]"), problems) {
                        Some(p) => raw.providers.push((i, p)),
                        None => raw.broken_providers.extend(name),
                    }
                }
            }
            "policies" => match value {
                Value::Mapping(m) => {
                    for (name, value) in m {
                        let Some(name) = name.as_str().map(str::to_owned) else {
                            problems.add("policies", "policy names must be strings");
                            continue;
                        };
                        match node(value, &format!("policies.{name}"), problems) {
                            Some(p) => {
                                raw.policies.insert(name, p);
                            }
                            None => {
                                raw.broken_policies.insert(name);
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => problems.add("policies", "expected a mapping of policy names to policies"),
            },
            "rate_limiting" => raw.rate_limiting = node(value, &key, problems).unwrap_or_default(),
            "upstreams" => match value {
                Value::Mapping(m) => {
                    for (name, value) in m {
                        let Some(name) = name.as_str().map(str::to_owned) else {
                            problems.add("upstreams", "upstream names must be strings");
                            continue;
                        };
                        let path = format!("upstreams.{name}");
                        match node(value, &path, problems) {
                            Some(u) => {
                                raw.upstreams.insert(name, u);
                            }
                            None => {
                                raw.broken_upstreams.insert(name);
                            }
                        }
                    }
                }
                Value::Null => {}
                _ => problems.add(
                    "upstreams",
                    "expected a mapping of upstream names to clusters",
                ),
            },
            "routes" => match value {
                Value::Sequence(s) => {
                    for (i, value) in s.into_iter().enumerate() {
                        if let Some(r) = node(value, &format!("routes[{i}]"), problems) {
                            raw.routes.push((i, r));
                        }
                    }
                }
                Value::Null => {}
                _ => problems.add("routes", "expected a list of routes"),
            },
            other => problems.add(
                other,
                format!("unknown section, expected one of {}", SECTIONS.join(", ")),
            ),
        }
    }
    raw
}

/// A duration such as `5s`, `250ms` or `1m 30s`.
pub(crate) fn duration(
    value: &Option<DurationText>,
    path: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    let Some(DurationText(text)) = value else {
        return default;
    };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            problems.add(path, "must be greater than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            problems.add(
                path,
                format!("invalid duration {text:?} ({e}); write e.g. \"5s\" or \"250ms\""),
            );
            default
        }
    }
}

fn socket_addr(
    value: &Option<String>,
    path: &str,
    default: &str,
    problems: &mut Problems,
) -> SocketAddr {
    let text = value.as_deref().unwrap_or(default);
    text.parse().unwrap_or_else(|_| {
        problems.add(
            path,
            format!("invalid address {text:?}, expected IP:port such as \"0.0.0.0:8080\""),
        );
        default.parse().expect("defaults are valid")
    })
}

/// A header name as RFC 9110 allows it (a token), lower-cased.
pub(crate) fn header_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then(|| name.to_ascii_lowercase())
}

/// `host:port` with a non-empty host and a port in 1..=65535 (IPv6 in brackets).
fn backend_addr_ok(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port_ok = matches!(port.parse::<u16>(), Ok(p) if p > 0);
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    port_ok && host_ok
}

/// Largest backend weight: weighted round robin expands weights into a table.
const MAX_WEIGHT: u32 = 1000;

fn upstream(name: &str, raw: &RawUpstream, problems: &mut Problems) -> Upstream {
    let base = format!("upstreams.{name}");
    if raw.backends.is_empty() {
        problems.add(
            format!("{base}.backends"),
            "at least one backend is required",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.iter().enumerate() {
        let path = format!("{base}.backends[{i}]");
        if !backend_addr_ok(&b.addr) {
            problems.add(
                format!("{path}.addr"),
                format!("invalid backend address {:?}, expected host:port", b.addr),
            );
        }
        if let Some(first) = seen.insert(&b.addr, i) {
            problems.add(
                format!("{path}.addr"),
                format!("duplicate of {base}.backends[{first}]"),
            );
        }
        let weight = b.weight.unwrap_or(1);
        if !(1..=MAX_WEIGHT).contains(&weight) {
            problems.add(
                format!("{path}.weight"),
                format!("must be between 1 and {MAX_WEIGHT}"),
            );
        }
        backends.push(Backend {
            addr: b.addr.clone(),
            weight,
        });
    }
    let hash_on = match raw.hash_on.as_deref() {
        None | Some("client_ip") => HashOn::ClientIp,
        Some(other) => match other.strip_prefix("header:").and_then(header_name) {
            Some(h) => HashOn::Header(h),
            None => {
                problems.add(
                    format!("{base}.hash_on"),
                    format!("expected client_ip or header:NAME, found {other:?}"),
                );
                HashOn::ClientIp
            }
        },
    };
    let lb = match raw.lb.as_deref() {
        None | Some("round_robin") => {
            if raw.hash_on.is_some() {
                problems.add(
                    format!("{base}.hash_on"),
                    "only applies with lb: consistent_hash",
                );
            }
            LoadBalancing::RoundRobin
        }
        Some("consistent_hash") => LoadBalancing::ConsistentHash(hash_on),
        Some(other) => {
            problems.add(
                format!("{base}.lb"),
                format!("expected round_robin or consistent_hash, found {other:?}"),
            );
            LoadBalancing::RoundRobin
        }
    };
    let health_check = raw
        .health_check
        .as_ref()
        .map(|hc| health_check(&format!("{base}.health_check"), hc, problems));
    Upstream {
        name: name.to_owned(),
        backends,
        lb,
        health_check,
        connect_timeout: duration(
            &raw.connect_timeout,
            &format!("{base}.connect_timeout"),
            Duration::from_secs(1),
            problems,
        ),
        read_timeout: duration(
            &raw.read_timeout,
            &format!("{base}.read_timeout"),
            Duration::from_secs(30),
            problems,
        ),
        write_timeout: duration(
            &raw.write_timeout,
            &format!("{base}.write_timeout"),
            Duration::from_secs(30),
            problems,
        ),
        idle_timeout: duration(
            &raw.idle_timeout,
            &format!("{base}.idle_timeout"),
            Duration::from_secs(60),
            problems,
        ),
        retries: raw.retries.unwrap_or(1),
    }
}

fn health_check(base: &str, raw: &RawHealthCheck, problems: &mut Problems) -> HealthCheck {
    let kind = match raw.kind.as_str() {
        "tcp" => {
            for (set, key) in [
                (raw.path.is_some(), "path"),
                (raw.host.is_some(), "host"),
                (raw.expected_status.is_some(), "expected_status"),
            ] {
                if set {
                    problems.add(format!("{base}.{key}"), "only applies with type: http");
                }
            }
            HealthCheckKind::Tcp
        }
        "http" => {
            let path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
            // Parsed as the health checker will parse it.
            if !path.starts_with('/') || path.parse::<::http::uri::PathAndQuery>().is_err() {
                problems.add(
                    format!("{base}.path"),
                    "must be an absolute path (and query) without spaces or control characters",
                );
            }
            let host = raw.host.clone().unwrap_or_else(|| "localhost".to_owned());
            if tollgate_canonical::normalize_host(host.as_bytes()).is_err() {
                problems.add(
                    format!("{base}.host"),
                    "must be a host name or IP literal, with an optional port",
                );
            }
            let expected_status = raw.expected_status.unwrap_or(200);
            if !(100..=599).contains(&expected_status) {
                problems.add(
                    format!("{base}.expected_status"),
                    "must be an HTTP status between 100 and 599",
                );
            }
            HealthCheckKind::Http {
                path,
                host,
                expected_status,
            }
        }
        other => {
            problems.add(
                format!("{base}.type"),
                format!("expected http or tcp, found {other:?}"),
            );
            HealthCheckKind::Tcp
        }
    };
    let mut threshold = |v: Option<usize>, key: &str, default: usize| {
        let v = v.unwrap_or(default);
        if v == 0 {
            problems.add(format!("{base}.{key}"), "must be at least 1");
        }
        v.max(1)
    };
    let healthy_threshold = threshold(raw.healthy_threshold, "healthy_threshold", 2);
    let unhealthy_threshold = threshold(raw.unhealthy_threshold, "unhealthy_threshold", 3);
    HealthCheck {
        kind,
        interval: duration(
            &raw.interval,
            &format!("{base}.interval"),
            Duration::from_secs(5),
            problems,
        ),
        timeout: duration(
            &raw.timeout,
            &format!("{base}.timeout"),
            Duration::from_secs(1),
            problems,
        ),
        healthy_threshold,
        unhealthy_threshold,
    }
}

fn route(
    index: usize,
    raw: &RawRoute,
    config: &RawConfig,
    auth: &Auth,
    limits: &RateLimiting,
    problems: &mut Problems,
) -> Route {
    let upstreams = &config.upstreams;
    let broken = &config.broken_upstreams;
    let base = format!("routes[{index}]");
    let name_ok = !raw.name.is_empty()
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        problems.add(
            format!("{base}.name"),
            "must be non-empty letters, digits, '-', '_' or '.'",
        );
    }
    if !upstreams.contains_key(&raw.upstream) && !broken.contains(&raw.upstream) {
        problems.add(
            format!("{base}.upstream"),
            format!("unknown upstream {:?}", raw.upstream),
        );
    }
    let path_match = match raw.path_match.as_deref() {
        None | Some("prefix") => PathMatch::Prefix,
        Some("exact") => PathMatch::Exact,
        Some(other) => {
            problems.add(
                format!("{base}.path_match"),
                format!("expected prefix or exact, found {other:?}"),
            );
            PathMatch::Prefix
        }
    };
    let case_insensitive = match raw.path_case.as_deref() {
        None | Some("sensitive") => false,
        Some("insensitive") => true,
        Some(other) => {
            problems.add(
                format!("{base}.path_case"),
                format!("expected sensitive or insensitive, found {other:?}"),
            );
            false
        }
    };
    let strip_prefix = raw.strip_prefix.unwrap_or(false);
    if strip_prefix && path_match == PathMatch::Exact {
        problems.add(
            format!("{base}.strip_prefix"),
            "only applies with path_match: prefix",
        );
    }
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().flatten().enumerate() {
        match header_name(m) {
            Some(_) => {
                let m = m.to_ascii_uppercase();
                if methods.contains(&m) {
                    problems.add(
                        format!("{base}.methods[{i}]"),
                        format!("{m} is listed twice"),
                    );
                } else {
                    methods.push(m);
                }
            }
            None => problems.add(
                format!("{base}.methods[{i}]"),
                format!("invalid method {m:?}"),
            ),
        }
    }
    let auth_mode = match raw.auth.as_deref() {
        None if auth.providers.is_empty() && config.providers.is_empty() => AuthMode::None,
        None | Some("required") => AuthMode::Required,
        Some("optional") => AuthMode::Optional,
        Some("none") => AuthMode::None,
        Some(other) => {
            problems.add(
                format!("{base}.auth"),
                format!("expected required, optional or none, found {other:?}"),
            );
            AuthMode::None
        }
    };
    let providers = match &raw.providers {
        None => auth.providers.iter().map(|p| p.name.clone()).collect(),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                let known = auth.providers.iter().any(|p| &p.name == name)
                    || config.broken_providers.contains(name);
                if !known {
                    problems.add(
                        format!("{base}.providers[{i}]"),
                        format!("unknown provider {name:?}"),
                    );
                }
            }
            list.clone()
        }
    };
    if auth_mode != AuthMode::None && providers.is_empty() && config.broken_providers.is_empty() {
        problems.add(
            format!("{base}.auth"),
            "needs at least one provider in auth.providers",
        );
    }
    if let Some(policy) = &raw.policy {
        if !config.policies.contains_key(policy) && !config.broken_policies.contains(policy) {
            problems.add(
                format!("{base}.policy"),
                format!("unknown policy {policy:?}"),
            );
        }
    }
    let rate_limits = crate::limits::route_limits(
        &base,
        raw.rate_limits.as_deref().unwrap_or(&[]),
        auth_mode != AuthMode::None,
        limits,
        problems,
    );
    if auth_mode == AuthMode::None && raw.providers.is_some() {
        problems.add(
            format!("{base}.providers"),
            "does not apply with auth: none",
        );
    }
    Route {
        name: raw.name.clone(),
        host: raw.host.clone(),
        path: raw.path.clone(),
        path_match,
        case_insensitive,
        methods,
        upstream: raw.upstream.clone(),
        strip_prefix,
        auth: auth_mode,
        providers,
        keep_authorization: raw.keep_authorization.unwrap_or(false),
        policy: raw.policy.clone(),
        rate_limits,
        // Resolved against `server.http.max_body` by `validate`.
        max_body: crate::http::byte_size(&raw.max_body, &format!("{base}.max_body"), 0, problems),
    }
}

/// Parses and validates, reporting every problem of both steps.
pub(crate) fn parse(yaml: &str) -> Result<Config, ConfigError> {
    let mut problems = Problems::default();
    let raw = read_raw(yaml, &mut problems);
    if problems.0.iter().any(|p| p.path.is_empty()) {
        // The file's top level could not be read: checks below it would only add noise.
        return Err(ConfigError {
            problems: problems.0,
        });
    }
    let config = validate(&raw, &mut problems);
    problems.finish(config)
}

fn validate(raw: &RawConfig, problems: &mut Problems) -> Config {
    let s = &raw.server;
    let threads = s.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        problems.add("server.threads", "must be at least 1");
    }
    let server = Server {
        threads: threads.max(1),
        work_stealing: s.work_stealing.unwrap_or(true),
        grace_period: duration(
            &s.grace_period,
            "server.grace_period",
            Duration::from_secs(5),
            problems,
        ),
        graceful_shutdown_timeout: duration(
            &s.graceful_shutdown_timeout,
            "server.graceful_shutdown_timeout",
            Duration::from_secs(10),
            problems,
        ),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size.unwrap_or(128),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        http: crate::http::http(s.http.as_ref().unwrap_or(&Default::default()), problems),
    };
    let listen = Listen {
        http: socket_addr(&raw.listen.http, "listen.http", "0.0.0.0:8080", problems),
    };
    let metrics = Metrics {
        listen: socket_addr(
            &raw.metrics.listen,
            "metrics.listen",
            "127.0.0.1:9091",
            problems,
        ),
    };
    if metrics.listen == listen.http {
        problems.add("metrics.listen", "must differ from listen.http");
    }
    let logging = Logging {
        level: raw
            .logging
            .level
            .clone()
            .unwrap_or_else(|| "info".to_owned()),
        access_log: raw.logging.access_log.unwrap_or(true),
    };

    let auth = crate::auth::auth(&raw.auth, &raw.providers, problems);
    let rate_limiting = crate::limits::rate_limiting(&raw.rate_limiting, problems);
    let mut policies = std::collections::BTreeMap::new();
    for (name, p) in &raw.policies {
        match tollgate_policy::Policy::compile(name, p) {
            Ok(policy) => {
                policies.insert(name.clone(), std::sync::Arc::new(policy));
            }
            Err(errs) => {
                for e in errs {
                    let path = if e.path.is_empty() {
                        format!("policies.{name}")
                    } else {
                        format!("policies.{name}.{}", e.path)
                    };
                    problems.add(path, e.error.to_string());
                }
            }
        }
    }
    let upstreams: Vec<Upstream> = raw
        .upstreams
        .iter()
        .map(|(name, u)| upstream(name, u, problems))
        .collect();

    if raw.routes.is_empty() && !problems.0.iter().any(|p| p.path.starts_with("routes")) {
        problems.add("routes", "at least one route is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    // Build a router to find duplicates exactly as the gateway will match them.
    let mut router: Router<usize> = Router::new();
    let mut accepted: Vec<usize> = Vec::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    // An upstream ignores letter case in paths or it does not: its first route says which.
    let mut case_of_upstream: HashMap<&str, (usize, bool)> = HashMap::new();
    for (index, r) in &raw.routes {
        let mut route = route(*index, r, raw, &auth, &rate_limiting, problems);
        let (first, insensitive) = *case_of_upstream
            .entry(r.upstream.as_str())
            .or_insert((*index, route.case_insensitive));
        if insensitive != route.case_insensitive {
            problems.add(
                format!("routes[{index}].path_case"),
                format!(
                    "routes[{first}] sends upstream {:?} paths with path_case: {}; an upstream \
                     ignores letter case or does not, so every route to it must say the same \
                     (or a route compared case-sensitively would reach what another protects \
                     under a different case)",
                    r.upstream,
                    if insensitive {
                        "insensitive"
                    } else {
                        "sensitive"
                    }
                ),
            );
        }
        if route.max_body == 0 {
            route.max_body = server.http.max_body;
        }
        // Requests are matched on their normalised path, so a route path that normalises to
        // something else could never match as written.
        match tollgate_canonical::normalize_path(route.path.as_bytes(), &server.http.path) {
            Ok(normal) if normal == route.path || !route.path.starts_with('/') => {}
            Ok(normal) => problems.add(
                format!("routes[{index}].path"),
                format!("requests are matched on normalised paths: write {normal:?}"),
            ),
            Err(e) if tollgate_router::is_clean_path(&route.path) => {
                problems.add(format!("routes[{index}].path"), e.to_string())
            }
            Err(_) => {}
        }
        if let Some(first) = names.insert(&r.name, *index) {
            problems.add(
                format!("routes[{index}].name"),
                format!(
                    "duplicate route name {:?}, first used by routes[{first}]",
                    r.name
                ),
            );
        }
        let methods: Vec<&str> = route.methods.iter().map(String::as_str).collect();
        let spec = RouteSpec::new(
            route.host.as_deref(),
            &route.path,
            route.path_match,
            &methods,
        )
        .case_insensitive(route.case_insensitive);
        match router.insert(spec, *index) {
            Ok(()) => accepted.push(*index),
            Err(tollgate_router::InsertError::Conflict { existing }) => {
                // The router numbers only the routes it accepted.
                let first = accepted[existing];
                problems.add(
                    format!("routes[{index}]"),
                    format!(
                        "duplicate route: routes[{first}] already matches the same host, path and methods"
                    ),
                );
            }
            Err(tollgate_router::InsertError::CaseConflict { existing }) => {
                let first = accepted[existing];
                problems.add(
                    format!("routes[{index}].path"),
                    format!(
                        "routes[{first}] has the same host and the same path but for letter case \
                         (or a trailing / or the match kind), and one of the two has path_case: \
                         insensitive"
                    ),
                );
            }
            Err(e @ tollgate_router::InsertError::InvalidPath) => {
                problems.add(format!("routes[{index}].path"), e.to_string())
            }
            Err(e @ tollgate_router::InsertError::InvalidHost) => {
                problems.add(format!("routes[{index}].host"), e.to_string())
            }
        }
        routes.push(route);
    }
    Config {
        server,
        listen,
        metrics,
        logging,
        auth,
        policies,
        rate_limiting,
        upstreams,
        routes,
    }
}
