//! The revocation deny list's parser; a list that parses is checked against claims made
//! from its own entries, and every parsed `jti` entry must revoke its own `jti`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_jwt::{DenyEntry, DenyList};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(list) = DenyList::parse(text) else {
        return;
    };
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<DenyEntry>(line.trim()) else {
            continue;
        };
        if let Some(jti) = &entry.jti {
            let mut claims = serde_json::Map::new();
            claims.insert("jti".into(), jti.clone().into());
            if let Some(iss) = &entry.iss {
                claims.insert("iss".into(), iss.clone().into());
            }
            assert!(list.revoked(&claims).is_some(), "a listed jti is not revoked");
        }
    }
});
