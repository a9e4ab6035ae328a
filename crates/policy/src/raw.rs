//! One policy as written in the `policies` section: serde types that refuse unknown keys and
//! settle nothing else. [`crate::Policy::compile`] checks them and reports every problem at once.
//!
//! The config crate deserializes each policy on its own (through `serde_path_to_error`), so
//! these types must keep serde's path tracking intact: the hand-written impls below only ever
//! hand serde's own `SeqAccess` / `MapAccess` on, never a buffered copy.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::fmt;

/// `policies.NAME`: an RBAC policy. A matching `deny` rule denies; else a matching `allow`
/// rule allows; else the request is denied (403). See
/// [authorization](authorization-and-limits.md#rbac-policies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// `enforce`, or `shadow`: evaluated and counted (`decision="shadow_deny"`) without
    /// denying.
    // Kept as text so that a wrong value is reported by `compile` with the other problems
    // rather than as a type error.
    #[schemars(extend("default" = "enforce", "enum" = ["enforce", "shadow"]))]
    pub mode: Option<String>,
    /// Dotted claim path the roles are read from (e.g. `realm_access.roles`).
    #[schemars(extend("default" = "roles"))]
    pub roles_claim: Option<String>,
    /// Rules that deny when they match; they win over `allow`.
    #[serde(default)]
    pub deny: Vec<RawRule>,
    /// Rules that allow when they match; with none matching the request is denied.
    #[serde(default)]
    pub allow: Vec<RawRule>,
}

/// `policies.NAME.allow[]` and `deny[]`: conditions that must all hold (at least one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Roles the caller has (`[a, b]`: any of them), from `roles_claim`.
    pub roles: Option<RawNames>,
    /// Scopes the caller has, from the space-separated `scope` claim (else `scp`).
    pub scopes: Option<RawNames>,
    /// Claim paths and the values they must equal (a list: any of them).
    pub claims: Option<RawClaims>,
    /// The request's method is one of these.
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

impl JsonSchema for RawNames {
    fn schema_name() -> Cow<'static, str> {
        "Names".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`[a, b]` (any of them), `{ any_of: [...] }` or `{ all_of: [...] }`.",
            "anyOf": [
                { "type": "array", "items": { "type": "string" } },
                {
                    "type": "object",
                    "properties": {
                        "any_of": { "type": "array", "items": { "type": "string" } },
                        "all_of": { "type": "array", "items": { "type": "string" } },
                    },
                    "additionalProperties": false,
                    "minProperties": 1,
                    "maxProperties": 1,
                },
            ],
        })
    }
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

impl JsonSchema for RawClaims {
    fn schema_name() -> Cow<'static, str> {
        "ClaimConditions".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Dotted claim path → a string, number or boolean, or a non-empty list of them.",
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    { "type": ["string", "number", "boolean"] },
                    { "type": "array", "items": { "type": ["string", "number", "boolean"] }, "minItems": 1 },
                ],
            },
        })
    }
}

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
