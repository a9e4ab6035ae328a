//! OAuth protected resources (RFC 9728): the metadata document of each `routes[].resource`,
//! answered at `/.well-known/oauth-protected-resource` followed by the identifier's path,
//! and the checks a resource's tokens get on its routes (the audience, RFC 8707) and the
//! login they show (`step_up`, RFC 9470).
//!
//! A document is built once per snapshot from what the gateway enforces, so it cannot name
//! what the gateway does not do: `authorization_servers` are the issuers of the routes'
//! providers (never an API-key provider), `scopes_supported` the scopes their policies
//! name, `bearer_methods_supported` where the providers read tokens, the DPoP and
//! certificate-binding members where the routes take or require them.

use crate::identity::keys::Provider;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tollgate_config::{Config, DpopMode, StepUp, TokenSource};

/// Every resource's metadata, by document path, then by authority.
#[derive(Default)]
pub struct Resources {
    by_path: HashMap<String, Vec<(String, Bytes)>>,
}

/// The path every document's path starts with.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

impl Resources {
    /// The documents of `config`'s resources; `provider` finds a route's provider by name.
    pub fn build<'a>(
        config: &Config,
        provider: impl Fn(&str) -> Option<&'a Arc<Provider>>,
    ) -> Self {
        let mut grouped: BTreeMap<&str, Vec<&tollgate_config::Route>> = BTreeMap::new();
        for r in &config.routes {
            if let Some(res) = &r.resource {
                grouped.entry(res.id.as_str()).or_default().push(r);
            }
        }
        let mut out = Resources::default();
        for routes in grouped.values() {
            let res = routes[0].resource.as_ref().expect("grouped by resource");
            let providers: Vec<&Arc<Provider>> = routes
                .iter()
                .flat_map(|r| r.providers.iter().filter_map(|n| provider(n)))
                .collect();
            let doc = document(config, &res.id, routes, &providers);
            out.by_path
                .entry(res.metadata_path.clone())
                .or_default()
                .push((res.host.clone(), doc));
        }
        out
    }

    /// The document for a request to `path` on `host` (without its port): the one for that
    /// host, or the only one at that path (a gateway behind a proxy that rewrites `Host`).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<Bytes> {
        if !path.starts_with(WELL_KNOWN) {
            return None;
        }
        let docs = self.by_path.get(path)?;
        let host = host.map(str::to_ascii_lowercase);
        match docs.iter().find(|(h, _)| Some(h) == host.as_ref()) {
            Some((_, doc)) => Some(doc.clone()),
            None if docs.len() == 1 => Some(docs[0].1.clone()),
            None => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

fn document(
    config: &Config,
    id: &str,
    routes: &[&tollgate_config::Route],
    providers: &[&Arc<Provider>],
) -> Bytes {
    let mut issuers: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    for p in providers {
        if p.api_keys.is_some() {
            continue;
        }
        if !issuers.contains(&p.issuer.as_str()) {
            issuers.push(&p.issuer);
        }
        for s in &p.token_sources {
            let m = match s {
                TokenSource::Bearer => "header",
                TokenSource::Query(_) => "query",
                TokenSource::Header(_) | TokenSource::Cookie(_) => continue,
            };
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
    }
    let mut scopes: Vec<&str> = Vec::new();
    for r in routes {
        if let Some(policy) = r.policy.as_ref().and_then(|p| config.policies.get(p)) {
            for s in policy.scopes() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
    }
    let dpop_of = |r: &tollgate_config::Route| {
        let own = r.dpop;
        let from_providers = providers
            .iter()
            .filter(|p| r.providers.iter().any(|n| *n == *p.name))
            .map(|p| p.dpop);
        (own, from_providers.collect::<Vec<DpopMode>>())
    };
    let takes_dpop = routes.iter().any(|r| {
        let (own, ps) = dpop_of(r);
        own != DpopMode::Off || ps.iter().any(|m| *m != DpopMode::Off)
    });
    let requires_dpop = routes.iter().all(|r| {
        let (own, ps) = dpop_of(r);
        own == DpopMode::Required || (!ps.is_empty() && ps.iter().all(|m| *m == DpopMode::Required))
    });
    let requires_binding = routes.iter().all(|r| {
        r.require_certificate_binding
            || providers
                .iter()
                .filter(|p| r.providers.iter().any(|n| *n == *p.name))
                .all(|p| p.require_certificate_binding)
    });
    let mut doc = Map::new();
    doc.insert("resource".into(), id.into());
    doc.insert("authorization_servers".into(), json!(issuers));
    if !scopes.is_empty() {
        doc.insert("scopes_supported".into(), json!(scopes));
    }
    doc.insert("bearer_methods_supported".into(), json!(methods));
    if takes_dpop {
        let algs: Vec<&str> = tollgate_jwt::dpop::PROOF_ALGORITHMS
            .iter()
            .map(|a| a.as_str())
            .collect();
        doc.insert("dpop_signing_alg_values_supported".into(), json!(algs));
        doc.insert(
            "dpop_bound_access_tokens_required".into(),
            requires_dpop.into(),
        );
    }
    if requires_binding {
        doc.insert(
            "tls_client_certificate_bound_access_tokens".into(),
            true.into(),
        );
    }
    Bytes::from(serde_json::to_vec(&Value::Object(doc)).expect("JSON of strings"))
}

/// RFC 8707: a token used at a resource names it in `aud` (a string or a list).
pub fn audience_holds(claims: &Map<String, Value>, id: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == id,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(id)),
        _ => false,
    }
}

/// Why a token's login does not meet a route's `step_up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepUpMiss {
    /// `acr` missing or not one of the route's.
    Acr,
    /// `auth_time` missing or older than `max_age`.
    MaxAge,
}

