//! [`Policy::explain`]: every rule and condition of a policy checked against one request, with
//! a human reason for each, for the `tollgate explain` command. It runs the very checks that
//! [`Policy::evaluate`] runs and reaches its decision through the same function; only the
//! formatting, which allocates freely, is its own.

use crate::compile::{Condition, Rule};
use crate::eval::{Check, Decision, RequestFacts, Subject, Why};
use crate::{Mode, Policy};
use serde::Serialize;
use serde_json::Value;
use std::fmt;

/// Claim values longer than this (in bytes of JSON) are cut in reasons.
const MAX_VALUE_TEXT: usize = 120;

/// Why a policy decided as it did. `decision` always equals what [`Policy::evaluate`] returns
/// for the same request. `Display` gives multi-line text; `Serialize` gives the same as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation<'p> {
    pub policy: &'p str,
    pub mode: Mode,
    /// The dotted path roles are read from.
    pub roles_claim: &'p str,
    pub method: String,
    /// No claims: every roles, scopes and claims condition fails.
    pub anonymous: bool,
    /// Every deny rule, in order, each with all its conditions checked (evaluation stops at
    /// the first failing condition; an explanation does not).
    pub deny: Vec<RuleTrace>,
    pub allow: Vec<RuleTrace>,
    pub decision: Decision<'p>,
}

/// One rule and its conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// Its path in the policy: `deny[0]`, `allow[2]`.
    pub rule: String,
    /// Every condition passed.
    pub matched: bool,
    pub conditions: Vec<ConditionTrace>,
}

/// One condition: what it asks, whether it held, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionTrace {
    /// The condition, e.g. `roles any_of [admin, ops]` or `claim tenant = "acme"`.
    pub condition: String,
    pub passed: bool,
    /// e.g. `has admin`, `lacks oncall`, `claim is missing`, `DELETE is not listed`.
    pub why: String,
}

impl Policy {
    /// Checks every rule and every condition against `req` and says why each passed or
    /// failed. Meant for tooling: it allocates, unlike [`Policy::evaluate`].
    pub fn explain(&self, req: &RequestFacts<'_>) -> Explanation<'_> {
        let subject = self.subject(req);
        let deny = self.trace("deny", &self.deny, &subject);
        let allow = self.trace("allow", &self.allow, &subject);
        let first = |rules: &[RuleTrace]| rules.iter().position(|r| r.matched);
        let decision = self.decide(first(&deny), first(&allow), req.method);
        Explanation {
            policy: &self.name,
            mode: self.mode,
            roles_claim: &self.roles_claim.full,
            method: req.method.to_owned(),
            anonymous: req.claims.is_none(),
            deny,
            allow,
            decision,
        }
    }

    fn trace(&self, side: &str, rules: &[Rule], subject: &Subject<'_>) -> Vec<RuleTrace> {
        rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let conditions: Vec<ConditionTrace> = rule
                    .conditions
                    .iter()
                    .map(|c| {
                        let check = c.check(subject);
                        ConditionTrace {
                            condition: c.to_string(),
                            passed: check.pass,
                            why: self.reason(c, check, subject),
                        }
                    })
                    .collect();
                RuleTrace {
                    rule: format!("{side}[{i}]"),
                    matched: conditions.iter().all(|c| c.passed),
                    conditions,
                }
            })
            .collect()
    }

    fn reason(&self, condition: &Condition, check: Check<'_>, subject: &Subject<'_>) -> String {
        let (claim, value) = match condition {
            Condition::Roles(_) => (&*self.roles_claim.full, subject.roles()),
            Condition::Scopes(_) => ("scope", subject.scopes()),
            Condition::Claim { .. } | Condition::Methods(_) => ("", None),
        };
        match check.why {
            Why::Anonymous => "anonymous caller: no claims".to_owned(),
            Why::Missing => match condition {
                Condition::Scopes(_) => "no scope or scp claim".to_owned(),
                Condition::Roles(_) => format!("no {claim} claim"),
                _ => "claim is missing".to_owned(),
            },
            Why::NotNames(v) => format!(
                "{claim} claim is {}, not a string or a list of strings",
                value_text(v)
            ),
            Why::Has(name) => format!("has {name}"),
            Why::HasNone => match value {
                Some(v) => format!("has none of them ({claim} claim is {})", value_text(v)),
                None => "has none of them".to_owned(),
            },
            Why::Lacks(name) => format!("lacks {name}"),
            Why::HasAll => "has all of them".to_owned(),
            Why::Claim(v) => format!("claim is {}", value_text(v)),
            Why::Method if check.pass => format!("{} is listed", subject.method),
            Why::Method => format!("{} is not listed", subject.method),
        }
    }
}

/// Compact JSON, cut at [`MAX_VALUE_TEXT`] bytes (on a character boundary).
fn value_text(v: &Value) -> String {
    let mut text = v.to_string();
    if text.len() > MAX_VALUE_TEXT {
        let mut end = MAX_VALUE_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caller = if self.anonymous {
            "anonymous caller"
        } else {
            "caller with claims"
        };
        writeln!(
            f,
            "policy {} ({} mode, roles from {})",
            self.policy, self.mode, self.roles_claim
        )?;
        writeln!(f, "request: {} by {caller}", self.method)?;
        for (side, rules) in [("deny", &self.deny), ("allow", &self.allow)] {
            if rules.is_empty() {
                writeln!(f, "no {side} rules")?;
            }
            for rule in rules {
                let verdict = if rule.matched { "match" } else { "no match" };
                writeln!(f, "{}: {verdict}", rule.rule)?;
                for c in &rule.conditions {
                    let mark = if c.passed { "pass" } else { "fail" };
                    writeln!(f, "  {mark}  {}: {}", c.condition, c.why)?;
                }
            }
        }
        write!(f, "decision: {}", self.decision)
    }
}
