//! Loading key sets: from files and environment variables when the config loads, and from
//! JWKS URLs over HTTP(S) with Pingora's own connector (no second HTTP stack).

use pingora_core::connectors::http::Connector;
use pingora_core::protocols::tls::CaType;
use std::sync::Arc;
use std::time::Duration;
use tollgate_config::KeySource;
use tollgate_jwt::{Algorithm, KeySet};

/// Largest JWKS document accepted (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// A fetched JWKS document and its `Cache-Control: max-age`, if any.
pub struct Fetched {
    pub body: Vec<u8>,
    pub max_age: Option<Duration>,
}

/// Reads a key file: PEM when it looks like PEM, else JWKS (or a single JWK) JSON.
pub fn parse_key_file(bytes: &[u8]) -> Result<KeySet, String> {
    let set = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        KeySet::from_pem(bytes, None, None)
    } else {
        KeySet::from_jwks(bytes)
    };
    set.map_err(|e| e.to_string())
}

/// Reads a JWKS document fetched from a `jwks_uri`: symmetric (`oct`) keys are skipped, so a
/// secret published at a URL can never verify a token.
pub fn parse_remote_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    KeySet::from_remote_jwks(bytes).map_err(|e| e.to_string())
}

/// What tollgate takes from an OpenID provider's discovery document.
#[derive(Debug, PartialEq)]
pub struct Discovered {
    pub jwks_uri: String,
    /// `id_token_signing_alg_values_supported`, the algorithms tollgate knows among them;
    /// `None` when the document does not say.
    pub algorithms: Option<Vec<Algorithm>>,
}

/// Reads a discovery document (OIDC Discovery 1.0 §3; RFC 8414 §2 has the same members).
/// Its `issuer` must equal the provider's exactly (OIDC Discovery §4.3: a document from
/// elsewhere would hand over another issuer's keys), and its `jwks_uri` is held to the rule
/// a configured `jwks_uri` is.
pub fn parse_discovery(
    body: &[u8],
    issuer: &str,
    insecure_http: bool,
) -> Result<Discovered, String> {
    use serde_json::Value;
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the discovery document is not JSON: {e}"))?;
    let doc = doc
        .as_object()
        .ok_or("the discovery document is not a JSON object")?;
    match doc.get("issuer") {
        Some(Value::String(found)) if found == issuer => {}
        Some(Value::String(found)) => {
            return Err(format!(
                "the discovery document's issuer {found:?} is not the provider's issuer {issuer:?}"
            ))
        }
        _ => return Err("the discovery document has no issuer string".into()),
    }
    let Some(Value::String(jwks_uri)) = doc.get("jwks_uri") else {
        return Err("the discovery document has no jwks_uri string".into());
    };
    if let Some(problem) = tollgate_config::fetch_url_problem(jwks_uri, insecure_http) {
        return Err(format!(
            "the discovery document's jwks_uri {jwks_uri:?} {problem}"
        ));
    }
    let algorithms = match doc.get("id_token_signing_alg_values_supported") {
        None => None,
        Some(Value::Array(list)) => {
            let known: Vec<Algorithm> = list
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|a| a.parse().ok())
                .collect();
            if known.is_empty() {
                return Err("no algorithm in the discovery document's \
                     id_token_signing_alg_values_supported is one tollgate verifies"
                    .into());
            }
            Some(known)
        }
        Some(_) => {
            return Err(
                "the discovery document's id_token_signing_alg_values_supported is not a list"
                    .into(),
            )
        }
    };
    Ok(Discovered {
        jwks_uri: jwks_uri.clone(),
        algorithms,
    })
}

/// A key file's keys and the SHA-256 of the bytes they came from (what the file watch
/// compares a later read with).
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
pub fn read_key_file(path: &str) -> Result<(KeySet, [u8; 32]), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let set = parse_key_file(&bytes)?;
    Ok((set, crate::util::digest::sha256(&[&bytes])))
}

/// Loads the keys a source can give synchronously (everything but `jwks_uri`, which
/// starts empty and is fetched before the gateway reports ready). Errors never quote a
/// secret.
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
pub fn load_local(source: &KeySource) -> Result<Option<KeySet>, String> {
    let hmac = |secret: &[u8], alg: &str| -> Result<KeySet, String> {
        let alg: Algorithm = alg
            .parse()
            .map_err(|_| format!("unknown algorithm {alg}"))?;
        let min = alg.hmac_min_len();
        if secret.len() < min {
            return Err(format!(
                "the HMAC secret has {} bytes; {alg:?} needs at least {min}",
                secret.len()
            ));
        }
        Ok(KeySet::from_hmac_secret(secret, None, Some(alg)))
    };
    match source {
        KeySource::Inline(json) => KeySet::from_jwks(json.as_bytes())
            .map(Some)
            .map_err(|e| e.to_string()),
        KeySource::File(path) => read_key_file(path).map(|(set, _)| Some(set)),
        KeySource::Uri(_) | KeySource::Discovery(_) => Ok(None),
        // Nothing to verify with: the provider is asked about each token.
        KeySource::Introspection(_) | KeySource::ApiKeys(_) => Ok(Some(KeySet::new())),
        KeySource::HmacFile { path, alg } => {
            let mut secret = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            hmac(&secret, alg).map(Some)
        }
        KeySource::HmacEnv { var, alg } => {
            let secret = std::env::var_os(var)
                .ok_or_else(|| format!("environment variable {var} is not set"))?;
            hmac(secret.as_encoded_bytes(), alg).map(Some)
        }
    }
}

