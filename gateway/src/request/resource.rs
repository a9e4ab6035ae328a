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
use crate::request::respond::Schemes;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tollgate_config::{StepUp, TokenSource};

/// Every resource's metadata, by document path, then by authority.
#[derive(Default)]
pub struct Resources {
    by_path: HashMap<String, Vec<(String, Bytes)>>,
}

/// The path every document's path starts with.
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// What one compiled route of a resource enforces, for its document.
pub struct RouteFacts<'a> {
    pub resource: &'a tollgate_config::Resource,
    pub providers: &'a [Arc<Provider>],
    pub policy: Option<&'a tollgate_policy::Policy>,
    pub schemes: Schemes,
    pub require_certificate_binding: bool,
}

impl Resources {
    /// The documents of the resources `routes` serve, from what each route enforces.
    pub fn build<'a>(routes: impl IntoIterator<Item = RouteFacts<'a>>) -> Self {
        let mut grouped: BTreeMap<&str, Vec<RouteFacts<'a>>> = BTreeMap::new();
        for r in routes {
            grouped.entry(r.resource.id.as_str()).or_default().push(r);
        }
        let mut out = Resources::default();
        for routes in grouped.values() {
            let res = routes[0].resource;
            out.by_path
                .entry(res.metadata_path.clone())
                .or_default()
                .push((res.host.clone(), document(&res.id, routes)));
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

/// One resource's document, from its routes as compiled: their providers, policies,
/// schemes and binding.
fn document(id: &str, routes: &[RouteFacts<'_>]) -> Bytes {
    let mut issuers: Vec<&str> = Vec::new();
    let mut methods: Vec<&str> = Vec::new();
    let mut scopes: Vec<&str> = Vec::new();
    for r in routes {
        for p in r.providers.iter().filter(|p| p.api_keys.is_none()) {
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
        for s in r.policy.into_iter().flat_map(|p| p.scopes()) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    let takes_dpop = routes.iter().any(|r| r.schemes != Schemes::Bearer);
    let requires_dpop = routes.iter().all(|r| r.schemes == Schemes::Dpop);
    let requires_binding = routes.iter().all(|r| {
        r.require_certificate_binding || r.providers.iter().all(|p| p.require_certificate_binding)
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
