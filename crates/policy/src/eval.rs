//! Evaluating a compiled policy against one request: the condition checks that both
//! [`Policy::evaluate`] and [`Policy::explain`] run, and the [`Decision`] they produce.
//!
//! Evaluation allocates nothing: claims are read in place, names are compared as borrowed `&str`,
//! and a check reports why it passed or failed as borrowed data that only `explain` formats.

use crate::compile::{ClaimPath, Condition, Expected, NameSet, Rule, Scalar};
use crate::{Mode, Policy};
use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::{Map, Number, Value};
use std::cell::OnceCell;
use std::fmt;

/// What a policy looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request method, compared with the rules' methods ignoring ASCII case.
    pub method: &'a str,
    /// The verified token's claims; `None` for an anonymous caller, for whom every roles,
    /// scopes and claims condition fails (a rule of `methods` alone can still match).
    pub claims: Option<&'a Map<String, Value>>,
}

impl<'a> RequestFacts<'a> {
    pub fn new(method: &'a str, claims: Option<&'a Map<String, Value>>) -> Self {
        RequestFacts { method, claims }
    }

    /// A caller without a token.
    pub fn anonymous(method: &'a str) -> Self {
        RequestFacts {
            method,
            claims: None,
        }
    }
}

/// The verdict of a policy on one request. Copyable and borrowed from the policy: producing
/// it allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'p> {
    /// The policy's name.
    pub policy: &'p str,
    pub mode: Mode,
    /// The policy's verdict, whatever the mode.
    pub allowed: bool,
    pub decided_by: DecidedBy,
    /// When the request was denied because no allow rule matched: the scopes named by the
    /// allow rules that apply to its method, space-separated and ready for the `scope`
    /// parameter of `WWW-Authenticate: Bearer error="insufficient_scope"` (RFC 6750 §3).
    /// Empty when allowed, when a deny rule decided, or when no such rule lists scopes.
    pub required_scopes: &'p str,
}

impl Decision<'_> {
    /// Whether the gateway should let the request through: the verdict in `enforce` mode,
    /// always true in `shadow` mode.
    pub fn effective_allow(&self) -> bool {
        self.allowed || self.mode == Mode::Shadow
    }

    /// A denial that `shadow` mode lets through; the gateway counts these.
    pub fn is_shadow_deny(&self) -> bool {
        !self.allowed && self.mode == Mode::Shadow
    }

    /// A metrics label: `allow`, `deny` or `shadow_deny`.
    pub fn outcome(&self) -> &'static str {
        match (self.allowed, self.mode) {
            (true, _) => "allow",
            (false, Mode::Enforce) => "deny",
            (false, Mode::Shadow) => "shadow_deny",
        }
    }
}

/// Which rule decided. Displays (and serializes) as its path in the policy: `deny[0]`,
/// `allow[2]`, or `default` when no rule matched and the request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecidedBy {
    /// The first matching deny rule, by index in `deny`.
    Deny(usize),
    /// The first matching allow rule, by index in `allow`, when no deny rule matched.
    Allow(usize),
    /// No rule matched: denied by default.
    Default,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Deny(i) => write!(f, "deny[{i}]"),
            DecidedBy::Allow(i) => write!(f, "allow[{i}]"),
            DecidedBy::Default => f.write_str("default"),
        }
    }
}

impl Serialize for DecidedBy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Decision<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let scopes: Vec<&str> = self.required_scopes.split_ascii_whitespace().collect();
        let mut st = s.serialize_struct("Decision", 7)?;
        st.serialize_field("policy", self.policy)?;
        st.serialize_field("mode", &self.mode)?;
        st.serialize_field("allowed", &self.allowed)?;
        st.serialize_field("effective_allow", &self.effective_allow())?;
        st.serialize_field("outcome", self.outcome())?;
        st.serialize_field("decided_by", &self.decided_by)?;
        st.serialize_field("required_scopes", &scopes)?;
        st.end()
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allow" } else { "deny" };
        match self.decided_by {
            DecidedBy::Default => write!(f, "{verdict} by default: no rule matched")?,
            by => write!(f, "{verdict} by {by}")?,
        }
        if !self.required_scopes.is_empty() {
            write!(f, " (scopes that would allow: {})", self.required_scopes)?;
        }
        if self.is_shadow_deny() {
            f.write_str("; shadow mode lets the request through")?;
        }
        Ok(())
    }
}

