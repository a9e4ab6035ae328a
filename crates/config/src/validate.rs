//! From YAML text to a typed [`Config`], collecting every problem with its path.

use crate::model::*;
use crate::problems::{duration, Problems};
use crate::raw::*;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_router::{RouteSpec, Router};

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
        watch_config: s.watch_config.as_ref().map(|_| {
            duration(
                &s.watch_config,
                "server.watch_config",
                Duration::from_secs(1),
                problems,
            )
        }),
        error_log: s.error_log.clone(),
        user: s.user.clone(),
        group: s.group.clone(),
        http: crate::http::http(s.http.as_ref().unwrap_or(&Default::default()), problems),
    };
    let listen = crate::tls::listen(&raw.listen, socket_addr, problems);
    let metrics = Metrics {
        listen: socket_addr(
            &raw.metrics.listen,
            "metrics.listen",
            "127.0.0.1:9091",
            problems,
        ),
        admin: Admin {
            enabled: raw
                .metrics
                .admin
                .as_ref()
                .and_then(|a| a.enabled)
                .unwrap_or(true),
            bearer_file: raw
                .metrics
                .admin
                .as_ref()
                .and_then(|a| a.bearer_file.clone()),
        },
    };
    if metrics.admin.bearer_file.as_deref() == Some("") {
        problems.add("metrics.admin.bearer_file", "must not be empty");
    }
    if metrics.listen == listen.http {
        problems.add("metrics.listen", "must differ from listen.http");
    }
    if listen.https == Some(metrics.listen) {
        problems.add("metrics.listen", "must differ from listen.https");
    }
    let logging = Logging {
        level: raw
            .logging
            .level
            .clone()
            .unwrap_or_else(|| "info".to_owned()),
        access_log: raw.logging.access_log.unwrap_or(true),
        buffer_lines: match raw.logging.buffer_lines {
            None => crate::model::DEFAULT_LOG_BUFFER_LINES,
            Some(0) => {
                problems.add("logging.buffer_lines", "must be at least 1");
                crate::model::DEFAULT_LOG_BUFFER_LINES
            }
            Some(n) => n,
        },
        access_log_sample: match raw.logging.access_log_sample {
            None => 1.0,
            Some(s) if (0.0..=1.0).contains(&s) => s,
            Some(s) => {
                problems.add(
                    "logging.access_log_sample",
                    format!("must be between 0 and 1, found {s}"),
                );
                1.0
            }
        },
        subject: match (
            raw.logging.subject.as_deref(),
            raw.logging.subject_salt.as_deref(),
        ) {
            (None | Some("omit"), None) => SubjectInLog::Omit,
            (Some("plain"), None) => SubjectInLog::Plain,
            (Some("hashed"), Some(salt)) if salt.len() >= 16 => SubjectInLog::Hashed {
                salt: salt.to_owned(),
            },
            (Some("hashed"), _) => {
                problems.add(
                    "logging.subject_salt",
                    "subject: hashed needs a subject_salt of at least 16 characters",
                );
                SubjectInLog::Omit
            }
            (Some("omit" | "plain"), Some(_)) | (None, Some(_)) => {
                problems.add("logging.subject_salt", "only applies with subject: hashed");
                SubjectInLog::Omit
            }
            (Some(other), _) => {
                problems.add(
                    "logging.subject",
                    format!("expected omit, plain or hashed, found {other:?}"),
                );
                SubjectInLog::Omit
            }
        },
        tracing: raw.logging.tracing.as_ref().map(|t| tracing(t, problems)),
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
        .map(|(name, u)| crate::upstreams::upstream(name, u, problems))
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
    let mut case_of_upstream: HashMap<String, (usize, bool)> = HashMap::new();
    for (index, r) in &raw.routes {
        let mut route = crate::routes::route(*index, r, raw, &auth, &rate_limiting, problems);
        let sent_to: Vec<String> = route
            .upstream_names()
            .chain(route.mirror.iter().map(|m| m.upstream.as_str()))
            .map(str::to_owned)
            .collect();
        for upstream in sent_to {
            let (first, insensitive) = *case_of_upstream
                .entry(upstream.clone())
                .or_insert((*index, route.case_insensitive));
            if insensitive != route.case_insensitive {
                problems.add(
                    format!("routes[{index}].path_case"),
                    format!(
                        "routes[{first}] sends upstream {upstream:?} paths with path_case: {}; \
                         an upstream ignores letter case or does not, so every route to it must \
                         say the same (or a route compared case-sensitively would reach what \
                         another protects under a different case)",
                        if insensitive {
                            "insensitive"
                        } else {
                            "sensitive"
                        }
                    ),
                );
            }
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
    // A shadow's minted token is never one that a primary takes: its audience differs from
    // every route's `upstream_token` audience, not only its own route's (that case is
    // reported by the route).
    let minted_for: HashMap<&str, usize> = raw
        .routes
        .iter()
        .zip(&routes)
        .filter_map(|((i, _), r)| Some((r.upstream_token.as_ref()?.audience.as_str(), *i)))
        .collect();
    for ((i, _), r) in raw.routes.iter().zip(&routes) {
        let Some(shadow) = r.mirror.as_ref().and_then(|m| m.upstream_token.as_ref()) else {
            continue;
        };
        match minted_for.get(shadow.audience.as_str()) {
            Some(other) if other != i => problems.add(
                format!("routes[{i}].mirror.upstream_token.audience"),
                format!(
                    "routes[{other}] mints its upstream's tokens for this audience: a shadow \
                     never gets a credential that a primary takes"
                ),
            ),
            _ => {}
        }
    }
    // Two identifiers served at one place would share one document (and the issuers of
    // only one of them): a metadata path and host (any port, any case) is one resource's.
    let mut served: HashMap<(&str, &str), (usize, &str)> = HashMap::new();
    for ((i, _), r) in raw.routes.iter().zip(&routes) {
        let Some(res) = &r.resource else { continue };
        let at = (res.host.as_str(), res.metadata_path.as_str());
        match served.get(&at) {
            Some((first, id)) if *id != res.id => problems.add(
                format!("routes[{i}].resource"),
                format!(
                    "its metadata would be served where routes[{first}].resource's ({id:?}) is: \
                     give one identifier the same spelling everywhere, or different paths"
                ),
            ),
            Some(_) => {}
            None => {
                served.insert(at, (*i, res.id.as_str()));
            }
        }
    }
    let warnings = warnings(&auth, &routes);
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
        warnings,
    }
}

/// What is allowed but probably not meant.
fn warnings(auth: &Auth, routes: &[Route]) -> Vec<Problem> {
    let mut out = Vec::new();
    // The gateway answers a resource's metadata path itself, before any route.
    for (i, r) in routes.iter().enumerate() {
        let shadowed = routes
            .iter()
            .filter_map(|o| o.resource.as_ref())
            .any(|res| r.path == res.metadata_path);
        if shadowed {
            out.push(Problem {
                path: format!("routes[{i}].path"),
                message: "is a protected resource's metadata path, which the gateway answers \
                          itself: GET and HEAD never reach this route"
                    .to_owned(),
            });
        }
    }
    // A DPoP proof names the URI it is for; without a route `host` or a public origin the
    // gateway can only compare it with the request's own `Host`, which the client writes:
    // an unused proof made for another site that routes here passes once.
    if auth.dpop.public_origins.is_empty() {
        for (i, r) in routes.iter().enumerate() {
            let takes_dpop = r.auth != AuthMode::None
                && (r.dpop != DpopMode::Off
                    || auth
                        .providers
                        .iter()
                        .any(|p| r.providers.contains(&p.name) && p.dpop != DpopMode::Off));
            if takes_dpop && r.host.is_none() {
                out.push(Problem {
                    path: format!("routes[{i}]"),
                    message: "takes DPoP proofs but has no host, and auth.dpop.public_origins is \
                              unset: a proof's htu is checked against the Host the client sent"
                        .to_owned(),
                });
            }
        }
    }
    out
}

/// `logging.tracing`, with its defaults.
fn tracing(raw: &RawTracing, problems: &mut Problems) -> Tracing {
    let path = "logging.tracing";
    if let Some(problem) = crate::problems::fetch_url_problem(&raw.endpoint, true) {
        problems.add(format!("{path}.endpoint"), problem);
    }
    let sample_ratio = match raw.sample_ratio {
        None => 0.01,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            problems.add(
                format!("{path}.sample_ratio"),
                format!("must be between 0 and 1, found {r}"),
            );
            0.01
        }
    };
    let continue_from = match raw.continue_from.as_deref() {
        None | Some("trusted_proxies") => ContinueFrom::TrustedProxies,
        Some("any") => ContinueFrom::Any,
        Some("none") => ContinueFrom::None,
        Some(other) => {
            problems.add(
                format!("{path}.continue_from"),
                format!("expected trusted_proxies, any or none, found {other:?}"),
            );
            ContinueFrom::TrustedProxies
        }
    };
    let mut at_least_one = |field: &str, v: Option<usize>, default: usize| match v {
        Some(0) => {
            problems.add(format!("{path}.{field}"), "must be at least 1");
            default
        }
        v => v.unwrap_or(default),
    };
    let queue_size = at_least_one("queue_size", raw.queue_size, 4096);
    let batch_size = at_least_one("batch_size", raw.batch_size, 512);
    let service_name = raw
        .service_name
        .clone()
        .unwrap_or_else(|| "tollgate".to_owned());
    if service_name.is_empty() {
        problems.add(format!("{path}.service_name"), "must not be empty");
    }
    Tracing {
        endpoint: raw.endpoint.clone(),
        sample_ratio,
        continue_from,
        service_name,
        queue_size,
        batch_size,
        batch_delay: duration(
            &raw.batch_delay,
            "logging.tracing.batch_delay",
            Duration::from_secs(1),
            problems,
        ),
        timeout: duration(
            &raw.timeout,
            "logging.tracing.timeout",
            Duration::from_secs(2),
            problems,
        ),
    }
}