/// RFC 9470 §3: whether the token's `acr` and `auth_time` meet `step_up` at `now`.
pub fn step_up_miss(step_up: &StepUp, claims: &Map<String, Value>, now: u64) -> Option<StepUpMiss> {
    if !step_up.acr.is_empty() {
        let acr = claims.get("acr").and_then(Value::as_str);
        if !acr.is_some_and(|a| step_up.acr.iter().any(|x| x == a)) {
            return Some(StepUpMiss::Acr);
        }
    }
    if let Some(max_age) = step_up.max_age {
        let auth_time = claims.get("auth_time").and_then(Value::as_f64);
        // A login in the future is no login: at most a minute of clock skew.
        let (now, max_age) = (now as f64, max_age.as_secs_f64());
        let recent = auth_time.is_some_and(|t| t + max_age >= now && t <= now + 60.0);
        if !recent {
            return Some(StepUpMiss::MaxAge);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn audience_must_name_the_resource_exactly() {
        let id = "https://api.example/mcp";
        assert!(audience_holds(&claims(json!({"aud": id})), id));
        assert!(audience_holds(&claims(json!({"aud": ["x", id]})), id));
        assert!(!audience_holds(
            &claims(json!({"aud": "https://api.example"})),
            id
        ));
        assert!(!audience_holds(
            &claims(json!({"aud": "https://api.example/mcp/"})),
            id
        ));
        assert!(!audience_holds(&claims(json!({})), id));
    }

    #[test]
    fn step_up_checks_acr_then_auth_time() {
        let s = StepUp {
            acr: vec!["phr".into(), "phrh".into()],
            max_age: Some(Duration::from_secs(300)),
        };
        let now = 10_000;
        assert_eq!(
            step_up_miss(&s, &claims(json!({"acr": "phr", "auth_time": 9_800})), now),
            None
        );
        assert_eq!(
            step_up_miss(&s, &claims(json!({"acr": "pwd", "auth_time": 9_800})), now),
            Some(StepUpMiss::Acr)
        );
        assert_eq!(
            step_up_miss(&s, &claims(json!({"auth_time": 9_800})), now),
            Some(StepUpMiss::Acr)
        );
        assert_eq!(
            step_up_miss(&s, &claims(json!({"acr": "phrh", "auth_time": 9_000})), now),
            Some(StepUpMiss::MaxAge)
        );
        assert_eq!(
            step_up_miss(&s, &claims(json!({"acr": "phrh"})), now),
            Some(StepUpMiss::MaxAge)
        );
        for future in [json!(now + 3600), json!(1e300), json!(u64::MAX)] {
            let c = claims(json!({"acr": "phr", "auth_time": future}));
            assert_eq!(
                step_up_miss(&s, &c, now),
                Some(StepUpMiss::MaxAge),
                "{future}"
            );
        }
        let skewed = claims(json!({"acr": "phr", "auth_time": now + 30}));
        assert_eq!(step_up_miss(&s, &skewed, now), None);
    }
}
