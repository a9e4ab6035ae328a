//! From a [`RawPolicy`] to a ready [`Policy`]: claim paths split, methods upper-cased, name
//! sets sorted and the `WWW-Authenticate` scope hints joined, so that evaluating a request
//! only compares strings. Every problem is collected with its path before anything is refused.

use crate::error::{PolicyError, PolicyProblem};
use crate::raw::{RawClaims, RawNames, RawPolicy, RawRule};
use crate::{Mode, Policy};
use serde_json::{Number, Value};
use std::fmt;

/// A rule: conditions that must all hold, cheapest first (methods, roles, scopes, claims) so
/// that evaluation, which stops at the first failure, does the least work.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) conditions: Box<[Condition]>,
}

#[derive(Debug, Clone)]
pub(crate) enum Condition {
    /// Upper-case method names; the request's method is compared ignoring ASCII case.
    Methods(Box<[Box<str>]>),
    Roles(NameSet),
    Scopes(NameSet),
    /// One entry of a `claims` mapping: each is its own condition, so `explain` can say which
    /// claim failed.
    Claim {
        path: ClaimPath,
        expected: Expected,
    },
}

/// The names of a `roles` or `scopes` condition.
#[derive(Debug, Clone)]
pub(crate) struct NameSet {
    /// `all_of` rather than `any_of`.
    pub(crate) all: bool,
    /// Deduplicated, in file order: what `explain` shows and what `all_of` walks.
    pub(crate) listed: Box<[Box<str>]>,
    /// The same names sorted, for `any_of` lookups by binary search.
    pub(crate) sorted: Box<[Box<str>]>,
}

/// A dotted claim path such as `realm_access.roles`, split once. The one way claims are
/// read by path: RBAC here, and the gateway's identity headers and rate-limit keys, so that
/// all three find the same value (see [`ClaimPath::lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    pub(crate) full: Box<str>,
    pub(crate) segments: Box<[Box<str>]>,
}

/// What a claim must hold: one of `values`. `list` only records how it was written
/// (`tenant: acme` versus `region: [eu, us]`), for display.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) list: bool,
    pub(crate) values: Box<[Scalar]>,
}

#[derive(Debug, Clone)]
pub(crate) enum Scalar {
    Str(Box<str>),
    Bool(bool),
    Num(Number),
}

/// The scopes to name in `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` when
/// a request is denied by default, precomputed per method so that the deny path only looks
/// one up.
#[derive(Debug, Clone, Default)]
pub(crate) struct ScopeHints {
    /// For each method named by an allow rule that lists scopes: the scopes of every such
    /// rule that applies to it, space-separated.
    pub(crate) by_method: Box<[(Box<str>, Box<str>)]>,
    /// For any other method: the scopes of the allow rules without a `methods` condition.
    pub(crate) other: Box<str>,
}

impl ScopeHints {
    pub(crate) fn for_method(&self, method: &str) -> &str {
        self.by_method
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(method))
            .map_or(&*self.other, |(_, scopes)| scopes)
    }
}

impl Policy {
    /// Checks a policy as written and compiles it for evaluation. `name` is the policy's key
    /// in the `policies` section; it is only carried into decisions.
    ///
    /// On failure, returns every problem, each with a path relative to the policy such as
    /// `allow[1].roles`, in file order.
    pub fn compile(name: &str, raw: &RawPolicy) -> Result<Policy, Vec<PolicyProblem>> {
        let mut problems = Vec::new();
        let mode = match raw.mode.as_deref() {
            None | Some("enforce") => Mode::Enforce,
            Some("shadow") => Mode::Shadow,
            Some(other) => {
                problems.push(PolicyProblem::new(
                    "mode",
                    PolicyError::UnknownMode(other.to_owned()),
                ));
                Mode::Enforce
            }
        };
        let roles_claim = match raw.roles_claim.as_deref() {
            None => ClaimPath::parse("roles"),
            Some(text) => ClaimPath::parse(text).or_else(|| {
                problems.push(PolicyProblem::new(
                    "roles_claim",
                    PolicyError::InvalidClaimPath(text.to_owned()),
                ));
                None
            }),
        };
        let deny = rules("deny", &raw.deny, &mut problems);
        let allow = rules("allow", &raw.allow, &mut problems);
        match roles_claim {
            Some(roles_claim) if problems.is_empty() => Ok(Policy {
                name: name.into(),
                mode,
                roles_claim,
                scope_hints: scope_hints(&allow),
                deny,
                allow,
            }),
            _ => Err(problems),
        }
    }
}

