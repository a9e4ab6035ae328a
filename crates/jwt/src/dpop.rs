//! DPoP proofs (RFC 9449): a JWS the client signs with its own key for each request, naming
//! the request's method and URI, so a stolen access token bound to that key (`cnf.jkt`, the key's
//! RFC 7638 thumbprint) is useless without the key.
//!
//! Pure like the rest of the crate: the caller passes the canonical request, the access token and
//! `now`; remembering `jti`s (replay) is the caller's, since it needs shared state.

use ring::digest;
use serde_json::{Map, Value};

use crate::alg::{Algorithm, Family};
use crate::codec::b64url_encode;
use crate::keys::KeySet;
use crate::sign::{sign_with_header, SigningKey};
use crate::verify::{check_signature, numeric_date, parse, same_media_type};
use crate::KeyError;

/// Proofs above this size are refused before decoding: a proof is a small header with one
/// public key and five claims; 8 KiB holds an 8192-bit RSA key with room to spare.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Longest `jti` accepted: enough for any random identifier, and bounded so the replay cache's
/// cost per entry is too.
const MAX_JTI_BYTES: usize = 256;

/// The algorithms a proof may use: asymmetric only (RFC 9449 §4.3 check 5). A MAC would need a
/// secret shared with the server, which is not possession of a client key.
pub const PROOF_ALGORITHMS: [Algorithm; 10] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::ES512,
    Algorithm::EdDSA,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// A refused proof. The text is fixed (never quotes the proof), safe to log and to send as
/// the `error_description` of `WWW-Authenticate: DPoP error="invalid_dpop_proof"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProofError(pub &'static str);

/// The request a proof must be for.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The request method, compared exactly with `htm`.
    pub method: &'a str,
    /// The request URI in [`normalize_htu`]'s form: `htu` must normalise to exactly this
    /// (or to one of `also`).
    pub htu: &'a str,
    /// Other URIs, in the same form, the proof may name: the request's path at each other
    /// origin the resource is reached at. Usually empty.
    pub also: &'a [String],
    /// The access token presented with the proof: `ath` must be its hash. `None` only where
    /// no token goes with the proof (a token endpoint); then `ath` is not looked at.
    pub access_token: Option<&'a str>,
}

/// How old (and how far in the future) a proof's `iat` may be, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProofWindow {
    pub max_age_s: u64,
    pub leeway_s: u64,
}

/// An accepted proof: what the caller checks against the token (`jkt`) and remembers
/// against replay (`jti` until `iat` + the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 SHA-256 thumbprint of the proof key, base64url.
    pub jkt: String,
    pub jti: String,
    /// `iat`, whole seconds (rounded down).
    pub iat: u64,
    /// `nonce` (RFC 9449 §8), for the caller to compare with the ones it issued.
    pub nonce: Option<String>,
}

/// Checks `proof` for `req` at `now`, in the order of RFC 9449 §4.3: one well-formed JWS,
/// `typ` `dpop+jwt`, an asymmetric `alg`, a public `jwk` that verifies the signature, then
/// `jti`, `htm`, `htu`, `iat` within `window`, and `ath`.
pub fn verify_proof(
    proof: &str,
    req: &ProofRequest<'_>,
    window: ProofWindow,
    now: u64,
) -> Result<Proof, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError("the DPoP proof is larger than 8 KiB"));
    }
    let p = parse(proof).map_err(|r| ProofError(r.detail))?;
    if !p
        .typ
        .as_deref()
        .is_some_and(|t| same_media_type(t, "dpop+jwt"))
    {
        return Err(ProofError("the DPoP proof typ is not dpop+jwt"));
    }
    if !PROOF_ALGORITHMS.contains(&p.alg) {
        return Err(ProofError("the DPoP proof alg must be asymmetric"));
    }
    let Some(Value::Object(jwk)) = p.header.get("jwk") else {
        return Err(ProofError("the DPoP proof has no jwk header"));
    };
    let key = KeySet::from_proof_jwk(jwk).map_err(ProofError)?;
    check_signature(&p, &key).map_err(|r| {
        ProofError(match r.reason {
            crate::Reason::Signature => "the DPoP proof signature does not verify",
            _ => "the DPoP proof alg does not fit its jwk",
        })
    })?;
    let c = &p.claims;
    let jti = match c.get("jti") {
        Some(Value::String(j)) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => j,
        _ => return Err(ProofError("the DPoP proof jti is missing or too long")),
    };
    if c.get("htm").and_then(Value::as_str) != Some(req.method) {
        return Err(ProofError(
            "the DPoP proof htm is not this request's method",
        ));
    }
    let htu = c.get("htu").and_then(Value::as_str).and_then(normalize_htu);
    let named = htu
        .as_deref()
        .is_some_and(|h| h == req.htu || req.also.iter().any(|a| a == h));
    if !named {
        return Err(ProofError("the DPoP proof htu is not this request's URI"));
    }
    let Some(iat) = c.get("iat").and_then(numeric_date) else {
        return Err(ProofError("the DPoP proof iat is missing"));
    };
    let (now_f, max_age, leeway) = (now as f64, window.max_age_s as f64, window.leeway_s as f64);
    if iat > now_f + leeway {
        return Err(ProofError("the DPoP proof was issued in the future"));
    }
    if iat + max_age + leeway < now_f {
        return Err(ProofError("the DPoP proof is too old"));
    }
    if let Some(token) = req.access_token {
        if c.get("ath").and_then(Value::as_str) != Some(access_token_hash(token).as_str()) {
            return Err(ProofError(
                "the DPoP proof ath is not the hash of the access token",
            ));
        }
    }
    let jkt = jwk_thumbprint(jwk).ok_or(ProofError("the DPoP proof jwk has no thumbprint"))?;
    Ok(Proof {
        jkt,
        jti: jti.clone(),
        iat: iat as u64,
        nonce: c.get("nonce").and_then(Value::as_str).map(str::to_owned),
    })
}

