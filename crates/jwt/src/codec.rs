//! The two decoders every JWS segment goes through: strict base64url and a JSON parser that refuses
//! duplicate object members. Public so property tests and tooling use exactly what `verify` uses.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::Cell;
use std::fmt;

use crate::KeyError;

/// `URL_SAFE_NO_PAD` refuses `=`, lengths of 4n+1 and non-zero trailing bits. The last one matters:
/// without it several strings decode to the same signature, which makes tokens malleable.
const STRICT: GeneralPurpose = URL_SAFE_NO_PAD;

/// Key material in a JWK is operator configuration, not attacker input, and some identity
/// providers pad it; accepting padding there costs nothing and avoids a confusing load failure.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes as base64url without padding (RFC 7515 §2).
pub fn b64url_encode(bytes: &[u8]) -> String {
    STRICT.encode(bytes)
}

/// Decodes base64url without padding, refusing anything else (padding, `+`, `/`, whitespace,
/// non-canonical trailing bits). `None` when the input is not exactly such an encoding.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    STRICT.decode(s.as_bytes()).ok()
}

pub(crate) fn b64url_decode_lenient(s: &str) -> Option<Vec<u8>> {
    LENIENT.decode(s.as_bytes()).ok()
}

/// Parses JSON, refusing duplicate object members at any depth.
///
/// serde_json (like most parsers) silently keeps the last of two equal member names. For a JWT
/// that is dangerous: a header `{"alg":"RS256","alg":"none"}` or a payload with two `sub` members
/// may be read differently by another component (a proxy, a logger, the upstream) than by us, so
/// RFC 7515 §4 / RFC 7519 §4 let us refuse such documents, and we do. Hence this small visitor
/// that builds a `serde_json::Value` but checks each key before inserting it. Names are compared
/// after unescaping, so `"a"` and `"\u0061"` count as the same member.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, KeyError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let classify = |_| {
        if duplicate.get() {
            KeyError::DuplicateMember
        } else {
            KeyError::Json
        }
    };
    let value = StrictSeed(&duplicate)
        .deserialize(&mut de)
        .map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(value)
}

/// Like [`parse_json_strict`] but the document must be a JSON object.
pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, KeyError> {
    match parse_json_strict(bytes)? {
        Value::Object(m) => Ok(m),
        _ => Err(KeyError::NotAnObject),
    }
}

/// A seed rather than a plain `Deserialize` impl so the visitor can report "this failed because of
/// a duplicate" through the shared flag instead of through the error's text.
#[derive(Clone, Copy)]
struct StrictSeed<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        // serde_json's own recursion limit (128) applies inside deserialize_any, so deep nesting
        // cannot overflow the stack here.
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any json value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                self.0.set(true);
                // The member name stays out of the message: it is token content.
                return Err(de::Error::custom("duplicate object member"));
            }
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strict_base64url_refuses_padding_and_other_alphabets() {
        assert_eq!(b64url_decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(b64url_decode(""), Some(vec![]));
        for bad in [
            "YQ==", "YQ=", "Y", "YQ+", "a/b_", "YQ ", " YQ", "Y\nQ", "YR",
        ] {
            assert_eq!(b64url_decode(bad), None, "{bad:?}");
        }
        assert_eq!(b64url_decode("-_8"), Some(vec![0xfb, 0xff]));
    }

    #[test]
    fn non_canonical_trailing_bits_are_refused() {
        // "YQ" and "YR" would both decode to "a" in a lax decoder.
        assert!(b64url_decode("YQ").is_some());
        assert!(b64url_decode("YR").is_none());
    }

    #[test]
    fn lenient_decoder_accepts_padding_for_key_material() {
        assert_eq!(b64url_decode_lenient("YQ=="), Some(b"a".to_vec()));
        assert_eq!(b64url_decode_lenient("YQ"), Some(b"a".to_vec()));
        assert_eq!(b64url_decode_lenient("YQ+/"), None);
    }

    #[test]
    fn duplicate_members_are_refused_at_any_depth() {
        assert!(matches!(
            parse_json_strict(br#"{"alg":"RS256","alg":"none"}"#),
            Err(KeyError::DuplicateMember)
        ));
        assert!(matches!(
            parse_json_strict(br#"{"a":{"b":1,"b":2}}"#),
            Err(KeyError::DuplicateMember)
        ));
        assert!(matches!(
            parse_json_strict(br#"[{"x":1,"x":1}]"#),
            Err(KeyError::DuplicateMember)
        ));
        // Equal after unescaping.
        assert!(matches!(
            parse_json_strict(br#"{"a":1,"\u0061":2}"#),
            Err(KeyError::DuplicateMember)
        ));
        assert!(parse_json_strict(br#"{"a":1,"A":2,"b":{"a":3}}"#).is_ok());
    }

    #[test]
    fn parses_like_serde_json_otherwise() {
        let doc =
            br#" {"s":"x","n":-1,"u":18446744073709551615,"f":1.5,"b":true,"z":null,"a":[1,[2]]} "#;
        let strict = parse_json_strict(doc).unwrap();
        let plain: Value = serde_json::from_slice(doc).unwrap();
        assert_eq!(strict, plain);
        assert_eq!(strict["a"], json!([1, [2]]));
    }

    #[test]
    fn syntax_errors_and_trailing_data_are_refused() {
        for bad in [
            &b"{"[..],
            b"{}x",
            b"{} {}",
            b"",
            b"{'a':1}",
            b"\xff",
            b"{\"a\":NaN}",
        ] {
            assert!(
                matches!(parse_json_strict(bad), Err(KeyError::Json)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse_json_strict(deep.as_bytes()).is_err());
    }

    #[test]
    fn object_helper() {
        assert!(parse_json_object(b"{}").unwrap().is_empty());
        assert!(matches!(
            parse_json_object(b"[]"),
            Err(KeyError::NotAnObject)
        ));
        assert!(matches!(
            parse_json_object(b"\"x\""),
            Err(KeyError::NotAnObject)
        ));
    }
}
