//! Secrets taken out of what the gateway shows of its own state (the admin view): a URL's
//! password, private key members, values of keys named as secrets.

use serde_json::Value;

/// What a removed secret reads as.
pub const REDACTED: &str = "[redacted]";

/// `url` with its userinfo (`user:password@`) replaced.
pub fn url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The private members of a JWK (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
const PRIVATE_JWK: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Removes secrets from a config document, in place: every URL's userinfo, the private
/// members of any object with a `kty`, and the value of any key named `password`,
/// `secret` or `…_secret` (a variable's or a file's name, `…_secret_env`, stays).
pub fn config(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let jwk = map.contains_key("kty");
            for (k, value) in map.iter_mut() {
                let secret = k == "password" || k == "secret" || k.ends_with("_secret");
                if secret || (jwk && PRIVATE_JWK.contains(&k.as_str())) {
                    *value = Value::String(REDACTED.to_owned());
                } else {
                    config(value);
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(config),
        Value::String(s) if s.contains("://") => *s = url(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn passwords_private_keys_and_secrets_are_removed_and_names_kept() {
        assert_eq!(
            url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://[redacted]@10.0.0.1:6379/0"
        );
        assert_eq!(url("https://a.example/x@y"), "https://a.example/x@y");
        let mut doc = json!({
            "rate_limiting": {"redis": {"url": "rediss://user:pw@r:6380"}},
            "auth": {"providers": [{
                "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "d": "x", "x": "pub"}]},
                "hmac_secret_env": "HMAC_SECRET",
                "introspection": {"client_secret": "s3cret", "client_secret_file": "/run/s"}
            }]}
        });
        config(&mut doc);
        let text = doc.to_string();
        for secret in ["pw@", "c2VjcmV0", "\"x\",", "s3cret"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        for kept in [
            "HMAC_SECRET",
            "/run/s",
            "\"pub\"",
            "rediss://[redacted]@r:6380",
        ] {
            assert!(text.contains(kept), "{kept} not in {text}");
        }
    }
}
