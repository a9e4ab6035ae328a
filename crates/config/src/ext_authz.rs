//! `auth.ext_authz`: external authorization services, with their defaults.

use crate::model::{ClaimHeader, ExtAuthz};
use crate::problems::{duration, header_name, Problems};
use crate::raw::{RawAuth, RawExtAuthz};
use std::collections::BTreeMap;
use std::time::Duration;

/// Headers a service may never set on the upstream request: framing, the request's own
/// identity and forwarding headers, which the gateway writes.
const NOT_SETTABLE: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Headers a denial may not pass to the client: framing, and what the gateway writes on
/// every answer (its type, gRPC status, request id).
const NOT_PASSABLE: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "content-type",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
    "date",
];

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

fn names(path: &str, list: Option<&Vec<String>>, problems: &mut Problems) -> Vec<http::HeaderName> {
    let mut out: Vec<http::HeaderName> = Vec::new();
    for (i, n) in list.into_iter().flatten().enumerate() {
        match header_name(n).and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()) {
            Some(h) if out.contains(&h) => problems.add(format!("{path}[{i}]"), "listed twice"),
            Some(h) => out.push(h),
            None => problems.add(
                format!("{path}[{i}]"),
                format!("{n:?} is not a header name"),
            ),
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
    let upstream_headers = names(
        &format!("{base}.upstream_headers"),
        s.upstream_headers.as_ref(),
        problems,
    );
    for (i, h) in upstream_headers.iter().enumerate() {
        let path = format!("{base}.upstream_headers[{i}]");
        if NOT_SETTABLE.contains(&h.as_str()) {
            problems.add(
                path,
                format!("{h} is written by the gateway and cannot come from the service"),
            );
        } else if forward_claims.iter().any(|c| c.header == *h) {
            problems.add(
                path,
                format!("{h} carries a forwarded claim (auth.forward_claims)"),
            );
        }
    }
    let client_headers = names(
        &format!("{base}.client_headers"),
        s.client_headers.as_ref(),
        problems,
    );
    for (i, h) in client_headers.iter().enumerate() {
        if NOT_PASSABLE.contains(&h.as_str()) {
            problems.add(
                format!("{base}.client_headers[{i}]"),
                format!("{h} is written by the gateway and cannot come from the service"),
            );
        }
    }
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
        cache_size: match s.cache_size {
            Some(0) => {
                problems.add(format!("{base}.cache_size"), "must be at least 1");
                1
            }
            Some(n) => n,
            None => 10_000,
        },
        failure_threshold: match s.failure_threshold {
            Some(0) => {
                problems.add(format!("{base}.failure_threshold"), "must be at least 1");
                1
            }
            Some(n) => n,
            None => 5,
        },
        open_for: duration(
            &s.open_for,
            &format!("{base}.open_for"),
            Duration::from_secs(10),
            problems,
        ),
        max_in_flight: match s.max_in_flight {
            Some(0) => {
                problems.add(format!("{base}.max_in_flight"), "must be at least 1");
                1
            }
            Some(n) => n,
            None => 64,
        },
    }
}
