//! The read-only admin view, on the metrics listener: what the running gateway holds, as
//! JSON. `GET /admin/config` (the live config, secrets removed, and its generation),
//! `/admin/routes`, `/admin/upstreams` (each backend's health, ejection and load),
//! `/admin/keys` (each provider's keys: kid, alg, kty, source and age; never key
//! material), `/admin/revocations` (the deny list's source and counts, and the subjects
//! pushed by Shared Signals).
//!
//! Nothing here changes state: every other method is refused. Only loopback clients are
//! answered, unless `metrics.admin.bearer_file` is set; then every request must carry its
//! token, from any address.

use crate::request::runtime::{RuntimeSnapshot, Source};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Configs loaded by this process.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The admin view's record of a config just loaded from `file`.
pub fn source(
    file: &str,
    text: &str,
    config: tollgate_config::Config,
    admin_bearer: Option<Vec<u8>>,
) -> Source {
    let mut redacted = serde_yaml::from_str::<Value>(text).unwrap_or(Value::Null);
    crate::util::redact::config(&mut redacted);
    let digest = crate::util::digest::sha256(&[text.as_bytes()]);
    Source {
        generation: GENERATION.fetch_add(1, Ordering::AcqRel) + 1,
        file: file.to_owned(),
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        loaded_unix: crate::util::clock::unix_seconds(),
        redacted,
        config,
        admin_bearer,
    }
}

/// Reads `metrics.admin.bearer_file`: at least 32 bytes, a trailing newline dropped.
#[allow(clippy::disallowed_methods, reason = "config loading, off the workers")]
pub fn read_bearer(path: &str) -> Result<Vec<u8>, String> {
    let mut token = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    while token.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        token.pop();
    }
    if token.len() < 32 {
        return Err(format!("{path} must hold a token of at least 32 bytes"));
    }
    Ok(token)
}

/// Whether request `req` from `peer` may read the view: `Err` with the status to answer
/// (401 without the token, 403 off loopback).
pub fn admitted(
    bearer: Option<&[u8]>,
    peer: Option<IpAddr>,
    req: &pingora_http::RequestHeader,
) -> Result<(), u16> {
    match bearer {
        Some(token) if crate::identity::credentials::carries_bearer(req, token) => Ok(()),
        Some(_) => Err(401),
        None if peer.is_some_and(|p| p.is_loopback()) => Ok(()),
        None => Err(403),
    }
}

/// The document at `path` (under `/admin/`), or `None` for an unknown path.
pub fn document(snapshot: &RuntimeSnapshot, path: &str) -> Option<Value> {
    let source = snapshot.source.as_deref();
    Some(match path {
        "/admin/config" => json!({
            "generation": source.map(|s| s.generation),
            "file": source.map(|s| s.file.as_str()),
            "sha256": source.map(|s| s.sha256.as_str()),
            "loaded_unix": source.map(|s| s.loaded_unix),
            "config": source.map_or(Value::Null, |s| s.redacted.clone()),
        }),
        "/admin/routes" => json!({
            "generation": source.map(|s| s.generation),
            "routes": source.map_or_else(Vec::new, |s| s.config.routes.iter().map(route).collect()),
        }),
        "/admin/upstreams" => {
            let mut clusters: Vec<_> = snapshot.clusters.values().collect();
            clusters.sort_by(|a, b| a.name.cmp(&b.name));
            json!({"upstreams": clusters.iter().map(|c| c.view()).collect::<Vec<_>>()})
        }
        "/admin/keys" => json!({
            "providers": snapshot.auth.providers.iter().map(|p| p.view()).collect::<Vec<_>>(),
        }),
        "/admin/revocations" => json!({
            "deny_list": snapshot.auth.revocation().map(|r| r.view()),
            "pushed_subjects": crate::identity::signals::PUSHED.subjects(),
            "shared_signals": snapshot.signals.as_ref().map(|s| s.path.clone()),
        }),
        _ => return None,
    })
}

fn route(r: &tollgate_config::Route) -> Value {
    json!({
        "name": r.name,
        "host": r.host,
        "path": r.path,
        "path_match": format!("{:?}", r.path_match).to_lowercase(),
        "methods": r.methods,
        "auth": format!("{:?}", r.auth).to_lowercase(),
        "providers": r.providers,
        "policy": r.policy,
        "ext_authz": r.ext_authz,
        "upstreams": r.targets.iter().map(|t| json!({
            "name": t.upstream,
            "weight": t.weight,
            "conditional": !t.when.is_empty(),
        })).collect::<Vec<_>>(),
        "mirror": r.mirror.as_ref().map(|m| m.upstream.as_str()),
        "rate_limits": r.rate_limits.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        "resource": r.resource.as_ref().map(|res| res.id.as_str()),
        "step_up": r.step_up.is_some(),
        "dpop": format!("{:?}", r.dpop).to_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(authorization: Option<&str>) -> pingora_http::RequestHeader {
        let mut r = pingora_http::RequestHeader::build("GET", b"/admin/config", None).unwrap();
        if let Some(a) = authorization {
            r.insert_header("authorization", a).unwrap();
        }
        r
    }

    #[test]
    fn only_loopback_without_a_token_and_only_the_token_with_one() {
        let (lo, lan) = (
            Some(IpAddr::from([127, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 7])),
        );
        assert_eq!(admitted(None, lo, &req(None)), Ok(()));
        assert_eq!(
            admitted(None, Some("::1".parse().unwrap()), &req(None)),
            Ok(())
        );
        assert_eq!(admitted(None, lan, &req(None)), Err(403));
        assert_eq!(admitted(None, None, &req(None)), Err(403));
        let token = b"0123456789abcdef0123456789abcdef".as_slice();
        for scheme in ["Bearer", "bearer"] {
            let a = format!("{scheme} 0123456789abcdef0123456789abcdef");
            assert_eq!(admitted(Some(token), lan, &req(Some(&a))), Ok(()), "{a}");
        }
        assert_eq!(
            admitted(Some(token), lo, &req(None)),
            Err(401),
            "loopback needs it too"
        );
        assert_eq!(
            admitted(Some(token), lan, &req(Some("Bearer wrong"))),
            Err(401)
        );
    }
}
