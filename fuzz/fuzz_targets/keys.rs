//! Key parsing: a JWKS document, a single JWK, a JWKS from a `jwks_uri` (symmetric keys
//! skipped) and PEM (SPKI, PKCS#1, X.509 certificates). Any panic or hang is a bug; a key
//! set that parses must hold no more keys than the document has entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_jwt::KeySet;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = KeySet::from_jwks(data) {
        let entries = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(Vec::len))
            .unwrap_or(1);
        assert!(set.len() <= entries, "more keys than entries");
    }
    if let Ok(set) = KeySet::from_remote_jwks(data) {
        assert!(set.len() + set.skipped() > 0 || !data.is_empty());
    }
    let _ = KeySet::from_pem(data, Some("k"), None);
});