fn rules(side: &str, raw: &[RawRule], problems: &mut Vec<PolicyProblem>) -> Box<[Rule]> {
    raw.iter()
        .enumerate()
        .map(|(i, r)| rule(&format!("{side}[{i}]"), r, problems))
        .collect()
}

fn rule(base: &str, raw: &RawRule, problems: &mut Vec<PolicyProblem>) -> Rule {
    let mut conditions = Vec::new();
    if raw.roles.is_none() && raw.scopes.is_none() && raw.claims.is_none() && raw.methods.is_none()
    {
        problems.push(PolicyProblem::new(base, PolicyError::EmptyRule));
    }
    if let Some(list) = &raw.methods {
        conditions.extend(methods(&format!("{base}.methods"), list, problems));
    }
    if let Some(names) = &raw.roles {
        conditions.extend(
            name_set(
                &format!("{base}.roles"),
                names,
                "role",
                role_error,
                problems,
            )
            .map(Condition::Roles),
        );
    }
    if let Some(names) = &raw.scopes {
        conditions.extend(
            name_set(
                &format!("{base}.scopes"),
                names,
                "scope",
                scope_error,
                problems,
            )
            .map(Condition::Scopes),
        );
    }
    if let Some(claims) = &raw.claims {
        claim_conditions(&format!("{base}.claims"), claims, &mut conditions, problems);
    }
    Rule {
        conditions: conditions.into(),
    }
}

fn methods(path: &str, raw: &[String], problems: &mut Vec<PolicyProblem>) -> Option<Condition> {
    if raw.is_empty() {
        problems.push(PolicyProblem::new(path, PolicyError::EmptyList("method")));
        return None;
    }
    let mut out: Vec<Box<str>> = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        // RFC 9110 §9.1: a method is a token.
        let token = !m.is_empty()
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            problems.push(PolicyProblem::new(
                format!("{path}[{i}]"),
                PolicyError::InvalidMethod(m.clone()),
            ));
            continue;
        }
        let upper = m.to_ascii_uppercase();
        if !out.iter().any(|o| **o == *upper) {
            out.push(upper.into());
        }
    }
    Some(Condition::Methods(out.into()))
}

fn role_error(name: &str) -> Option<PolicyError> {
    name.is_empty().then_some(PolicyError::EmptyRole)
}

fn scope_error(name: &str) -> Option<PolicyError> {
    // RFC 6750 §3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
    (!ok).then(|| PolicyError::InvalidScope(name.to_owned()))
}

fn name_set(
    path: &str,
    raw: &RawNames,
    what: &'static str,
    error: fn(&str) -> Option<PolicyError>,
    problems: &mut Vec<PolicyProblem>,
) -> Option<NameSet> {
    let (all, list, list_path) = match raw {
        RawNames::List(list) => (false, list, path.to_owned()),
        RawNames::Match {
            any_of: Some(_),
            all_of: Some(_),
        } => {
            problems.push(PolicyProblem::new(path, PolicyError::BothAnyOfAndAllOf));
            return None;
        }
        RawNames::Match {
            any_of: None,
            all_of: None,
        } => {
            problems.push(PolicyProblem::new(path, PolicyError::NeitherAnyOfNorAllOf));
            return None;
        }
        RawNames::Match {
            any_of: Some(list),
            all_of: None,
        } => (false, list, format!("{path}.any_of")),
        RawNames::Match {
            any_of: None,
            all_of: Some(list),
        } => (true, list, format!("{path}.all_of")),
    };
    if list.is_empty() {
        problems.push(PolicyProblem::new(list_path, PolicyError::EmptyList(what)));
        return None;
    }
    let mut listed: Vec<Box<str>> = Vec::with_capacity(list.len());
    for (i, name) in list.iter().enumerate() {
        if let Some(e) = error(name) {
            problems.push(PolicyProblem::new(format!("{list_path}[{i}]"), e));
        } else if !listed.iter().any(|l| **l == **name) {
            listed.push(name.as_str().into());
        }
    }
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    Some(NameSet {
        all,
        listed: listed.into(),
        sorted: sorted.into(),
    })
}

fn claim_conditions(
    path: &str,
    raw: &RawClaims,
    out: &mut Vec<Condition>,
    problems: &mut Vec<PolicyProblem>,
) {
    if raw.0.is_empty() {
        problems.push(PolicyProblem::new(path, PolicyError::EmptyList("claim")));
        return;
    }
    for (i, (key, value)) in raw.0.iter().enumerate() {
        let at = format!("{path}.{key}");
        if raw.0[..i].iter().any(|(k, _)| k == key) {
            problems.push(PolicyProblem::new(at, PolicyError::DuplicateClaim));
            continue;
        }
        let claim = ClaimPath::parse(key);
        if claim.is_none() {
            problems.push(PolicyProblem::new(
                at.clone(),
                PolicyError::InvalidClaimPath(key.clone()),
            ));
        }
        let expected = expected(&at, value, problems);
        if let (Some(path), Some(expected)) = (claim, expected) {
            out.push(Condition::Claim { path, expected });
        }
    }
}

