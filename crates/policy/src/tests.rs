//! Unit tests: each condition kind and their combinations, rule precedence, modes, anonymous
//! callers, compile problems with their paths, and explanations.

use crate::*;
use serde_json::{json, Map, Value};

/// The policy of the configuration guide, as a route would reference it.
const ORDERS: &str = r#"
mode: enforce
roles_claim: roles
deny:
  - { claims: { suspended: true } }
allow:
  - { roles: { any_of: [admin] } }
  - { roles: [reader, auditor] }
  - { roles: { all_of: [ops, oncall] } }
  - { scopes: { all_of: [orders:read] }, methods: [GET, HEAD] }
  - { scopes: { any_of: [orders:write, orders:admin] }, methods: [POST] }
  - { claims: { tenant: acme, email_verified: true } }
  - { claims: { "org.region": [eu, us] } }
"#;

fn raw(yaml: &str) -> RawPolicy {
    serde_yaml::from_str(yaml).unwrap()
}

fn policy(yaml: &str) -> Policy {
    Policy::compile("p", &raw(yaml)).unwrap_or_else(|e| panic!("{e:?}"))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The decision for `method` with `claims`, after checking that `explain` agrees.
fn decide<'p>(p: &'p Policy, method: &str, claims: &Value) -> Decision<'p> {
    let claims = obj(claims.clone());
    let req = RequestFacts::new(method, Some(&claims));
    let d = p.evaluate(&req);
    assert_eq!(p.explain(&req).decision, d);
    d
}

fn allows(p: &Policy, method: &str, claims: Value) -> bool {
    decide(p, method, &claims).allowed
}

