//! Cost of one policy decision on the request path: a realistic five-rule policy over the
//! claims of a Keycloak-style access token, for requests that are allowed early, allowed late,
//! denied by a deny rule, and denied by default (every rule tried).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};
use tollgate_policy::{DecidedBy, Policy, RawPolicy, RequestFacts};

const POLICY: &str = r#"
roles_claim: realm_access.roles
deny:
  - { claims: { suspended: true } }
allow:
  - { roles: { any_of: [orders-admin] } }
  - { roles: { all_of: [ops, oncall] }, methods: [POST, PUT, DELETE] }
  - { scopes: { all_of: [orders:read] }, methods: [GET, HEAD], claims: { "org.region": [eu, us] } }
  - { scopes: [orders:write, orders:admin], methods: [POST], claims: { tenant: acme, email_verified: true } }
"#;

fn claims(roles: &[&str], scope: &str, suspended: bool) -> Map<String, Value> {
    match json!({
        "iss": "https://id.example.com/realms/acme",
        "sub": "5f0c2b9e-6a1d-4c3b-9f7e-2d8a1b0c9e11",
        "aud": ["orders", "account"],
        "exp": 1_900_000_000,
        "iat": 1_899_999_700,
        "azp": "orders-web",
        "scope": scope,
        "email_verified": true,
        "tenant": "acme",
        "suspended": suspended,
        "org": { "region": "eu", "unit": "retail" },
        "realm_access": { "roles": roles },
        "resource_access": { "account": { "roles": ["view-profile", "manage-account"] } },
        "preferred_username": "alice",
    }) {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn rbac(c: &mut Criterion) {
    let raw: RawPolicy = serde_yaml::from_str(POLICY).unwrap();
    let policy = Policy::compile("orders", &raw).unwrap();
    let staff = [
        "default-roles-acme",
        "offline_access",
        "uma_authorization",
        "staff",
        "reader",
        "ops",
        "billing-viewer",
        "catalog-editor",
    ];
    let mut admin = staff.to_vec();
    admin.push("orders-admin");

    let scope = "openid profile email orders:read catalog:read";
    let cases = [
        (
            "allow_first_rule",
            "DELETE",
            claims(&admin, scope, false),
            DecidedBy::Allow(0),
        ),
        (
            "allow_scope_rule",
            "GET",
            claims(&staff, scope, false),
            DecidedBy::Allow(2),
        ),
        (
            "deny_rule",
            "GET",
            claims(&admin, scope, true),
            DecidedBy::Deny(0),
        ),
        (
            "deny_default",
            "POST",
            claims(&staff, scope, false),
            DecidedBy::Default,
        ),
    ];
    let mut g = c.benchmark_group("rbac_evaluate");
    for (name, method, claims, expected) in &cases {
        let req = RequestFacts::new(method, Some(claims));
        assert_eq!(policy.evaluate(&req).decided_by, *expected, "{name}");
        g.bench_function(*name, |b| b.iter(|| policy.evaluate(black_box(&req))));
    }
    g.finish();
}

criterion_group!(benches, rbac);
criterion_main!(benches);