/// One request as the conditions see it. The roles and scopes claims are looked up when a
/// condition first reads them and remembered for the rest of the evaluation.
pub(crate) struct Subject<'a> {
    pub(crate) method: &'a str,
    pub(crate) claims: Option<&'a Map<String, Value>>,
    roles_claim: &'a ClaimPath,
    roles: OnceCell<Option<&'a Value>>,
    scopes: OnceCell<Option<&'a Value>>,
}

impl<'a> Subject<'a> {
    pub(crate) fn roles(&self) -> Option<&'a Value> {
        *self
            .roles
            .get_or_init(|| self.claims.and_then(|c| self.roles_claim.lookup(c)))
    }

    /// `scope` (RFC 9068, space-separated), else `scp` as Okta and Azure AD write it.
    pub(crate) fn scopes(&self) -> Option<&'a Value> {
        *self.scopes.get_or_init(|| {
            self.claims
                .and_then(|c| c.get("scope").or_else(|| c.get("scp")))
        })
    }
}

/// The outcome of one condition, with why, as borrowed data that `explain` formats.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Check<'a> {
    pub(crate) pass: bool,
    pub(crate) why: Why<'a>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Why<'a> {
    /// No claims at all.
    Anonymous,
    /// The claim the condition reads is absent.
    Missing,
    /// The roles or scopes claim is neither a string nor a list.
    NotNames(&'a Value),
    /// `any_of`: the first of the caller's names that is in the set.
    Has(&'a str),
    /// `any_of`: none of the caller's names is in the set.
    HasNone,
    /// `all_of`: the first listed name the caller lacks.
    Lacks(&'a str),
    /// `all_of`: every listed name is present.
    HasAll,
    /// A claim condition: the value found.
    Claim(&'a Value),
    /// A methods condition: see `Check::pass`.
    Method,
}

impl<'a> Check<'a> {
    fn fail(why: Why<'a>) -> Self {
        Check { pass: false, why }
    }
}

impl Policy {
    /// Decides one request: any matching deny rule denies (deny wins), else any matching allow
    /// rule allows, else the request is denied. Rules are tried in file order; the first match
    /// on each side decides. Allocates nothing.
    pub fn evaluate(&self, req: &RequestFacts<'_>) -> Decision<'_> {
        let subject = self.subject(req);
        let matches = |rule: &Rule| rule.conditions.iter().all(|c| c.check(&subject).pass);
        let deny = self.deny.iter().position(matches);
        let allow = match deny {
            Some(_) => None,
            None => self.allow.iter().position(matches),
        };
        self.decide(deny, allow, req.method)
    }

    pub(crate) fn subject<'a>(&'a self, req: &RequestFacts<'a>) -> Subject<'a> {
        Subject {
            method: req.method,
            claims: req.claims,
            roles_claim: &self.roles_claim,
            roles: OnceCell::new(),
            scopes: OnceCell::new(),
        }
    }

    /// The one place where the first matching deny and allow rules become a decision.
    pub(crate) fn decide(
        &self,
        deny: Option<usize>,
        allow: Option<usize>,
        method: &str,
    ) -> Decision<'_> {
        let (allowed, decided_by) = match (deny, allow) {
            (Some(i), _) => (false, DecidedBy::Deny(i)),
            (None, Some(i)) => (true, DecidedBy::Allow(i)),
            (None, None) => (false, DecidedBy::Default),
        };
        Decision {
            policy: &self.name,
            mode: self.mode,
            allowed,
            decided_by,
            required_scopes: match decided_by {
                DecidedBy::Default => self.scope_hints.for_method(method),
                _ => "",
            },
        }
    }
}

impl Condition {
    /// `'c`: the shorter of the policy's and the request's lifetimes, which the reason borrows.
    pub(crate) fn check<'c, 'a: 'c>(&'c self, s: &Subject<'a>) -> Check<'c> {
        match self {
            Condition::Methods(methods) => Check {
                pass: methods.iter().any(|m| m.eq_ignore_ascii_case(s.method)),
                why: Why::Method,
            },
            Condition::Roles(set) => set.check(s.claims.is_some(), s.roles(), false),
            Condition::Scopes(set) => set.check(s.claims.is_some(), s.scopes(), true),
            Condition::Claim { path, expected } => {
                let Some(claims) = s.claims else {
                    return Check::fail(Why::Anonymous);
                };
                match path.lookup(claims) {
                    None => Check::fail(Why::Missing),
                    Some(v) => Check {
                        pass: expected.matches(v),
                        why: Why::Claim(v),
                    },
                }
            }
        }
    }
}

impl NameSet {
    /// `split`: a string claim is a space-separated list (scopes) rather than one name (roles).
    fn check<'a>(&'a self, has_claims: bool, value: Option<&'a Value>, split: bool) -> Check<'a> {
        if !has_claims {
            return Check::fail(Why::Anonymous);
        }
        let Some(value) = value else {
            return Check::fail(Why::Missing);
        };
        let Some(mut names) = Names::of(value, split) else {
            return Check::fail(Why::NotNames(value));
        };
        if self.all {
            // Listed names are few; scanning the caller's names once per listed name beats
            // building a set of them, which would allocate.
            for wanted in self.listed.iter() {
                let found = Names::of(value, split).is_some_and(|mut n| n.any(|n| n == &**wanted));
                if !found {
                    return Check::fail(Why::Lacks(wanted));
                }
            }
            Check {
                pass: true,
                why: Why::HasAll,
            }
        } else {
            match names.find(|n| self.sorted.binary_search_by(|s| (**s).cmp(n)).is_ok()) {
                Some(n) => Check {
                    pass: true,
                    why: Why::Has(n),
                },
                None => Check::fail(Why::HasNone),
            }
        }
    }
}

/// The names in a roles or scopes claim, borrowed: the strings of an array (other elements are
/// skipped), the words of a space-separated string, or a string as one name.
enum Names<'a> {
    Words(std::str::SplitAsciiWhitespace<'a>),
    One(Option<&'a str>),
    List(std::slice::Iter<'a, Value>),
}

impl<'a> Names<'a> {
    fn of(value: &'a Value, split: bool) -> Option<Self> {
        match value {
            Value::String(s) if split => Some(Names::Words(s.split_ascii_whitespace())),
            Value::String(s) => Some(Names::One(Some(s))),
            Value::Array(items) => Some(Names::List(items.iter())),
            _ => None,
        }
    }
}

impl<'a> Iterator for Names<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Names::Words(words) => words.next(),
            Names::One(one) => one.take(),
            Names::List(items) => items.find_map(Value::as_str),
        }
    }
}

impl ClaimPath {
    /// The claim at this path. A claim whose own name contains dots (such as the namespaced
    /// `https://example.com/roles` that Auth0 issues) is found by its full name when the
    /// nested path leads nowhere.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut v = claims.get(&**first);
        for segment in rest {
            v = v.and_then(Value::as_object).and_then(|o| o.get(&**segment));
        }
        match v {
            None if !rest.is_empty() => claims.get(&*self.full),
            found => found,
        }
    }
}

impl Expected {
    /// A scalar claim must equal one of the values; an array claim must contain one of them.
    fn matches(&self, claim: &Value) -> bool {
        match claim {
            Value::Array(items) => items.iter().any(|item| self.contains(item)),
            other => self.contains(other),
        }
    }

    fn contains(&self, v: &Value) -> bool {
        self.values.iter().any(|s| s.equals(v))
    }
}

impl Scalar {
    /// Types must agree: the string `"true"` is not the boolean `true`. Numbers compare by
    /// value, so `1` equals `1.0`.
    fn equals(&self, v: &Value) -> bool {
        match (self, v) {
            (Scalar::Str(a), Value::String(b)) => **a == **b,
            (Scalar::Bool(a), Value::Bool(b)) => a == b,
            (Scalar::Num(a), Value::Number(b)) => numbers_equal(a, b),
            _ => false,
        }
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    if a.is_f64() || b.is_f64() {
        return a.as_f64() == b.as_f64();
    }
    // One negative integer and one above i64::MAX.
    false
}
