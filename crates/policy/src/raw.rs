//! One policy as written in the `policies` section: serde types that refuse unknown keys and
//! settle nothing else. [`crate::Policy::compile`] checks them and reports every problem at once.
//!
//! The config crate deserializes each policy on its own (through `serde_path_to_error`), so
//! these types must keep serde's path tracking intact: the hand-written impls below only ever
//! hand serde's own `SeqAccess` / `MapAccess` on, never a buffered copy.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// A policy: `mode`, `roles_claim`, then `deny` and `allow` rules.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// `enforce` (default) or `shadow`. Kept as text so that a wrong value is reported by
    /// `compile` with the other problems rather than as a type error.
    pub mode: Option<String>,
    /// Dotted claim path the roles are read from. Default `roles`.
    pub roles_claim: Option<String>,
    /// Rules that deny when they match; they win over `allow`.
    #[serde(default)]
    pub deny: Vec<RawRule>,
    /// Rules that allow when they match; with none matching the request is denied.
    #[serde(default)]
    pub allow: Vec<RawRule>,
}

/// One rule: conditions that must all hold. A rule with none is refused by `compile`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub roles: Option<RawNames>,
    pub scopes: Option<RawNames>,
    pub claims: Option<RawClaims>,
    pub methods: Option<Vec<String>>,
}

/// The names a `roles` or `scopes` condition asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawNames {
    /// `[a, b]`: shorthand for `{ any_of: [a, b] }`.
    List(Vec<String>),
    /// `{ any_of: [...] }` or `{ all_of: [...] }`. Both or neither is a problem that `compile`
    /// reports, so both are kept here.
    Match {
        any_of: Option<Vec<String>>,
        all_of: Option<Vec<String>>,
    },
}

impl<'de> Deserialize<'de> for RawNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Match {
            any_of: Option<Vec<String>>,
            all_of: Option<Vec<String>>,
        }

        struct NamesVisitor;

        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = RawNames;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of names, or a mapping with any_of or all_of")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawNames, A::Error> {
                Vec::<String>::deserialize(SeqAccessDeserializer::new(seq)).map(RawNames::List)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawNames, A::Error> {
                let m = Match::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawNames::Match {
                    any_of: m.any_of,
                    all_of: m.all_of,
                })
            }
        }

        d.deserialize_any(NamesVisitor)
    }
}

/// A `claims` condition: dotted claim path → expected value, in file order (so that `explain`
/// lists them as written). Values are checked by `compile`: a string, number or boolean, or a
/// non-empty list of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawClaims(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawClaims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;

        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = RawClaims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of claim paths to expected values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawClaims, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(RawClaims(entries))
            }
        }

        d.deserialize_map(ClaimsVisitor)
    }
}