/// `ath` (RFC 9449 §4.2): base64url of the SHA-256 of the access token's ASCII text.
pub fn access_token_hash(token: &str) -> String {
    b64url_encode(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url): the hash of the key's required members
/// only, in lexicographic order, without whitespace. `None` for an unknown `kty` or a required
/// member that is missing or not a string.
pub fn jwk_thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let members: &[&str] = match jwk.get("kty")?.as_str()? {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, name) in members.iter().enumerate() {
        let value = jwk.get(*name)?.as_str()?;
        if i > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        canonical.push_str(&serde_json::to_string(value).ok()?);
    }
    canonical.push('}');
    Some(b64url_encode(
        digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref(),
    ))
}

/// An `htu` (or the request's own URI) in the form proofs are compared in (RFC 9449 §4.3
/// check 9): query and fragment removed, then RFC 3986 §6.2.2 syntax normalisation (scheme and
/// host lowercased, percent-encodings uppercased and unreserved ones decoded, dot segments
/// removed) and §6.2.3 scheme normalisation (default port dropped, empty path `/`).
///
/// `None` for anything that is not an absolute `http`/`https` URI without userinfo. Written
/// here rather than taken from the `url` crate: WHATWG URL parsing (IDNA, its own escaping
/// rules) is a different normalisation from the RFC 3986 one the RFC names.
pub fn normalize_htu(uri: &str) -> Option<String> {
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let uri = uri.split('#').next()?;
    let uri = uri.split('?').next()?;
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['@', '%']) {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        match &authority[end + 1..] {
            "" => (&authority[..=end], None),
            p => (&authority[..=end], Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?).filter(|p| *p != default_port)
        }
        Some(_) => return None,
    };
    let mut out = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(&remove_dot_segments(&normalize_percent(path)?));
    Some(out)
}

/// Percent-encodings uppercased, those of unreserved characters decoded (RFC 3986 §6.2.2.1-2).
fn normalize_percent(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(char::from(b[i]));
            i += 1;
            continue;
        }
        let hex = |c: u8| char::from(c).to_digit(16);
        let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
        let c = (h * 16 + l) as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
        i += 3;
    }
    Some(out)
}

/// RFC 3986 §5.2.4, on a path that is empty or starts with `/`; the result starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    kept.pop();
                }
                if last {
                    kept.push("");
                }
            }
            s => kept.push(s),
        }
    }
    format!("/{}", kept.join("/"))
}

/// A proof for `method` and `htu` with `access_token`'s `ath`, signed by `key` (whose public
/// half goes in the `jwk` header): what a DPoP client sends. For tests, tooling and load tests.
pub fn make_proof(
    key: &SigningKey,
    method: &str,
    htu: &str,
    access_token: Option<&str>,
    jti: &str,
    iat: u64,
) -> Result<String, KeyError> {
    make_proof_with_nonce(key, method, htu, access_token, jti, iat, None)
}

