//! Property tests: `explain` reaches the same decision as `evaluate`; both agree with a naive
//! model of the documented semantics written over the raw policy; and neither compilation nor
//! evaluation panics on arbitrary input.
//!
//! Generated policies and claims draw names from small shared pools, so that rules match often
//! enough for the properties to say something.

use proptest::prelude::*;
use serde_json::{Map, Value};
use tollgate_policy::{
    DecidedBy, Mode, Policy, RawClaims, RawNames, RawPolicy, RawRule, RequestFacts,
};

const ROLES: &[&str] = &["admin", "ops", "oncall", "reader"];
const SCOPES: &[&str] = &["orders:read", "orders:write", "openid"];
const CLAIM_PATHS: &[&str] = &[
    "tenant",
    "org.region",
    "email_verified",
    "n",
    "suspended",
    "roles",
];
const METHODS: &[&str] = &["GET", "POST", "head", "DELETE"];
const KEYS: &[&str] = &[
    "roles",
    "scope",
    "scp",
    "tenant",
    "org",
    "region",
    "org.region",
    "email_verified",
    "n",
    "suspended",
    "realm_access",
];
const WORDS: &[&str] = &[
    "admin",
    "ops",
    "oncall",
    "reader",
    "orders:read",
    "orders:write",
    "openid orders:read",
    "orders:write openid",
    "acme",
    "eu",
    "us",
    "",
];

fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(pool).prop_map(str::to_owned)
}

fn names(pool: &'static [&'static str]) -> impl Strategy<Value = RawNames> {
    let list = || prop::collection::vec(pick(pool), 1..4);
    prop_oneof![
        list().prop_map(RawNames::List),
        list().prop_map(|l| RawNames::Match {
            any_of: Some(l),
            all_of: None
        }),
        list().prop_map(|l| RawNames::Match {
            any_of: None,
            all_of: Some(l)
        }),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        pick(&["acme", "eu", "us", "admin"]).prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        (0i64..3).prop_map(Value::from),
        Just(Value::from(1.0)),
    ]
}

fn expected() -> impl Strategy<Value = Value> {
    prop_oneof![
        scalar(),
        prop::collection::vec(scalar(), 1..4).prop_map(Value::Array)
    ]
}

fn claims_condition() -> impl Strategy<Value = RawClaims> {
    prop::collection::btree_map(pick(CLAIM_PATHS), expected(), 1..3)
        .prop_map(|m| RawClaims(m.into_iter().collect()))
}

fn rule() -> impl Strategy<Value = RawRule> {
    (
        prop::option::of(names(ROLES)),
        prop::option::of(names(SCOPES)),
        prop::option::of(claims_condition()),
        prop::option::of(prop::collection::vec(pick(METHODS), 1..3)),
    )
        .prop_map(|(roles, scopes, claims, methods)| {
            let empty = roles.is_none() && scopes.is_none() && claims.is_none();
            RawRule {
                roles,
                scopes,
                claims,
                // A rule needs a condition.
                methods: if empty && methods.is_none() {
                    Some(vec!["GET".to_owned()])
                } else {
                    methods
                },
            }
        })
}

fn policy() -> impl Strategy<Value = RawPolicy> {
    (
        prop::option::of(pick(&["enforce", "shadow"])),
        prop::option::of(pick(&["roles", "realm_access.roles"])),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..5),
    )
        .prop_map(|(mode, roles_claim, deny, allow)| RawPolicy {
            mode,
            roles_claim,
            deny,
            allow,
        })
}