fn problems(yaml: &str) -> Vec<String> {
    match Policy::compile("p", &raw(yaml)) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// Deserializes as the config crate does, returning serde's path and message on failure.
fn serde_problem(yaml: &str) -> String {
    let value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    match serde_path_to_error::deserialize::<_, RawPolicy>(value) {
        Ok(raw) => panic!("parsed: {raw:?}"),
        Err(e) => format!("{}: {}", e.path(), e.inner()),
    }
}

// ---- roles ----

#[test]
fn roles_any_of_needs_one_listed_role() {
    let p = policy("allow: [{ roles: { any_of: [admin, ops] } }]");
    assert!(allows(&p, "GET", json!({"roles": ["user", "ops"]})));
    assert!(!allows(&p, "GET", json!({"roles": ["user"]})));
    assert!(!allows(&p, "GET", json!({"roles": []})));
}

#[test]
fn roles_list_shorthand_is_any_of() {
    let p = policy("allow: [{ roles: [reader, auditor] }]");
    assert!(allows(&p, "GET", json!({"roles": ["auditor"]})));
    assert!(allows(&p, "GET", json!({"roles": ["reader", "x"]})));
    assert!(!allows(&p, "GET", json!({"roles": ["writer"]})));
}

#[test]
fn roles_all_of_needs_every_role() {
    let p = policy("allow: [{ roles: { all_of: [ops, oncall] } }]");
    assert!(allows(&p, "GET", json!({"roles": ["oncall", "x", "ops"]})));
    assert!(!allows(&p, "GET", json!({"roles": ["ops"]})));
    assert!(!allows(&p, "GET", json!({"roles": "ops"})));
}

#[test]
fn roles_claim_may_be_a_single_string_which_is_not_split() {
    let p = policy("allow: [{ roles: [admin] }]");
    assert!(allows(&p, "GET", json!({"roles": "admin"})));
    assert!(!allows(&p, "GET", json!({"roles": "admin ops"})));
}

#[test]
fn roles_claim_of_other_types_fails_and_non_strings_in_arrays_are_skipped() {
    let p = policy("allow: [{ roles: [admin] }]");
    assert!(!allows(&p, "GET", json!({"roles": 1})));
    assert!(!allows(&p, "GET", json!({"roles": {"admin": true}})));
    assert!(!allows(&p, "GET", json!({"roles": null})));
    assert!(!allows(&p, "GET", json!({})));
    assert!(allows(
        &p,
        "GET",
        json!({"roles": [1, null, ["admin"], "admin"]})
    ));
    assert!(!allows(&p, "GET", json!({"roles": [1, null, ["admin"]]})));
}

#[test]
fn roles_claim_is_a_dotted_path() {
    let p = policy("roles_claim: realm_access.roles\nallow: [{ roles: [admin] }]");
    assert_eq!(p.roles_claim(), "realm_access.roles");
    assert!(allows(
        &p,
        "GET",
        json!({"realm_access": {"roles": ["admin"]}})
    ));
    assert!(!allows(&p, "GET", json!({"roles": ["admin"]})));
    assert!(!allows(&p, "GET", json!({"realm_access": ["admin"]})));
}

#[test]
fn claim_path_lookup_is_public_and_reads_literal_dotted_names() {
    let claims = json!({
        "https://example.com/roles": ["admin"],
        "realm_access": {"roles": ["ops"]},
        "a.b": "literal",
        "a": {"b": "nested"}
    });
    let claims = claims.as_object().unwrap();
    let at = |path: &str| ClaimPath::parse(path).unwrap().lookup(claims).cloned();
    assert_eq!(at("https://example.com/roles"), Some(json!(["admin"])));
    assert_eq!(at("realm_access.roles"), Some(json!(["ops"])));
    assert_eq!(at("a.b"), Some(json!("nested")), "the nested path wins");
    assert_eq!(at("nope.x"), None);
    assert_eq!(
        ClaimPath::parse("https://example.com/roles")
            .unwrap()
            .as_str(),
        "https://example.com/roles"
    );
    assert!(ClaimPath::parse("a..b").is_none());
}

#[test]
fn claim_names_containing_dots_are_found_when_the_nested_path_leads_nowhere() {
    let p = policy("roles_claim: https://example.com/roles\nallow: [{ roles: [admin] }]");
    assert!(allows(
        &p,
        "GET",
        json!({"https://example.com/roles": ["admin"]})
    ));
    let p = policy("allow: [{ claims: { a.b: 1 } }]");
    assert!(allows(&p, "GET", json!({"a.b": 1})));
    assert!(allows(&p, "GET", json!({"a.b": 1, "a": "x"})));
    assert!(allows(&p, "GET", json!({"a.b": 2, "a": {"b": 1}})));
    assert!(!allows(&p, "GET", json!({"a.b": 1, "a": {"b": 2}})));
}

// ---- scopes ----

#[test]
fn scopes_from_the_space_separated_scope_claim() {
    let p = policy("allow: [{ scopes: { all_of: [orders:read, orders:list] } }]");
    assert!(allows(
        &p,
        "GET",
        json!({"scope": "openid orders:list  orders:read"})
    ));
    assert!(!allows(&p, "GET", json!({"scope": "openid orders:read"})));
    assert!(!allows(
        &p,
        "GET",
        json!({"scope": "orders:read,orders:list"})
    ));
}

#[test]
fn scopes_from_the_scp_array_or_string() {
    let p = policy("allow: [{ scopes: { any_of: [orders:write, orders:admin] } }]");
    assert!(allows(&p, "GET", json!({"scp": ["orders:admin"]})));
    assert!(allows(&p, "GET", json!({"scp": "User.Read orders:write"})));
    assert!(!allows(&p, "GET", json!({"scp": ["orders:read"]})));
    assert!(!allows(&p, "GET", json!({"scp": 7})));
}

#[test]
fn scope_claim_wins_over_scp() {
    let p = policy("allow: [{ scopes: [a] }]");
    assert!(!allows(&p, "GET", json!({"scope": "b", "scp": ["a"]})));
    assert!(allows(&p, "GET", json!({"scope": "a", "scp": ["b"]})));
}

#[test]
fn scopes_list_shorthand_is_any_of() {
    let p = policy("allow: [{ scopes: [a, b] }]");
    assert!(allows(&p, "GET", json!({"scope": "b"})));
    assert!(!allows(&p, "GET", json!({"scope": "c"})));
    assert!(!allows(&p, "GET", json!({})));
}

#[test]
fn roles_are_not_scopes() {
    let p = policy("allow: [{ scopes: [admin] }, { roles: [orders:read] }]");
    assert!(!allows(
        &p,
        "GET",
        json!({"roles": ["admin"], "scope": "orders:read"})
    ));
}

// ---- claims ----

#[test]
fn claims_equality_with_strings_booleans_and_numbers() {
    let p = policy("allow: [{ claims: { tenant: acme, email_verified: true, level: 3 } }]");
    let ok = json!({"tenant": "acme", "email_verified": true, "level": 3});
    assert!(allows(&p, "GET", ok));
    assert!(allows(
        &p,
        "GET",
        json!({"tenant": "acme", "email_verified": true, "level": 3.0})
    ));
    for bad in [
        json!({"tenant": "acme", "email_verified": false, "level": 3}),
        json!({"tenant": "ACME", "email_verified": true, "level": 3}),
        json!({"tenant": "acme", "email_verified": "true", "level": 3}),
        json!({"tenant": "acme", "email_verified": true, "level": "3"}),
        json!({"tenant": "acme", "email_verified": true, "level": 4}),
        json!({"tenant": "acme", "email_verified": true}),
    ] {
        assert!(!allows(&p, "GET", bad.clone()), "{bad}");
    }
}

#[test]
fn numbers_compare_by_value_across_representations() {
    let p = policy("allow: [{ claims: { n: -2, big: 18446744073709551615, f: 0.5 } }]");
    assert!(allows(
        &p,
        "GET",
        json!({"n": -2, "big": u64::MAX, "f": 0.5})
    ));
    assert!(!allows(&p, "GET", json!({"n": -2, "big": -1, "f": 0.5})));
    assert!(!allows(
        &p,
        "GET",
        json!({"n": 18446744073709551614u64, "big": u64::MAX, "f": 0.5})
    ));
}

#[test]
fn claims_scalar_expected_matches_an_array_claim_containing_it() {
    let p = policy("allow: [{ claims: { groups: staff } }]");
    assert!(allows(&p, "GET", json!({"groups": ["x", "staff"]})));
    assert!(!allows(&p, "GET", json!({"groups": ["x"]})));
    assert!(!allows(&p, "GET", json!({"groups": [["staff"]]})));
}

#[test]
fn claims_list_expected_is_membership() {
    let p = policy(r#"allow: [{ claims: { "org.region": [eu, us] } }]"#);
    assert!(allows(&p, "GET", json!({"org": {"region": "eu"}})));
    assert!(allows(
        &p,
        "GET",
        json!({"org": {"region": ["apac", "us"]}})
    ));
    assert!(!allows(&p, "GET", json!({"org": {"region": ["apac"]}})));
    assert!(!allows(&p, "GET", json!({"org": {"region": "apac"}})));
    assert!(!allows(&p, "GET", json!({"org": "eu"})));
    assert!(!allows(&p, "GET", json!({"region": "eu"})));
}

#[test]
fn claims_mixed_type_lists() {
    let p = policy("allow: [{ claims: { tier: [1, gold, true] } }]");
    assert!(allows(&p, "GET", json!({"tier": 1})));
    assert!(allows(&p, "GET", json!({"tier": "gold"})));
    assert!(allows(&p, "GET", json!({"tier": true})));
    assert!(!allows(&p, "GET", json!({"tier": "1"})));
    assert!(!allows(&p, "GET", json!({"tier": false})));
}

#[test]
fn claims_missing_null_or_object_fail() {
    let p = policy("allow: [{ claims: { sub: alice } }]");
    assert!(!allows(&p, "GET", json!({})));
    assert!(!allows(&p, "GET", json!({"sub": null})));
    assert!(!allows(&p, "GET", json!({"sub": {"alice": true}})));
}

#[test]
fn deep_paths_stop_at_non_objects() {
    let p = policy("allow: [{ claims: { a.b.c: x } }]");
    assert!(allows(&p, "GET", json!({"a": {"b": {"c": "x"}}})));
    assert!(!allows(&p, "GET", json!({"a": {"b": "c"}})));
    assert!(!allows(&p, "GET", json!({"a": [{"b": {"c": "x"}}]})));
}

// ---- methods and combinations ----

#[test]
fn methods_compare_ignoring_case() {
    let p = policy("allow: [{ methods: [get, Head] }]");
    assert!(allows(&p, "GET", json!({})));
    assert!(allows(&p, "get", json!({})));
    assert!(allows(&p, "HEAD", json!({})));
    assert!(!allows(&p, "POST", json!({})));
}

#[test]
fn every_condition_of_a_rule_must_hold() {
    let p = policy(
        "allow: [{ roles: [staff], scopes: [orders:write], claims: { tenant: acme }, methods: [POST] }]",
    );
    let all = json!({"roles": ["staff"], "scope": "orders:write", "tenant": "acme"});
    assert!(allows(&p, "POST", all.clone()));
    assert!(!allows(&p, "GET", all));
    assert!(!allows(
        &p,
        "POST",
        json!({"roles": ["staff"], "scope": "orders:write", "tenant": "other"})
    ));
    assert!(!allows(
        &p,
        "POST",
        json!({"roles": ["staff"], "tenant": "acme"})
    ));
    assert!(!allows(
        &p,
        "POST",
        json!({"scope": "orders:write", "tenant": "acme"})
    ));
}

#[test]
fn the_guide_policy() {
    let p = policy(ORDERS);
    let d = decide(&p, "DELETE", &json!({"roles": ["admin"]}));
    assert_eq!(d.decided_by, DecidedBy::Allow(0));
    let d = decide(&p, "GET", &json!({"roles": ["auditor"]}));
    assert_eq!(d.decided_by, DecidedBy::Allow(1));
    let d = decide(&p, "GET", &json!({"roles": ["oncall", "ops"]}));
    assert_eq!(d.decided_by, DecidedBy::Allow(2));
    let d = decide(&p, "HEAD", &json!({"scope": "orders:read"}));
    assert_eq!(d.decided_by, DecidedBy::Allow(3));
    let d = decide(&p, "POST", &json!({"scp": ["orders:admin"]}));
    assert_eq!(d.decided_by, DecidedBy::Allow(4));
    let d = decide(
        &p,
        "PUT",
        &json!({"tenant": "acme", "email_verified": true}),
    );
    assert_eq!(d.decided_by, DecidedBy::Allow(5));
    let d = decide(&p, "PUT", &json!({"org": {"region": "us"}}));
    assert_eq!(d.decided_by, DecidedBy::Allow(6));
    let d = decide(&p, "GET", &json!({"roles": ["admin"], "suspended": true}));
    assert_eq!(d.decided_by, DecidedBy::Deny(0));
    let d = decide(&p, "POST", &json!({"scope": "orders:read"}));
    assert_eq!(d.decided_by, DecidedBy::Default);
}

// ---- decisions ----

#[test]
fn deny_wins_over_allow_and_the_first_match_decides() {
    let p = policy(
        "deny: [{ roles: [intern] }, { claims: { suspended: true } }]\nallow: [{ roles: [staff] }, { roles: [intern] }]",
    );
    let d = decide(
        &p,
        "GET",
        &json!({"roles": ["staff", "intern"], "suspended": true}),
    );
    assert_eq!((d.allowed, d.decided_by), (false, DecidedBy::Deny(0)));
    assert_eq!(d.required_scopes, "");
    let d = decide(&p, "GET", &json!({"roles": ["staff"], "suspended": true}));
    assert_eq!(d.decided_by, DecidedBy::Deny(1));
    let d = decide(&p, "GET", &json!({"roles": ["staff"], "suspended": false}));
    assert_eq!((d.allowed, d.decided_by), (true, DecidedBy::Allow(0)));
    assert_eq!(d.outcome(), "allow");
}

#[test]
fn nothing_matching_is_denied_by_default() {
    let p = policy("allow: [{ roles: [admin] }]");
    let d = decide(&p, "GET", &json!({"roles": ["user"]}));
    assert!(!d.allowed && !d.effective_allow() && !d.is_shadow_deny());
    assert_eq!(d.decided_by, DecidedBy::Default);
    assert_eq!(
        (d.policy, d.mode, d.outcome()),
        ("p", Mode::Enforce, "deny")
    );
    assert_eq!(d.required_scopes, "");
}

#[test]
fn a_policy_without_allow_rules_denies_everything() {
    let p = policy("deny: []");
    assert!(!allows(&p, "GET", json!({"roles": ["admin"]})));
    let p = policy("{}");
    assert!(!allows(&p, "GET", json!({})));
}

#[test]
fn required_scopes_name_the_allow_rules_for_the_method() {
    let p = policy(ORDERS);
    let claims = json!({"scope": "openid"});
    assert_eq!(decide(&p, "GET", &claims).required_scopes, "orders:read");
    assert_eq!(decide(&p, "head", &claims).required_scopes, "orders:read");
    assert_eq!(
        decide(&p, "POST", &claims).required_scopes,
        "orders:write orders:admin"
    );
    assert_eq!(decide(&p, "DELETE", &claims).required_scopes, "");

    let p = policy(
        "allow: [{ scopes: [a] }, { scopes: { all_of: [b, a] }, methods: [PUT] }, { roles: [x] }]",
    );
    assert_eq!(decide(&p, "PUT", &json!({})).required_scopes, "a b");
    assert_eq!(decide(&p, "GET", &json!({})).required_scopes, "a");
    assert_eq!(
        decide(&p, "GET", &json!({"scope": "a"})).required_scopes,
        ""
    );
}

#[test]
fn shadow_mode_reports_but_lets_through() {
    let p = policy("mode: shadow\nallow: [{ roles: [admin] }]");
    assert_eq!(p.mode(), Mode::Shadow);
    let d = decide(&p, "GET", &json!({"roles": ["user"]}));
    assert!(!d.allowed && d.effective_allow() && d.is_shadow_deny());
    assert_eq!((d.mode, d.outcome()), (Mode::Shadow, "shadow_deny"));
    let d = decide(&p, "GET", &json!({"roles": ["admin"]}));
    assert!(d.allowed && d.effective_allow() && !d.is_shadow_deny());
    assert_eq!(d.outcome(), "allow");
}

#[test]
fn anonymous_callers_fail_every_claim_condition() {
    let p = policy(
        "deny: [{ claims: { suspended: false } }]\nallow: [{ roles: [admin] }, { scopes: [a] }, { claims: { x: 1 } }, { methods: [OPTIONS] }]",
    );
    let get = RequestFacts::anonymous("GET");
    let d = p.evaluate(&get);
    assert_eq!((d.allowed, d.decided_by), (false, DecidedBy::Default));
    assert_eq!(d.required_scopes, "a");
    assert_eq!(p.explain(&get).decision, d);
    let d = p.evaluate(&RequestFacts::anonymous("OPTIONS"));
    assert_eq!((d.allowed, d.decided_by), (true, DecidedBy::Allow(3)));
}

#[test]
fn decision_display() {
    let p = policy(ORDERS);
    assert_eq!(
        decide(&p, "GET", &json!({"roles": ["admin"]})).to_string(),
        "allow by allow[0]"
    );
    assert_eq!(
        decide(&p, "GET", &json!({"suspended": true})).to_string(),
        "deny by deny[0]"
    );
    assert_eq!(
        decide(&p, "GET", &json!({})).to_string(),
        "deny by default: no rule matched (scopes that would allow: orders:read)"
    );
    let p = policy("mode: shadow\nallow: [{ roles: [a] }]");
    assert_eq!(
        decide(&p, "GET", &json!({})).to_string(),
        "deny by default: no rule matched; shadow mode lets the request through"
    );
}

// ---- compile problems ----

#[test]
fn unknown_mode() {
    assert_eq!(
        problems("mode: audit"),
        ["mode: expected enforce or shadow, found \"audit\""]
    );
}

#[test]
fn empty_rule() {
    assert_eq!(
        problems("allow: [{ roles: [a] }, {}]"),
        ["allow[1]: a rule needs at least one condition: roles, scopes, claims or methods"]
    );
}

#[test]
fn empty_name_lists() {
    assert_eq!(
        problems(
            "deny: [{ roles: [] }]\nallow: [{ roles: { any_of: [] } }, { scopes: { all_of: [] } }, { methods: [] }]"
        ),
        [
            "deny[0].roles: must list at least one role",
            "allow[0].roles.any_of: must list at least one role",
            "allow[1].scopes.all_of: must list at least one scope",
            "allow[2].methods: must list at least one method",
        ]
    );
}

#[test]
fn both_or_neither_of_any_of_and_all_of() {
    assert_eq!(
        problems("allow: [{ roles: { any_of: [a], all_of: [b] } }, { scopes: {} }]"),
        [
            "allow[0].roles: give either any_of or all_of, not both",
            "allow[1].scopes: needs any_of or all_of",
        ]
    );
}

#[test]
fn bad_names() {
    assert_eq!(
        problems(r#"allow: [{ roles: [a, ""], scopes: { any_of: [ok, "two words", 'q"'] }, methods: [GET, "GE T", ""] }]"#),
        [
            "allow[0].methods[1]: invalid method \"GE T\": expected an http method such as GET",
            "allow[0].methods[2]: invalid method \"\": expected an http method such as GET",
            "allow[0].roles[1]: role names must not be empty",
            "allow[0].scopes.any_of[1]: invalid scope \"two words\": scopes are printable ascii without spaces, quotes or backslashes",
            "allow[0].scopes.any_of[2]: invalid scope \"q\\\"\": scopes are printable ascii without spaces, quotes or backslashes",
        ]
    );
}

#[test]
fn bad_claims() {
    assert_eq!(
        problems(
            r#"
roles_claim: "realm_access..roles"
allow:
  - { claims: {} }
  - { claims: { "a..b": 1, c: null, d: { e: 1 }, f: [], g: [1, [2]] } }
"#
        ),
        [
            "roles_claim: invalid claim path \"realm_access..roles\", expected a dotted path such as tenant or realm_access.roles",
            "allow[0].claims: must list at least one claim",
            "allow[1].claims.a..b: invalid claim path \"a..b\", expected a dotted path such as tenant or realm_access.roles",
            "allow[1].claims.c: expected a string, number or boolean, or a list of them",
            "allow[1].claims.d: expected a string, number or boolean, or a list of them",
            "allow[1].claims.f: must list at least one value",
            "allow[1].claims.g[1]: expected a string, number or boolean, or a list of them",
        ]
    );
}

#[test]
fn duplicate_claims_in_raw_form() {
    // YAML refuses duplicate keys itself; a RawClaims built another way is still checked.
    let raw = RawPolicy {
        allow: vec![RawRule {
            claims: Some(RawClaims(vec![
                ("a".into(), json!(1)),
                ("a".into(), json!(2)),
            ])),
            ..RawRule::default()
        }],
        ..RawPolicy::default()
    };
    let errs = Policy::compile("p", &raw).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "allow[0].claims.a");
    assert_eq!(errs[0].error, PolicyError::DuplicateClaim);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    assert_eq!(
        problems("mode: x\ndeny: [{}]\nallow: [{ roles: [] }, {}, { methods: [\"\"] }]").len(),
        5
    );
}

#[test]
fn unknown_keys_and_wrong_shapes_are_refused_with_their_path() {
    assert_eq!(
        serde_problem("allow: [{ roles: [a] }, { role: [a] }]"),
        "allow[1].role: unknown field `role`, expected one of `roles`, `scopes`, `claims`, `methods`"
    );
    assert_eq!(
        serde_problem("alow: []"),
        "alow: unknown field `alow`, expected one of `mode`, `roles_claim`, `deny`, `allow`"
    );
    assert_eq!(
        serde_problem("allow: [{ roles: { one_of: [a] } }]"),
        "allow[0].roles.one_of: unknown field `one_of`, expected `any_of` or `all_of`"
    );
    assert_eq!(
        serde_problem("allow: [{ scopes: { all_of: [a, [b]] } }]"),
        "allow[0].scopes.all_of[1]: invalid type: sequence, expected a string"
    );
    assert_eq!(
        serde_problem("allow: [{ roles: admin }]"),
        "allow[0].roles: invalid type: string \"admin\", expected a list of names, or a mapping with any_of or all_of"
    );
    assert_eq!(
        serde_problem("allow: [{ claims: [tenant] }]"),
        "allow[0].claims: invalid type: sequence, expected a mapping of claim paths to expected values"
    );
}

#[test]
fn raw_types_read_the_guide_policy() {
    let r = raw(ORDERS);
    assert_eq!(r.mode.as_deref(), Some("enforce"));
    assert_eq!(r.deny.len(), 1);
    assert_eq!(r.allow.len(), 7);
    assert_eq!(
        r.allow[1].roles,
        Some(RawNames::List(vec!["reader".into(), "auditor".into()]))
    );
    let claims = r.allow[5].claims.as_ref().unwrap();
    let keys: Vec<&str> = claims.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["tenant", "email_verified"]);
}

// ---- explain ----

#[test]
fn explanation_text() {
    let p = policy(
        r#"
roles_claim: realm_access.roles
deny:
  - { claims: { suspended: true } }
allow:
  - { roles: { all_of: [ops, oncall] }, methods: [POST] }
  - { scopes: [orders:read], claims: { "org.region": [eu, us] } }
"#,
    );
    let claims = obj(json!({
        "realm_access": {"roles": ["ops"]},
        "scope": "openid",
        "org": {"region": "eu"},
    }));
    let e = p.explain(&RequestFacts::new("GET", Some(&claims)));
    assert_eq!(
        e.to_string(),
        "\
policy p (enforce mode, roles from realm_access.roles)
request: GET by caller with claims
deny[0]: no match
  fail  claim suspended = true: claim is missing
allow[0]: no match
  fail  method in [POST]: GET is not listed
  fail  roles all_of [ops, oncall]: lacks oncall
allow[1]: no match
  fail  scopes any_of [orders:read]: has none of them (scope claim is \"openid\")
  pass  claim org.region in [\"eu\", \"us\"]: claim is \"eu\"
decision: deny by default: no rule matched (scopes that would allow: orders:read)"
    );
}

#[test]
fn explanation_reasons() {
    let p = policy(
        "allow: [{ roles: [a] }, { roles: { all_of: [a] } }, { scopes: [s] }, { claims: { c: 1 } }]",
    );
    let reasons = |claims: Option<Value>| -> Vec<String> {
        let claims = claims.map(obj);
        let e = p.explain(&RequestFacts::new("GET", claims.as_ref()));
        e.allow
            .iter()
            .map(|r| r.conditions[0].why.clone())
            .collect()
    };
    assert_eq!(
        reasons(None),
        [
            "anonymous caller: no claims",
            "anonymous caller: no claims",
            "anonymous caller: no claims",
            "anonymous caller: no claims",
        ]
    );
    assert_eq!(
        reasons(Some(json!({}))),
        [
            "no roles claim",
            "no roles claim",
            "no scope or scp claim",
            "claim is missing",
        ]
    );
    assert_eq!(
        reasons(Some(json!({"roles": 5, "scp": {}, "c": [1]}))),
        [
            "roles claim is 5, not a string or a list of strings",
            "roles claim is 5, not a string or a list of strings",
            "scope claim is {}, not a string or a list of strings",
            "claim is [1]",
        ]
    );
    assert_eq!(
        reasons(Some(
            json!({"roles": ["a"], "scope": "s", "c": "x".repeat(200)})
        )),
        [
            "has a".to_owned(),
            "has all of them".to_owned(),
            "has s".to_owned(),
            format!("claim is \"{}…", "x".repeat(119)),
        ]
    );
}

#[test]
fn explanation_checks_every_condition_and_rule() {
    let p = policy("deny: [{ roles: [x] }]\nallow: [{ methods: [POST], roles: [a] }, { roles: [a] }, { roles: [b] }]");
    let claims = obj(json!({"roles": ["a", "b", "x"]}));
    let e = p.explain(&RequestFacts::new("GET", Some(&claims)));
    assert!(e.deny[0].matched);
    assert_eq!(e.allow.len(), 3);
    assert_eq!(e.allow[0].conditions.len(), 2);
    assert!(!e.allow[0].conditions[0].passed && e.allow[0].conditions[1].passed);
    assert!(e.allow[1].matched && e.allow[2].matched);
    assert_eq!(e.decision.decided_by, DecidedBy::Deny(0));
    assert_eq!(
        e.decision,
        p.evaluate(&RequestFacts::new("GET", Some(&claims)))
    );
}

#[test]
fn explanation_json() {
    let p = policy("mode: shadow\nallow: [{ scopes: [a], methods: [GET] }]");
    let e = p.explain(&RequestFacts::anonymous("GET"));
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json,
        json!({
            "policy": "p",
            "mode": "shadow",
            "roles_claim": "roles",
            "method": "GET",
            "anonymous": true,
            "deny": [],
            "allow": [{
                "rule": "allow[0]",
                "matched": false,
                "conditions": [
                    {"condition": "method in [GET]", "passed": true, "why": "GET is listed"},
                    {"condition": "scopes any_of [a]", "passed": false, "why": "anonymous caller: no claims"},
                ],
            }],
            "decision": {
                "policy": "p",
                "mode": "shadow",
                "allowed": false,
                "effective_allow": true,
                "outcome": "shadow_deny",
                "decided_by": "default",
                "required_scopes": ["a"],
            },
        })
    );
}

#[test]
fn problem_display_and_source() {
    let p = PolicyProblem {
        path: String::new(),
        error: PolicyError::EmptyRule,
    };
    assert_eq!(
        p.to_string(),
        "a rule needs at least one condition: roles, scopes, claims or methods"
    );
    assert!(std::error::Error::source(&p).is_some());
}

#[test]
fn scopes_lists_every_scope_an_allow_rule_names_once() {
    let p = policy(
        r#"
allow:
  - { scopes: [orders:read], methods: [GET] }
  - { scopes: { all_of: [orders:write, orders:read] }, methods: [POST] }
  - { scopes: [admin] }
"#,
    );
    assert_eq!(p.scopes(), ["orders:read", "admin", "orders:write"]);
}
