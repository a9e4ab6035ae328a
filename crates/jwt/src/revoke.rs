//! A deny list of revoked tokens: `jti` values, and subjects whose tokens issued before a
//! given time are revoked. Checked after verification, in O(1): one hash lookup per claim.
//!
//! The text form is JSON Lines, one entry per line, `#` comments and blank lines ignored:
//!
//! ```text
//! {"jti": "5f1c0d6e"}
//! {"jti": "77aa", "iss": "https://idp.example.com"}
//! {"sub": "alice", "revoked_before": 1764745200}
//! ```
//!
//! An entry with `iss` applies to that issuer's tokens only; without, to every issuer's. A
//! `sub` entry revokes that subject's tokens whose `iat` is at or before `revoked_before`
//! (unix seconds: a token issued in the same second as the revocation is revoked too), and
//! those without an `iat`, which cannot show they were issued after it.
//!
//! ```
//! use tollgate_jwt::DenyList;
//!
//! let list = DenyList::parse("{\"jti\": \"a1\"}\n{\"sub\": \"bob\", \"revoked_before\": 100}\n").unwrap();
//! let claims = |s: &str| serde_json::from_str::<serde_json::Map<_, _>>(s).unwrap();
//! assert!(list.revoked(&claims(r#"{"jti": "a1"}"#)).is_some());
//! assert!(list.revoked(&claims(r#"{"sub": "bob", "iat": 100}"#)).is_some());
//! assert!(list.revoked(&claims(r#"{"sub": "bob", "iat": 101}"#)).is_none());
//! ```

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;

/// Which kind of entry revoked a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Jti,
    Subject,
}

impl Revoked {
    pub fn as_str(self) -> &'static str {
        match self {
            Revoked::Jti => "jti",
            Revoked::Subject => "sub",
        }
    }
}

/// One entry as written in the list (and by `tollgate token revoke`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Only with `sub`: tokens issued (`iat`) at or before this unix time are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<u64>,
    /// Only this issuer's tokens; every issuer's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

impl Entry {
    /// The entry as one line of the list (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an entry is plain strings and numbers")
    }

    fn check(&self) -> Result<(), &'static str> {
        match (&self.jti, &self.sub, self.revoked_before) {
            (Some(_), None, None) => Ok(()),
            (None, Some(_), Some(_)) => Ok(()),
            (Some(_), Some(_), _) => Err("an entry has either jti or sub, not both"),
            (Some(_), None, Some(_)) => Err("revoked_before goes with sub, not jti"),
            (None, Some(_), None) => Err("a sub entry needs revoked_before (unix seconds)"),
            (None, None, _) => Err("an entry needs jti or sub"),
        }
    }
}

/// Who an entry applies to: every issuer, or the listed ones.
#[derive(Debug, Clone, Default)]
struct Scope {
    any_issuer: bool,
    issuers: Vec<Box<str>>,
}

impl Scope {
    fn add(&mut self, iss: Option<&str>) {
        match iss {
            None => self.any_issuer = true,
            Some(i) if !self.issuers.iter().any(|x| &**x == i) => self.issuers.push(i.into()),
            Some(_) => {}
        }
    }

    fn covers(&self, iss: Option<&str>) -> bool {
        self.any_issuer || iss.is_some_and(|i| self.issuers.iter().any(|x| &**x == i))
    }
}

/// A parse failure: the 1-based line and what is wrong (never the line's text, which may
/// hold a token identifier an operator would rather not see in a log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ListError {}

/// The revoked `jti` values and subjects.
#[derive(Debug, Clone, Default)]
pub struct DenyList {
    jtis: HashMap<Box<str>, Scope>,
    /// Subject → its revocations. Usually one.
    subjects: HashMap<Box<str>, Vec<SubjectRevocation>>,
}

/// One issuer's (or, `None`, every issuer's) revocation of a subject, with its time.
type SubjectRevocation = (Option<Box<str>>, u64);

impl DenyList {
    /// Parses the JSON Lines form; every bad line is reported.
    pub fn parse(text: &str) -> Result<DenyList, Vec<ListError>> {
        let mut list = DenyList::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let entry = serde_json::from_str::<Entry>(line)
                .map_err(|e| classify(&e))
                .and_then(|e| e.check().map(|()| e).map_err(str::to_owned));
            match entry {
                Ok(e) => list.add(&e),
                Err(message) => errors.push(ListError {
                    line: i + 1,
                    message,
                }),
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(errors)
        }
    }