/// Claims built from the same pools as the policies, of every JSON type.
fn pooled_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..3).prop_map(Value::from),
        Just(Value::from(1.0)),
        pick(WORDS).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(pick(KEYS), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn pooled_claims() -> impl Strategy<Value = Option<Map<String, Value>>> {
    prop::option::weighted(
        0.9,
        prop::collection::btree_map(pick(KEYS), pooled_json(), 0..6)
            .prop_map(|m| m.into_iter().collect()),
    )
}

/// Any JSON at all, keys and strings included.
fn wild_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
        pick(WORDS).prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(prop_oneof![".{0,8}", pick(KEYS)], inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---- the model ----

/// The nested path, else the whole path as one claim name.
fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let nested = || {
        let mut segments = path.split('.');
        let mut v = claims.get(segments.next()?)?;
        for s in segments {
            v = v.as_object()?.get(s)?;
        }
        Some(v)
    };
    nested().or_else(|| claims.get(path))
}

fn caller_names(v: Option<&Value>, split: bool) -> Option<Vec<String>> {
    match v? {
        Value::String(s) if split => Some(s.split_whitespace().map(str::to_owned).collect()),
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn names_hold(raw: &RawNames, have: Option<Vec<String>>) -> bool {
    let Some(have) = have else { return false };
    match raw {
        RawNames::List(l)
        | RawNames::Match {
            any_of: Some(l),
            all_of: None,
        } => l.iter().any(|n| have.contains(n)),
        RawNames::Match {
            any_of: None,
            all_of: Some(l),
        } => l.iter().all(|n| have.contains(n)),
        _ => unreachable!("generated policies are valid"),
    }
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(_) | Value::Bool(_), _) => a == b,
        _ => false,
    }
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn rule_holds(
    raw: &RawPolicy,
    rule: &RawRule,
    method: &str,
    claims: Option<&Map<String, Value>>,
) -> bool {
    if let Some(methods) = &rule.methods {
        if !methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return false;
        }
    }
    let needs_claims = rule.roles.is_some() || rule.scopes.is_some() || rule.claims.is_some();
    let Some(claims) = claims else {
        return !needs_claims;
    };
    if let Some(roles) = &rule.roles {
        let path = raw.roles_claim.as_deref().unwrap_or("roles");
        if !names_hold(roles, caller_names(lookup(claims, path), false)) {
            return false;
        }
    }
    if let Some(scopes) = &rule.scopes {
        let v = claims.get("scope").or_else(|| claims.get("scp"));
        if !names_hold(scopes, caller_names(v, true)) {
            return false;
        }
    }
    if let Some(RawClaims(entries)) = &rule.claims {
        for (path, expected) in entries {
            let Some(actual) = lookup(claims, path) else {
                return false;
            };
            let hit = as_list(actual)
                .iter()
                .any(|a| as_list(expected).iter().any(|e| scalar_eq(e, a)));
            if !hit {
                return false;
            }
        }
    }
    true
}

fn model(raw: &RawPolicy, method: &str, claims: Option<&Map<String, Value>>) -> (bool, DecidedBy) {
    let first = |rules: &[RawRule]| {
        rules
            .iter()
            .position(|r| rule_holds(raw, r, method, claims))
    };
    match (first(&raw.deny), first(&raw.allow)) {
        (Some(i), _) => (false, DecidedBy::Deny(i)),
        (None, Some(i)) => (true, DecidedBy::Allow(i)),
        (None, None) => (false, DecidedBy::Default),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn explain_agrees_with_evaluate(
        raw in policy(),
        method in prop_oneof![pick(METHODS), "[A-Za-z]{0,7}"],
        claims in pooled_claims(),
    ) {
        let p = Policy::compile("p", &raw).expect("generated policies are valid");
        let req = RequestFacts::new(&method, claims.as_ref());
        let decision = p.evaluate(&req);
        let explanation = p.explain(&req);
        prop_assert_eq!(explanation.decision, decision);
        // The traces say the same as the decision.
        let first = |rules: &[tollgate_policy::RuleTrace]| rules.iter().position(|r| r.matched);
        let expected_by = match (first(&explanation.deny), first(&explanation.allow)) {
            (Some(i), _) => DecidedBy::Deny(i),
            (None, Some(i)) => DecidedBy::Allow(i),
            (None, None) => DecidedBy::Default,
        };
        prop_assert_eq!(decision.decided_by, expected_by);
    }

    #[test]
    fn evaluate_follows_the_documented_semantics(
        raw in policy(),
        method in pick(METHODS),
        claims in pooled_claims(),
    ) {
        let p = Policy::compile("p", &raw).expect("generated policies are valid");
        let d = p.evaluate(&RequestFacts::new(&method, claims.as_ref()));
        prop_assert_eq!((d.allowed, d.decided_by), model(&raw, &method, claims.as_ref()));
        let shadow = raw.mode.as_deref() == Some("shadow");
        prop_assert_eq!(d.mode, if shadow { Mode::Shadow } else { Mode::Enforce });
        prop_assert_eq!(d.effective_allow(), d.allowed || shadow);
        if d.decided_by != DecidedBy::Default {
            prop_assert_eq!(d.required_scopes, "");
        }
        for scope in d.required_scopes.split(' ').filter(|s| !s.is_empty()) {
            prop_assert!(SCOPES.contains(&scope));
        }
    }

    #[test]
    fn evaluation_never_panics_on_arbitrary_claims(
        raw in policy(),
        method in ".{0,10}",
        claims in prop::collection::btree_map(
            prop_oneof![".{0,8}", pick(KEYS)],
            wild_json(),
            0..10,
        ),
    ) {
        let p = Policy::compile("p", &raw).expect("generated policies are valid");
        let claims: Map<String, Value> = claims.into_iter().collect();
        let req = RequestFacts::new(&method, Some(&claims));
        let d = p.evaluate(&req);
        prop_assert_eq!(p.explain(&req).decision, d);
        let _ = p.explain(&req).to_string();
    }

    #[test]
    fn compile_never_panics_on_arbitrary_names(
        mode in prop::option::of(".{0,8}"),
        roles_claim in prop::option::of("[a-z.]{0,8}"),
        names in prop::collection::vec(".{0,6}", 0..4),
        methods in prop::collection::vec(".{0,6}", 0..4),
        path in "[a-z.]{0,6}",
        value in wild_json(),
    ) {
        let rule = RawRule {
            roles: Some(RawNames::List(names.clone())),
            scopes: Some(RawNames::Match { any_of: None, all_of: Some(names) }),
            claims: Some(RawClaims(vec![(path, value)])),
            methods: Some(methods),
        };
        let raw = RawPolicy { mode, roles_claim, deny: vec![rule.clone()], allow: vec![rule] };
        match Policy::compile("p", &raw) {
            Ok(p) => {
                let _ = p.evaluate(&RequestFacts::anonymous("GET"));
            }
            Err(problems) => prop_assert!(!problems.is_empty()),
        }
    }
}
