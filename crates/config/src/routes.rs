//! `routes`: what each route matches and what it asks of a request.

use crate::model::*;
use crate::problems::{header_name, Problems};
use crate::raw::*;

/// One route, checked against the upstreams, providers, policies and limits it names.
pub(crate) fn route(
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
        require_client_certificate: match raw.client_certificate.as_deref() {
            None | Some("any") => false,
            Some("required") => true,
            Some(other) => {
                problems.add(
                    format!("{base}.client_certificate"),
                    format!("expected any or required, found {other:?}"),
                );
                false
            }
        },
        require_certificate_binding: raw.require_certificate_binding.unwrap_or(false),
    }
}