    /// Adds one entry given as one line of the list (a Redis set member); on error the list
    /// is unchanged.
    pub fn add_line(&mut self, line: &str) -> Result<(), String> {
        if line.contains(['\n', '\r']) {
            return Err("an entry is one line".to_owned());
        }
        let entry = serde_json::from_str::<Entry>(line.trim()).map_err(|e| classify(&e))?;
        entry.check().map_err(str::to_owned)?;
        self.add(&entry);
        Ok(())
    }

    /// Adds every entry of `other`.
    pub fn extend(&mut self, other: &DenyList) {
        for (jti, scope) in &other.jtis {
            let mine = self.jtis.entry(jti.clone()).or_default();
            mine.any_issuer |= scope.any_issuer;
            for iss in &scope.issuers {
                mine.add(Some(iss));
            }
        }
        for (sub, scopes) in &other.subjects {
            for (iss, before) in scopes {
                self.add(&Entry {
                    jti: None,
                    sub: Some(sub.to_string()),
                    revoked_before: Some(*before),
                    iss: iss.as_deref().map(str::to_owned),
                });
            }
        }
    }

    /// Adds one entry that [`Entry::check`] accepted. A subject revoked twice keeps the
    /// later time for the same issuer scope.
    fn add(&mut self, e: &Entry) {
        if let Some(jti) = &e.jti {
            self.jtis
                .entry(jti.as_str().into())
                .or_default()
                .add(e.iss.as_deref());
        } else if let (Some(sub), Some(before)) = (&e.sub, e.revoked_before) {
            let scopes = self.subjects.entry(sub.as_str().into()).or_default();
            let iss: Option<Box<str>> = e.iss.as_deref().map(Into::into);
            match scopes.iter_mut().find(|(i, _)| *i == iss) {
                Some((_, t)) => *t = (*t).max(before),
                None => scopes.push((iss, before)),
            }
        }
    }

    /// Builds a list from entries already checked (the Redis form stores one per field).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<DenyList, Vec<ListError>> {
        let mut text = String::new();
        for e in entries {
            // One entry per line: a stored value with a newline in it is one bad line, not two.
            text.push_str(&e.replace(['\n', '\r'], " "));
            text.push('\n');
        }
        DenyList::parse(&text)
    }

    /// `jti` entries and subject entries.
    pub fn len(&self) -> (usize, usize) {
        (self.jtis.len(), self.subjects.len())
    }

    pub fn is_empty(&self) -> bool {
        self.jtis.is_empty() && self.subjects.is_empty()
    }

    /// Whether verified claims are revoked, and by which kind of entry.
    pub fn revoked(&self, claims: &Map<String, Value>) -> Option<Revoked> {
        if self.is_empty() {
            return None;
        }
        let iss = claims.get("iss").and_then(Value::as_str);
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            if self.jtis.get(jti).is_some_and(|s| s.covers(iss)) {
                return Some(Revoked::Jti);
            }
        }
        let sub = claims.get("sub").and_then(Value::as_str)?;
        let scopes = self.subjects.get(sub)?;
        let iat = claims.get("iat").and_then(Value::as_f64);
        scopes
            .iter()
            .any(|(scope, before)| {
                let applies = scope.is_none() || scope.as_deref() == iss;
                applies && iat.is_none_or(|t| t <= *before as f64)
            })
            .then_some(Revoked::Subject)
    }
}

