//! Property tests: the token parser never panics on any input, base64url round-trips, and JSON
//! objects survive the duplicate-checking parser unchanged.

use proptest::prelude::*;
use serde_json::{Map, Value};
use tollgate_jwt::codec::{b64url_decode, b64url_encode, parse_json_object, parse_json_strict};
use tollgate_jwt::{decode_unverified, peek_issuer, verify, KeySet, Validation};

fn keys() -> KeySet {
    KeySet::merge([
        KeySet::from_hmac_secret(&[7u8; 32], Some("h"), None),
        KeySet::from_hmac_secret(&[1u8; 8], None, None),
        KeySet::from_pem(include_bytes!("data/p256-test-pub.pem"), Some("e"), None).unwrap(),
        KeySet::from_pem(include_bytes!("data/rsa2048-test-pub.pem"), None, None).unwrap(),
    ])
}

fn all_entry_points(token: &str, keys: &KeySet) {
    let v = Validation {
        leeway_s: 30,
        issuer: Some("i".into()),
        audiences: vec!["a".into()],
        token_types: Vec::new(),
    };
    let _ = verify(token, keys, &v, 1_700_000_000);
    let _ = peek_issuer(token);
    let _ = decode_unverified(token);
}

/// JSON values without floats, whose text form may not round-trip bit-exactly.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(".{0,8}", json_value(), 0..8).prop_map(|m| m.into_iter().collect())
}

/// Segments that are valid base64url of random bytes, of a random JSON object, or random
/// characters from the base64url alphabet plus padding.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96).prop_map(|b| b64url_encode(&b)),
        json_object().prop_map(|o| b64url_encode(Value::Object(o).to_string().as_bytes())),
        "[A-Za-z0-9_=-]{0,64}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_arbitrary_strings(s in ".{0,256}") {
        all_entry_points(&s, &keys());
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
        all_entry_points(&String::from_utf8_lossy(&b), &keys());
    }

    #[test]
    fn parser_never_panics_on_three_base64url_segments(h in segment(), p in segment(), s in segment()) {
        all_entry_points(&format!("{h}.{p}.{s}"), &keys());
    }

    #[test]
    fn parser_never_panics_on_json_headers_and_payloads(
        alg in prop_oneof![
            Just("HS256".to_string()),
            Just("ES256".to_string()),
            Just("RS256".to_string()),
            Just("none".to_string()),
            Just("PS512".to_string()),
            ".{0,6}",
        ],
        kid in prop::option::of(prop_oneof![Just("h".to_string()), Just("e".to_string()), ".{0,4}"]),
        payload in json_object(),
        sig in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut header = Map::new();
        header.insert("alg".into(), alg.into());
        if let Some(kid) = kid {
            header.insert("kid".into(), kid.into());
        }
        let token = format!(
            "{}.{}.{}",
            b64url_encode(Value::Object(header).to_string().as_bytes()),
            b64url_encode(Value::Object(payload).to_string().as_bytes()),
            b64url_encode(&sig),
        );
        all_entry_points(&token, &keys());
    }

    #[test]
    fn base64url_round_trips(b in prop::collection::vec(any::<u8>(), 0..256)) {
        let s = b64url_encode(&b);
        prop_assert!(!s.contains('='));
        prop_assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        prop_assert_eq!(b64url_decode(&s), Some(b));
    }

    #[test]
    fn base64url_decode_is_canonical(s in "[A-Za-z0-9_-]{0,64}") {
        // Whatever decodes must re-encode to exactly the input: one encoding per byte string.
        if let Some(b) = b64url_decode(&s) {
            prop_assert_eq!(b64url_encode(&b), s);
        }
    }

    #[test]
    fn json_objects_round_trip_through_the_strict_parser(o in json_object()) {
        let text = Value::Object(o.clone()).to_string();
        prop_assert_eq!(parse_json_object(text.as_bytes()).ok(), Some(o.clone()));
        let pretty = serde_json::to_string_pretty(&Value::Object(o.clone())).unwrap();
        prop_assert_eq!(parse_json_strict(pretty.as_bytes()).ok(), Some(Value::Object(o)));
    }

    #[test]
    fn a_repeated_member_is_always_caught(o in json_object(), key in ".{0,8}", a in json_value(), b in json_value()) {
        let mut text = Value::Object(o).to_string();
        text.pop();
        let sep = if text.len() > 1 { "," } else { "" };
        let k = serde_json::to_string(&key).unwrap();
        text = format!("{text}{sep}{k}:{a},{k}:{b}}}");
        prop_assert_eq!(parse_json_strict(text.as_bytes()).err(), Some(tollgate_jwt::KeyError::DuplicateMember));
    }
}
