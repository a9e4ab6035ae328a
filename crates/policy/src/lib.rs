//! tollgate-policy: role-based access control over the claims of a verified JWT. Pure: no I/O,
//! no clock, no async; the gateway passes the request's method and claims and acts on the
//! [`Decision`].
//!
//! A policy is read in two steps, like the rest of the config: the config crate deserializes
//! one entry of the `policies` section into a [`RawPolicy`], then [`Policy::compile`] checks
//! it (reporting every problem with its path) and prepares it so that [`Policy::evaluate`]
//! allocates nothing. Semantics: a matching `deny` rule denies (deny wins), else a matching
//! `allow` rule allows, else the request is denied. A rule matches when all its conditions
//! hold. In `shadow` mode the verdict is reported but [`Decision::effective_allow`] is true.
//!
//! ```
//! use tollgate_policy::{DecidedBy, Policy, RawPolicy, RequestFacts};
//!
//! let raw: RawPolicy = serde_yaml::from_str(r#"
//! roles_claim: realm_access.roles
//! deny:
//!   - { claims: { suspended: true } }
//! allow:
//!   - { roles: [admin] }
//!   - { scopes: { all_of: [orders:read] }, methods: [GET, HEAD] }
//! "#).unwrap();
//! let policy = Policy::compile("orders", &raw).unwrap();
//!
//! let claims = serde_json::json!({ "scope": "openid orders:read", "realm_access": { "roles": ["reader"] } });
//! let claims = claims.as_object().unwrap();
//!
//! let get = policy.evaluate(&RequestFacts::new("GET", Some(claims)));
//! assert!(get.allowed);
//! assert_eq!(get.decided_by, DecidedBy::Allow(1));
//!
//! let post = policy.evaluate(&RequestFacts::new("POST", Some(claims)));
//! assert!(!post.allowed && !post.effective_allow());
//! assert_eq!(post.decided_by, DecidedBy::Default);
//!
//! // Why, rule by rule, for `tollgate explain`.
//! let why = policy.explain(&RequestFacts::new("POST", Some(claims)));
//! assert_eq!(why.decision, post);
//! assert!(why.to_string().contains("fail  method in [GET, HEAD]: POST is not listed"));
//!
//! // Every problem at once, each with its path in the policy.
//! let bad: RawPolicy = serde_yaml::from_str("mode: audit\nallow: [{ roles: [] }]").unwrap();
//! let problems: Vec<String> = Policy::compile("bad", &bad).unwrap_err().iter().map(|p| p.to_string()).collect();
//! assert_eq!(problems, [
//!     "mode: expected enforce or shadow, found \"audit\"",
//!     "allow[0].roles: must list at least one role",
//! ]);
//! ```
//!
//! Conditions, all of which a rule's must hold:
//! - `roles`: `{ any_of: [...] }`, `{ all_of: [...] }`, or a list (any of). Roles are read from
//!   `roles_claim` (default `roles`): an array of strings or a single string.
//! - `scopes`: the same forms, over the space-separated `scope` claim, else the `scp` claim
//!   (an array of strings, or a space-separated string as Azure AD writes it).
//! - `claims`: dotted claim path → expected value. A scalar must equal the claim, or be in it
//!   when the claim is an array; a list must contain the claim, or share an element with it.
//!   Types must agree (`"true"` is not `true`); a missing claim fails. A claim whose name
//!   itself contains dots (Auth0's `https://example.com/roles`) is found by that name when the
//!   nested path leads nowhere.
//! - `methods`: the request method, compared ignoring ASCII case.
//!
//! An anonymous caller (no claims) fails every roles, scopes and claims condition. Deny rules
//! match only on what a token holds: a deny rule on a claim the token lacks does not match.

mod compile;
mod error;
mod eval;
mod explain;
mod raw;

pub use compile::ClaimPath;
pub use error::{PolicyError, PolicyProblem};
pub use eval::{DecidedBy, Decision, RequestFacts};
pub use explain::{ConditionTrace, Explanation, RuleTrace};
pub use raw::{RawClaims, RawNames, RawPolicy, RawRule};

use serde::Serialize;
use std::fmt;

/// Whether a policy's denials are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied requests are refused. The default.
    #[default]
    Enforce,
    /// Decisions are computed and reported, but every request is let through: for trying a
    /// policy on live traffic before enforcing it.
    Shadow,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        })
    }
}

/// A compiled policy, ready to evaluate requests. Immutable; share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Policy {
    name: Box<str>,
    mode: Mode,
    roles_claim: compile::ClaimPath,
    deny: Box<[compile::Rule]>,
    allow: Box<[compile::Rule]>,
    scope_hints: compile::ScopeHints,
}

impl Policy {
    /// Its key in the `policies` section.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The dotted claim path roles are read from.
    pub fn roles_claim(&self) -> &str {
        &self.roles_claim.full
    }

    /// Every scope an allow rule names, each once, in rule order: what a client may ask
    /// for (RFC 9728 `scopes_supported`).
    pub fn scopes(&self) -> Vec<&str> {
        let hints = &self.scope_hints;
        let mut out: Vec<&str> = Vec::new();
        let lists = hints.by_method.iter().map(|(_, s)| &**s);
        for s in lists.chain(std::iter::once(&*hints.other)) {
            for name in s.split_ascii_whitespace() {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