/// serde_json's message without the input it quotes.
fn classify(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if text.starts_with("unknown field") {
        // Not naming the field: its name is list text, which could be anything.
        "unknown field (expected jti, sub, revoked_before, iss)".to_owned()
    } else if e.is_syntax() || e.is_eof() {
        "not a JSON object".to_owned()
    } else {
        "expected {\"jti\": string} or {\"sub\": string, \"revoked_before\": unix seconds}, with an optional \"iss\"".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn jti_entries_match_every_issuer_or_only_theirs() {
        let list = DenyList::parse(
            "# revoked\n\n{\"jti\": \"a\"}\n{\"jti\": \"b\", \"iss\": \"https://one\"}\n",
        )
        .unwrap();
        assert_eq!(list.len(), (2, 0));
        assert_eq!(
            list.revoked(&claims(r#"{"jti":"a","iss":"https://two"}"#)),
            Some(Revoked::Jti)
        );
        assert_eq!(
            list.revoked(&claims(r#"{"jti":"b","iss":"https://one"}"#)),
            Some(Revoked::Jti)
        );
        assert_eq!(
            list.revoked(&claims(r#"{"jti":"b","iss":"https://two"}"#)),
            None
        );
        assert_eq!(list.revoked(&claims(r#"{"jti":"b"}"#)), None);
        assert_eq!(list.revoked(&claims(r#"{"jti":"c"}"#)), None);
    }

    #[test]
    fn a_subject_is_revoked_for_tokens_issued_before_its_time_or_without_iat() {
        let list = DenyList::parse(
            "{\"sub\":\"alice\",\"revoked_before\":1000}\n{\"sub\":\"alice\",\"revoked_before\":500}\n{\"sub\":\"bob\",\"revoked_before\":10,\"iss\":\"https://one\"}",
        )
        .unwrap();
        // The later time wins for the same scope.
        let alice = |iat: &str| claims(&format!(r#"{{"sub":"alice"{iat}}}"#));
        assert_eq!(
            list.revoked(&alice(r#","iat":999.5"#)),
            Some(Revoked::Subject)
        );
        // At the revocation second itself the token is revoked too: `iat` has whole-second
        // precision, so a token issued in that second may predate the revocation.
        assert_eq!(
            list.revoked(&alice(r#","iat":1000"#)),
            Some(Revoked::Subject)
        );
        assert_eq!(list.revoked(&alice(r#","iat":1000.5"#)), None);
        assert_eq!(list.revoked(&alice(r#","iat":1001"#)), None);
        assert_eq!(list.revoked(&alice("")), Some(Revoked::Subject));
        assert_eq!(
            list.revoked(&claims(r#"{"sub":"bob","iat":1,"iss":"https://one"}"#)),
            Some(Revoked::Subject)
        );
        assert_eq!(
            list.revoked(&claims(r#"{"sub":"bob","iat":1,"iss":"https://two"}"#)),
            None
        );
        assert_eq!(list.revoked(&claims(r#"{"sub":"carol"}"#)), None);
    }

    #[test]
    fn every_bad_line_is_reported_without_its_text() {
        let errors = DenyList::parse(
            "{\"jti\":\"ok\"}\nnot json secret-ish\n{\"jti\":1}\n{\"sub\":\"x\"}\n{\"jti\":\"a\",\"sub\":\"b\"}\n{\"jti\":\"a\",\"colour\":1}\n{}",
        )
        .unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
        assert!(errors.iter().all(|e| !e.message.contains("secret")));
        // The unknown field is named by the fields it could have been, never by its own
        // text: the list may hold anything an operator pasted.
        assert!(
            errors[4].message.contains("unknown field") && !errors[4].message.contains("colour"),
            "{:?}",
            errors[4]
        );
        assert!(errors[2].message.contains("revoked_before"));
    }

    #[test]
    fn members_are_added_one_by_one_and_lists_merge() {
        let mut list = DenyList::default();
        assert!(list.add_line("{\"jti\":\n\"a\"}").is_err());
        assert!(list.add_line("{\"jti\":\"a\"}").is_ok());
        assert!(list.add_line("{\"sub\":\"s\"}").is_err());
        let mut other = DenyList::default();
        other
            .add_line("{\"sub\":\"s\",\"revoked_before\":5,\"iss\":\"i\"}")
            .unwrap();
        other.add_line("{\"jti\":\"a\",\"iss\":\"i\"}").unwrap();
        list.extend(&other);
        assert_eq!(list.len(), (1, 1));
        assert!(list.revoked(&claims(r#"{"jti":"a","iss":"x"}"#)).is_some());
        assert!(list
            .revoked(&claims(r#"{"sub":"s","iss":"i","iat":5}"#))
            .is_some());
    }

    #[test]
    fn entries_round_trip_through_their_line() {
        let e = Entry {
            jti: None,
            sub: Some("alice".into()),
            revoked_before: Some(7),
            iss: Some("https://one".into()),
        };
        let list = DenyList::from_entries([e.to_line().as_str()]).unwrap();
        assert_eq!(list.len(), (0, 1));
        assert_eq!(
            DenyList::from_entries(["{\"jti\":\"a\"}\n{\"jti\":\"b\"}"])
                .unwrap_err()
                .len(),
            1
        );
    }
}