fn expected(path: &str, raw: &Value, problems: &mut Vec<PolicyProblem>) -> Option<Expected> {
    match raw {
        Value::Array(items) if items.is_empty() => {
            problems.push(PolicyProblem::new(path, PolicyError::EmptyList("value")));
            None
        }
        Value::Array(items) => {
            let mut values = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match Scalar::from_value(item) {
                    Some(s) => values.push(s),
                    None => problems.push(PolicyProblem::new(
                        format!("{path}[{i}]"),
                        PolicyError::InvalidClaimValue,
                    )),
                }
            }
            (values.len() == items.len()).then(|| Expected {
                list: true,
                values: values.into(),
            })
        }
        scalar => match Scalar::from_value(scalar) {
            Some(s) => Some(Expected {
                list: false,
                values: Box::new([s]),
            }),
            None => {
                problems.push(PolicyProblem::new(path, PolicyError::InvalidClaimValue));
                None
            }
        },
    }
}

impl ClaimPath {
    /// `None` when a segment is empty (`a..b`, `.a`, ``).
    pub fn parse(text: &str) -> Option<ClaimPath> {
        let segments: Box<[Box<str>]> = text.split('.').map(Into::into).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(ClaimPath {
            full: text.into(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl Scalar {
    fn from_value(v: &Value) -> Option<Scalar> {
        match v {
            Value::String(s) => Some(Scalar::Str(s.as_str().into())),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            Value::Number(n) => Some(Scalar::Num(n.clone())),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// The scopes named by allow rules, per method; see [`ScopeHints`].
fn scope_hints(allow: &[Rule]) -> ScopeHints {
    let scoped: Vec<(&NameSet, Option<&[Box<str>]>)> = allow
        .iter()
        .filter_map(|r| {
            let scopes = r.conditions.iter().find_map(|c| match c {
                Condition::Scopes(s) => Some(s),
                _ => None,
            })?;
            let methods = r.conditions.iter().find_map(|c| match c {
                Condition::Methods(m) => Some(&**m),
                _ => None,
            });
            Some((scopes, methods))
        })
        .collect();
    let join = |method: Option<&str>| -> Box<str> {
        let mut names: Vec<&str> = Vec::new();
        for (scopes, methods) in &scoped {
            let applies = match (methods, method) {
                (None, _) => true,
                (Some(ms), Some(m)) => ms.iter().any(|x| **x == *m),
                (Some(_), None) => false,
            };
            if applies {
                for s in scopes.listed.iter() {
                    if !names.contains(&&**s) {
                        names.push(s);
                    }
                }
            }
        }
        names.join(" ").into()
    };
    let mut methods: Vec<&str> = Vec::new();
    for m in scoped.iter().filter_map(|(_, m)| *m).flatten() {
        if !methods.contains(&&**m) {
            methods.push(m);
        }
    }
    ScopeHints {
        by_method: methods
            .iter()
            .map(|m| ((*m).into(), join(Some(m))))
            .collect(),
        other: join(None),
    }
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // JSON quoting, so `"true"` and `true` read differently.
            Scalar::Str(s) => write!(f, "{}", Value::String(s.to_string())),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Num(n) => write!(f, "{n}"),
        }
    }
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    f.write_str("[")?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    f.write_str("]")
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Methods(methods) => {
                f.write_str("method in ")?;
                write_list(f, methods)
            }
            Condition::Roles(set) | Condition::Scopes(set) => {
                let kind = if matches!(self, Condition::Roles(_)) {
                    "roles"
                } else {
                    "scopes"
                };
                let op = if set.all { "all_of" } else { "any_of" };
                write!(f, "{kind} {op} ")?;
                write_list(f, &set.listed)
            }
            Condition::Claim { path, expected } if expected.list => {
                write!(f, "claim {} in ", path.full)?;
                write_list(f, &expected.values)
            }
            Condition::Claim { path, expected } => {
                f.write_str("claim ")?;
                f.write_str(&path.full)?;
                for v in expected.values.iter() {
                    write!(f, " = {v}")?;
                }
                Ok(())
            }
        }
    }
}
