//! `auth.ext_authz`: external authorization services, with their defaults.

use crate::model::{ClaimHeader, ExtAuthz};
use crate::problems::{duration, header_name, reserved_in, Problems, FORWARDING, FRAMING};
use crate::raw::{RawAuth, RawExtAuthz};
use std::collections::BTreeMap;
use std::time::Duration;

/// Headers a denial may not pass to the client beside [`FRAMING`]: what the gateway writes
/// on every answer (its type, gRPC status, request id, date).
const NOT_PASSABLE: &[&str] = &[
    "content-type",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    "date",
];

/// At least 1: `value`, else `default` (a 0 is reported at `path`).
fn at_least_one<T: Copy + PartialEq + From<u8>>(
    value: Option<T>,
    default: T,
    path: String,
    problems: &mut Problems,
) -> T {
    match value {
        Some(v) if v == T::from(0) => {
            problems.add(path, "must be at least 1");
            T::from(1)
        }
        Some(v) => v,
        None => default,
    }
}

pub(crate) fn services(
    raw: &RawAuth,
    forward_claims: &[ClaimHeader],
    problems: &mut Problems,
) -> BTreeMap<String, ExtAuthz> {
    let mut out = BTreeMap::new();
    for (name, s) in raw.ext_authz.iter().flatten() {
        let base = format!("auth.ext_authz.{name}");
        out.insert(name.clone(), service(&base, s, forward_claims, problems));
    }
    out
}

/// Header names at `path`, each once; `refuse` says why a name may not be listed, reported
/// at the name's own index.
fn names(
    path: &str,
    list: Option<&Vec<String>>,
    refuse: impl Fn(&http::HeaderName) -> Option<String>,
    problems: &mut Problems,
) -> Vec<http::HeaderName> {
    let mut out: Vec<http::HeaderName> = Vec::new();
    for (i, n) in list.into_iter().flatten().enumerate() {
        let at = format!("{path}[{i}]");
        match header_name(n).and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()) {
            Some(h) if out.contains(&h) => problems.add(at, "listed twice"),
            Some(h) => match refuse(&h) {
                Some(why) => problems.add(at, why),
                None => out.push(h),
            },
            None => problems.add(at, format!("{n:?} is not a header name")),
        }
    }
    out
}

fn service(
    base: &str,
    s: &RawExtAuthz,
    forward_claims: &[ClaimHeader],
    problems: &mut Problems,
) -> ExtAuthz {
    if let Some(problem) =
        crate::problems::fetch_url_problem(&s.url, s.insecure_http.unwrap_or(false))
    {
        problems.add(format!("{base}.url"), problem);
    } else if s.url.contains(['?', '#']) {
        problems.add(format!("{base}.url"), "must not have a query or fragment");
    }
    if s.ca_file.is_some() && !s.url.starts_with("https://") {
        problems.add(
            format!("{base}.ca_file"),
            "only applies with an https:// url",
        );
    }
    let claims_header = match s.claims_header.as_deref() {
        None => http::HeaderName::from_static("x-tollgate-claims"),
        Some(n) => {
            match header_name(n).and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()) {
                Some(h) => h,
                None => {
                    problems.add(
                        format!("{base}.claims_header"),
                        format!("{n:?} is not a header name"),
                    );
                    http::HeaderName::from_static("x-tollgate-claims")
                }
            }
        }
    };
    let gateways = |h: &http::HeaderName| {
        format!("{h} is written by the gateway and cannot come from the service")
    };
    let upstream_headers = names(
        &format!("{base}.upstream_headers"),
        s.upstream_headers.as_ref(),
        |h| {
            if reserved_in(h.as_str(), &[FRAMING, FORWARDING]) {
                Some(gateways(h))
            } else if forward_claims.iter().any(|c| c.header == *h) {
                Some(format!(
                    "{h} carries a forwarded claim (auth.forward_claims)"
                ))
            } else {
                None
            }
        },
        problems,
    );
    let client_headers = names(
        &format!("{base}.client_headers"),
        s.client_headers.as_ref(),
        |h| reserved_in(h.as_str(), &[FRAMING, NOT_PASSABLE]).then(|| gateways(h)),
        problems,
    );
    let timeout = duration(
        &s.timeout,
        &format!("{base}.timeout"),
        Duration::from_millis(500),
        problems,
    );
    ExtAuthz {
        url: s.url.trim_end_matches('/').to_owned(),
        ca_file: s.ca_file.clone(),
        timeout,
        failure_mode_allow: s.failure_mode_allow.unwrap_or(false),
        send_headers: names(
            &format!("{base}.send_headers"),
            s.send_headers.as_ref(),
            |_| None,
            problems,
        ),
        claims_header,
        upstream_headers,
        client_headers,
        cache_ttl: s.cache_ttl.as_ref().map(|_| {
            duration(
                &s.cache_ttl,
                &format!("{base}.cache_ttl"),
                Duration::from_secs(5),
                problems,
            )
        }),
        cache_size: at_least_one(s.cache_size, 10_000, format!("{base}.cache_size"), problems),
        failure_threshold: at_least_one(
            s.failure_threshold,
            5,
            format!("{base}.failure_threshold"),
            problems,
        ),
        open_for: duration(
            &s.open_for,
            &format!("{base}.open_for"),
            Duration::from_secs(10),
            problems,
        ),
        max_in_flight: at_least_one(
            s.max_in_flight,
            64,
            format!("{base}.max_in_flight"),
            problems,
        ),
    }
}
