//! RBAC evaluation on arbitrary claims: the first line of the input is the method, the rest
//! the claims as JSON. `evaluate` (the request path's, allocation-free) and `explain` (the
//! tooling's) must reach the same verdict for every policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tollgate_policy::{Policy, RawPolicy, RequestFacts};

const POLICIES: &str = r#"
roles_and_scopes:
  deny: [{ claims: { suspended: true } }, { roles: [banned], methods: [POST, DELETE] }]
  allow:
    - { roles: [admin] }
    - { scopes: [read], methods: [GET, HEAD] }
    - { scopes: [write, admin], methods: [POST, PUT, PATCH, DELETE] }
nested_claims:
  roles_claim: realm_access.roles
  allow:
    - { claims: { tenant: acme, "org.level": 3 }, roles: [ops] }
    - { claims: { "https://example.com/groups": [eng] } }
shadow:
  mode: shadow
  allow: [{ roles: [x], scopes: [y] }]
"#;

fn policies() -> &'static Vec<Policy> {
    static P: OnceLock<Vec<Policy>> = OnceLock::new();
    P.get_or_init(|| {
        let raw: std::collections::BTreeMap<String, RawPolicy> =
            serde_yaml::from_str(POLICIES).expect("policies parse");
        raw.iter()
            .map(|(name, p)| Policy::compile(name, p).expect("policies compile"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, json) = text.split_once('\n').unwrap_or(("GET", text));
    let claims = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json).ok();
    let facts = RequestFacts::new(method, claims.as_ref());
    for policy in policies() {
        let decision = policy.evaluate(&facts);
        let explained = policy.explain(&facts);
        assert_eq!(
            decision.allowed, explained.decision.allowed,
            "evaluate and explain disagree"
        );
    }
});
