//! Fuzzes the whole verification path (parsing, key selection, signature) with arbitrary bytes
//! against a small fixed key set of every key type; any panic or hang is a bug.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_jwt::{decode_unverified, peek_issuer, verify, KeySet, Validation};

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        KeySet::merge([
            KeySet::from_hmac_secret(&[7u8; 32], Some("h"), None),
            KeySet::from_hmac_secret(&[1u8; 8], None, None),
            KeySet::from_pem(
                include_bytes!("../../crates/jwt/tests/data/p256-test-pub.pem"),
                Some("e"),
                None,
            )
            .expect("test key"),
            KeySet::from_pem(
                include_bytes!("../../crates/jwt/tests/data/p521-test-pub.pem"),
                None,
                None,
            )
            .expect("test key"),
            KeySet::from_pem(
                include_bytes!("../../crates/jwt/tests/data/ed25519-test-pub.pem"),
                None,
                None,
            )
            .expect("test key"),
            KeySet::from_pem(
                include_bytes!("../../crates/jwt/tests/data/rsa2048-test-pub.pem"),
                Some("r"),
                None,
            )
            .expect("test key"),
        ])
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let v = Validation {
        leeway_s: 60,
        issuer: Some("https://issuer.example".into()),
        audiences: vec!["api".into()],
        token_types: Vec::new(),
    };
    let _ = verify(&token, keys(), &v, 1_700_000_000);
    let _ = peek_issuer(&token);
    let _ = decode_unverified(&token);
});