/// GETs a JWKS (or discovery) URL within `timeout`, connect to last byte.
pub async fn fetch(
    connector: &Connector,
    uri: &str,
    timeout: Duration,
    ca: Option<&Arc<CaType>>,
) -> Result<Fetched, String> {
    tokio::time::timeout(timeout, fetch_inner(connector, uri, ca))
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

async fn fetch_inner(
    connector: &Connector,
    uri: &str,
    ca: Option<&Arc<CaType>>,
) -> Result<Fetched, String> {
    let (status, max_age, body) = exchange(connector, "GET", uri, &[], None, ca).await?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    Ok(Fetched { body, max_age })
}

/// POSTs a form (`application/x-www-form-urlencoded`) within `timeout`, connect to last
/// byte, with `Authorization: authorization`; the answer's status and body.
pub async fn post_form(
    connector: &Connector,
    uri: &str,
    authorization: &str,
    form: String,
    timeout: Duration,
    ca: Option<&Arc<CaType>>,
) -> Result<(u16, Vec<u8>), String> {
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("authorization", authorization),
    ];
    let call = exchange(
        connector,
        "POST",
        uri,
        &headers,
        Some(form.into_bytes()),
        ca,
    );
    let (status, _, body) = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))??;
    Ok((status, body))
}

/// One HTTP/1.1 request to `uri` ([`crate::util::outbound::call`]): its status,
/// `Cache-Control: max-age` and body (at most [`MAX_JWKS_BYTES`]).
async fn exchange(
    connector: &Connector,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    ca: Option<&Arc<CaType>>,
) -> Result<(u16, Option<Duration>, Vec<u8>), String> {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
    let (resp, body) = crate::util::outbound::call(
        connector,
        crate::util::outbound::Call {
            method,
            uri,
            headers: &headers,
            body,
            ca,
            max_body: MAX_JWKS_BYTES,
            pool: false,
            truncate: false,
        },
    )
    .await?;
    let body = body.whole(MAX_JWKS_BYTES)?;
    let max_age = resp
        .headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok((resp.status.as_u16(), max_age, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(issuer: &str, jwks_uri: &str, algs: serde_json::Value) -> Vec<u8> {
        serde_json::json!({ "issuer": issuer, "jwks_uri": jwks_uri,
            "id_token_signing_alg_values_supported": algs })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_discovery_document_is_taken_only_for_its_exact_issuer_and_a_safe_jwks_uri() {
        let iss = "https://idp.example/realms/a";
        let good = doc(
            iss,
            "https://idp.example/certs",
            serde_json::json!(["ES256", "none", "XX9"]),
        );
        assert_eq!(
            parse_discovery(&good, iss, false).unwrap(),
            Discovered {
                jwks_uri: "https://idp.example/certs".into(),
                algorithms: Some(vec![Algorithm::ES256]),
            }
        );
        let refused = |body: Vec<u8>| parse_discovery(&body, iss, false).unwrap_err();
        // Exact comparison: a trailing slash or another case is another issuer.
        for other in [
            "https://idp.example/realms/a/",
            "https://IDP.example/realms/a",
            "https://idp.example/realms/b",
        ] {
            assert!(refused(doc(
                other,
                "https://idp.example/certs",
                serde_json::json!(["ES256"])
            ))
            .contains("is not the provider's issuer"));
        }
        assert!(refused(doc(
            iss,
            "http://idp.example/certs",
            serde_json::json!(["ES256"])
        ))
        .contains("must be an https:// URL"));
        assert!(parse_discovery(
            &doc(
                iss,
                "http://idp.example/certs",
                serde_json::json!(["ES256"])
            ),
            iss,
            true
        )
        .is_ok());
        assert!(refused(doc(
            iss,
            "https://idp.example/certs",
            serde_json::json!(["none"])
        ))
        .contains("no algorithm"));
        assert!(
            refused(br#"{"jwks_uri": "https://idp.example/certs"}"#.to_vec()).contains("no issuer")
        );
        assert!(
            refused(br#"{"issuer": "https://idp.example/realms/a"}"#.to_vec())
                .contains("no jwks_uri")
        );
        assert!(refused(b"[1]".to_vec()).contains("not a JSON object"));
        let unlisted = br#"{"issuer": "https://idp.example/realms/a", "jwks_uri": "https://idp.example/certs"}"#;
        assert_eq!(
            parse_discovery(unlisted, iss, false).unwrap().algorithms,
            None
        );
    }
}