/// As [`make_proof`], with the server's `nonce` (RFC 9449 §8) when given.
pub fn make_proof_with_nonce(
    key: &SigningKey,
    method: &str,
    htu: &str,
    access_token: Option<&str>,
    jti: &str,
    iat: u64,
    nonce: Option<&str>,
) -> Result<String, KeyError> {
    let alg = key.default_algorithm();
    if alg.family() == Family::Hmac {
        return Err(KeyError::AlgorithmMismatch { alg });
    }
    let mut jwk = key.public_jwk(None, None).ok_or(KeyError::Json)?;
    if let Some(o) = jwk.as_object_mut() {
        o.remove("use");
    }
    let mut header = Map::new();
    header.insert("typ".into(), "dpop+jwt".into());
    header.insert("jwk".into(), jwk);
    let mut claims = serde_json::json!({"jti": jti, "htm": method, "htu": htu, "iat": iat});
    if let (Some(token), Some(o)) = (access_token, claims.as_object_mut()) {
        o.insert("ath".into(), access_token_hash(token).into());
    }
    if let (Some(nonce), Some(o)) = (nonce, claims.as_object_mut()) {
        o.insert("nonce".into(), nonce.into());
    }
    sign_with_header(alg, header, &claims, key)
}

/// The thumbprint of `key`'s public half: the `cnf.jkt` of tokens bound to it.
pub fn key_thumbprint(key: &SigningKey) -> Option<String> {
    jwk_thumbprint(key.public_jwk(None, None)?.as_object()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 9449 figure 2 (§4.1): a proof for a token request, so without `ath`.
    const RFC9449_FIGURE_2: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
    /// RFC 9449 figure 13 (§7.1): a proof for a protected resource, with `ath`.
    const RFC9449_FIGURE_13: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
    /// The access token of RFC 9449 figure 12, and the `jkt` of figures 7 and 8.
    const RFC9449_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    const RFC9449_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    const WINDOW: ProofWindow = ProofWindow {
        max_age_s: 60,
        leeway_s: 5,
    };

    /// A fresh P-256 key, as a DPoP client would make.
    fn p256() -> SigningKey {
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap()
    }

    fn resource(method: &'static str, htu: &'static str) -> ProofRequest<'static> {
        ProofRequest {
            method,
            htu,
            also: &[],
            access_token: Some(RFC9449_TOKEN),
        }
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1, with the optional members that must not count.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(jwk.as_object().unwrap()).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        assert_eq!(
            jwk_thumbprint(json!({"kty": "EC"}).as_object().unwrap()),
            None
        );
    }

    #[test]
    fn rfc9449_token_request_proof_verifies_and_names_its_key() {
        let req = ProofRequest {
            method: "POST",
            htu: "https://server.example.com/token",
            also: &[],
            access_token: None,
        };
        let proof = verify_proof(RFC9449_FIGURE_2, &req, WINDOW, 1_562_262_616).unwrap();
        assert_eq!(proof.jkt, RFC9449_JKT);
        assert_eq!(proof.jti, "-BwC3ESc6acc2lTc");
        assert_eq!(proof.iat, 1_562_262_616);
    }

    #[test]
    fn rfc9449_resource_proof_is_bound_to_method_uri_time_and_token() {
        let at = 1_562_262_618 + 30;
        let ok = resource("GET", "https://resource.example.org/protectedresource");
        let proof = verify_proof(RFC9449_FIGURE_13, &ok, WINDOW, at).unwrap();
        assert_eq!(proof.jkt, RFC9449_JKT);
        assert_eq!(proof.jti, "e1j3V_bKic8-LAEB");
        assert_eq!(
            access_token_hash(RFC9449_TOKEN),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        let refused =
            |req: ProofRequest<'_>, now: u64| verify_proof(RFC9449_FIGURE_13, &req, WINDOW, now);
        assert_eq!(
            refused(resource("POST", ok.htu), at),
            Err(ProofError(
                "the DPoP proof htm is not this request's method"
            ))
        );
        assert_eq!(
            refused(resource("GET", "https://resource.example.org/other"), at),
            Err(ProofError("the DPoP proof htu is not this request's URI"))
        );
        let other_token = ProofRequest {
            access_token: Some("another.token"),
            ..ok
        };
        assert_eq!(
            refused(other_token, at),
            Err(ProofError(
                "the DPoP proof ath is not the hash of the access token"
            ))
        );
        assert_eq!(
            refused(ok, 1_562_262_618 + 66),
            Err(ProofError("the DPoP proof is too old"))
        );
        assert_eq!(
            refused(ok, 1_562_262_618 - 6),
            Err(ProofError("the DPoP proof was issued in the future"))
        );
        // One flipped signature bit.
        let mut forged = RFC9449_FIGURE_13.to_owned();
        forged.replace_range(forged.len() - 2..forged.len() - 1, "B");
        assert_eq!(
            verify_proof(&forged, &ok, WINDOW, at),
            Err(ProofError("the DPoP proof signature does not verify"))
        );
    }

    #[test]
    fn htu_is_compared_after_rfc3986_normalisation() {
        let n = |u: &str| normalize_htu(u);
        assert_eq!(
            n("HTTPS://Resource.Example.ORG:443/a/./b/../%7euser%2fx?q=1#f").as_deref(),
            Some("https://resource.example.org/a/~user%2Fx")
        );
        assert_eq!(n("http://h:80").as_deref(), Some("http://h/"));
        assert_eq!(n("http://h:8080/x").as_deref(), Some("http://h:8080/x"));
        assert_eq!(
            n("http://[::1]:443/x").as_deref(),
            Some("http://[::1]:443/x")
        );
        for bad in [
            "ftp://h/x",
            "http://user@h/x",
            "http:///x",
            "http://h:x/",
            "http://h/%zz",
            "/relative",
            "http://h/ x",
        ] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    #[test]
    fn proofs_must_be_typed_asymmetric_and_carry_only_a_public_key() {
        let key = p256();
        let req = ProofRequest {
            method: "GET",
            htu: "http://127.0.0.1:8080/x",
            also: &[],
            access_token: Some("t"),
        };
        let good = make_proof(
            &key,
            "GET",
            "http://127.0.0.1:8080/x",
            Some("t"),
            "j1",
            1_000,
        )
        .unwrap();
        let proof = verify_proof(&good, &req, WINDOW, 1_000).unwrap();
        assert_eq!(Some(proof.jkt), key_thumbprint(&key));

        let jwk = key.public_jwk(None, None).unwrap();
        let claims = json!({"jti": "j", "htm": "GET", "htu": req.htu, "iat": 1_000,
                            "ath": access_token_hash("t")});
        let signed = |header: Value| {
            sign_with_header(
                Algorithm::ES256,
                header.as_object().unwrap().clone(),
                &claims,
                &key,
            )
            .unwrap()
        };
        let check = |proof: &str| verify_proof(proof, &req, WINDOW, 1_000).map(|_| ());
        assert_eq!(
            check(&signed(json!({"typ": "JWT", "jwk": jwk}))),
            Err(ProofError("the DPoP proof typ is not dpop+jwt"))
        );
        assert_eq!(
            check(&signed(json!({"typ": "dpop+jwt"}))),
            Err(ProofError("the DPoP proof has no jwk header"))
        );
        let mut private = jwk.clone();
        private["d"] = "AAAA".into();
        assert_eq!(
            check(&signed(json!({"typ": "dpop+jwt", "jwk": private}))),
            Err(ProofError("the DPoP proof jwk holds private key material"))
        );
        // A MAC proof, keyed by a secret in its own header, proves nothing.
        let secret = SigningKey::hmac(&[7; 32], Algorithm::HS256).unwrap();
        let mac = sign_with_header(
            Algorithm::HS256,
            json!({"typ": "dpop+jwt", "jwk": {"kty": "oct", "k": crate::codec::b64url_encode(&[7; 32])}})
                .as_object()
                .unwrap()
                .clone(),
            &claims,
            &secret,
        )
        .unwrap();
        assert_eq!(
            check(&mac),
            Err(ProofError("the DPoP proof alg must be asymmetric"))
        );
        // Another key's jwk in the header: the signature does not verify under it.
        let other = p256();
        let swapped = signed(json!({"typ": "dpop+jwt", "jwk": other.public_jwk(None, None)}));
        assert_eq!(
            check(&swapped),
            Err(ProofError("the DPoP proof signature does not verify"))
        );
        assert_eq!(
            check(&"x".repeat(MAX_PROOF_BYTES + 1)),
            Err(ProofError("the DPoP proof is larger than 8 KiB"))
        );
    }
}
