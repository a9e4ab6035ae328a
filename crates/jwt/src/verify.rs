//! Token verification: the fixed rule order of the conformance corpus, split into a signature
//! stage (cacheable per token) and a claims stage (re-run on every request because time moves).

use std::fmt;

use serde_json::{json, Map, Value};

use crate::alg::Algorithm;
use crate::codec::{b64url_decode, parse_json_object, parse_json_strict};
use crate::keys::KeySet;
use crate::KeyError;

/// Tokens above this many bytes are refused before any decoding (rule 1).
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// NumericDate values must lie in [0, 2^63) (rule 7).
const MAX_NUMERIC_DATE: f64 = 9_223_372_036_854_775_808.0;

/// Why a token was not accepted. The set is fixed; metrics and responses use [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token was presented. Never produced by the verifier; here so the gateway has one enum.
    Missing,
    TooLarge,
    Malformed,
    Alg,
    Unsupported,
    UnknownKid,
    WeakKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// The header `typ` is missing or not one of [`Validation::token_types`] (RFC 8725 §3.11).
    Type,
    /// The token is bound to a client certificate (RFC 8705 §3, `cnf.x5t#S256`) that the
    /// connection did not present, or binding is required and the token is not bound. Never
    /// produced by the verifier: the gateway checks it against the connection.
    Binding,
    /// The token is on the deny list (a revoked `jti`, or its subject revoked since it was
    /// issued). Never produced by the verifier: the gateway checks its list.
    Revoked,
}

impl Reason {
    pub const ALL: [Reason; 15] = [
        Reason::Missing,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::Alg,
        Reason::Unsupported,
        Reason::UnknownKid,
        Reason::WeakKey,
        Reason::Signature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Issuer,
        Reason::Audience,
        Reason::Type,
        Reason::Binding,
        Reason::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::Alg => "alg",
            Reason::Unsupported => "unsupported",
            Reason::UnknownKid => "unknown_kid",
            Reason::WeakKey => "weak_key",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Issuer => "issuer",
            Reason::Audience => "audience",
            Reason::Type => "typ",
            Reason::Binding => "binding",
            Reason::Revoked => "revoked",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token. `detail` is a fixed text: it never quotes the token, its claims or a key, so
/// it is safe to log and to return to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: Reason,
    pub detail: &'static str,
}

fn reject<T>(reason: Reason, detail: &'static str) -> Result<T, Rejection> {
    Err(Rejection { reason, detail })
}

/// What the claims stage checks beyond signature: time with leeway, issuer, audience and,
/// when asked, the header `typ`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Allowed clock skew in seconds, applied to `exp`, `nbf` and `iat`.
    pub leeway_s: u64,
    /// When set, `iss` must equal it exactly.
    pub issuer: Option<String>,
    /// When non-empty, `aud` must contain at least one of these (exact comparison).
    pub audiences: Vec<String>,
    /// When non-empty, the header `typ` must be one of these (explicit typing, RFC 8725 §3.11;
    /// e.g. `at+jwt` for RFC 9068 access tokens). Compared case-insensitively, with an
    /// `application/` prefix ignored on either side (RFC 7515 §4.1.9). Empty: `typ` is not
    /// looked at, which is what the conformance corpus expects.
    pub token_types: Vec<String>,
}

/// A token whose structure, key selection and signature checked out. Claims are not yet
/// time-checked: that is [`Validation::check_claims`].
#[derive(Clone, PartialEq)]
pub struct VerifiedToken {
    /// The JWS algorithm; `None` for claims that came from elsewhere than a JWS the
    /// verifier checked (an opaque token's introspection answer, [`claims_token`]).
    pub alg: Option<Algorithm>,
    /// The `kid` from the token header.
    pub kid: Option<String>,
    /// The `typ` from the token header, when it is a string.
    pub typ: Option<String>,
    pub claims: Map<String, Value>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    pub iss: Option<String>,
    pub sub: Option<String>,
    /// `aud` normalised to a list (a single string becomes one element).
    pub aud: Vec<String>,
}

/// Claim values can be personal data; Debug shows only the registered time/identity claims and
/// how many claims there are, so a stray `{:?}` in a log line does not dump a profile.
impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("typ", &self.typ)
            .field("iss", &self.iss)
            .field("exp", &self.exp)
            .field("nbf", &self.nbf)
            .field("iat", &self.iat)
            .field("claims", &self.claims.len())
            .finish_non_exhaustive()
    }
}

/// Everything rules 1-7 establish, borrowed from the token where possible.
pub(crate) struct Parsed<'t> {
    signing_input: &'t str,
    signature: Vec<u8>,
    pub(crate) alg: Algorithm,
    kid: Option<String>,
    pub(crate) typ: Option<String>,
    /// The whole JOSE header: only a DPoP proof reads more of it (its `jwk`).
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
}

/// The decoded segments of a compact JWS.
struct Segments<'t> {
    signing_input: &'t str,
    header: Vec<u8>,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// Rules 1-2: size, three segments, strict base64url.
fn split(token: &str) -> Result<Segments<'_>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return reject(Reason::TooLarge, "token larger than 64 KiB");
    }
    let segments = token
        .split_once('.')
        .and_then(|(h, rest)| rest.split_once('.').map(|(p, s)| (h, p, s)));
    let Some((h, p, s)) = segments.filter(|(_, _, s)| !s.contains('.')) else {
        return reject(
            Reason::Malformed,
            "token does not have exactly three segments",
        );
    };
    if h.is_empty() || p.is_empty() {
        return reject(Reason::Malformed, "empty header or payload segment");
    }
    let (Some(header), Some(payload), Some(signature)) =
        (b64url_decode(h), b64url_decode(p), b64url_decode(s))
    else {
        return reject(Reason::Malformed, "segment is not unpadded base64url");
    };
    Ok(Segments {
        signing_input: &token[..h.len() + 1 + p.len()],
        header,
        payload,
        signature,
    })
}

fn object(bytes: &[u8], what: Part) -> Result<Map<String, Value>, Rejection> {
    parse_json_object(bytes).map_err(|e| Rejection {
        reason: Reason::Malformed,
        detail: match (e, what) {
            (KeyError::DuplicateMember, Part::Header) => "duplicate member in header",
            (KeyError::DuplicateMember, Part::Payload) => "duplicate member in payload",
            (_, Part::Header) => "header is not a json object",
            (_, Part::Payload) => "payload is not a json object",
        },
    })
}

#[derive(Clone, Copy)]
enum Part {
    Header,
    Payload,
}

/// Rules 1-7, in order.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, Rejection> {
    let Segments {
        signing_input,
        header,
        payload,
        signature,
    } = split(token)?;
    let header = object(&header, Part::Header)?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) if a.eq_ignore_ascii_case("none") => {
            return reject(Reason::Alg, "alg none is refused")
        }
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(a) => a,
            Err(_) => return reject(Reason::Alg, "alg is not supported"),
        },
        _ => return reject(Reason::Alg, "alg missing or not a string"),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return reject(Reason::Malformed, "kid is not a string"),
    };
    // Not a rule of the corpus: a `typ` of another type is kept as absent, and only a
    // validation that asks for token types looks at it.
    let typ = header.get("typ").and_then(Value::as_str).map(str::to_owned);
    if header.contains_key("crit") {
        return reject(
            Reason::Unsupported,
            "crit header: no jws extension is understood",
        );
    }

    let claims = object(&payload, Part::Payload)?;
    check_claim_types(&claims)?;
    Ok(Parsed {
        signing_input,
        signature,
        alg,
        kid,
        typ,
        header,
        claims,
    })
}

fn check_claim_types(claims: &Map<String, Value>) -> Result<(), Rejection> {
    for (name, detail) in [
        ("iss", "iss is not a string"),
        ("sub", "sub is not a string"),
        ("jti", "jti is not a string"),
    ] {
        if claims.get(name).is_some_and(|v| !v.is_string()) {
            return reject(Reason::Malformed, detail);
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return reject(Reason::Malformed, "aud is not a string or array of strings"),
    }
    for (name, detail) in [
        ("exp", "exp is not a numeric date"),
        ("nbf", "nbf is not a numeric date"),
        ("iat", "iat is not a numeric date"),
    ] {
        if let Some(v) = claims.get(name) {
            if numeric_date(v).is_none() {
                return reject(Reason::Malformed, detail);
            }
        }
    }
    Ok(())
}

/// A JSON number in [0, 2^63); fractions are allowed (RFC 7519 §2 NumericDate).
pub(crate) fn numeric_date(v: &Value) -> Option<f64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        // Checked on the integer so values just above 2^63 cannot round down into range.
        return (u < 1 << 63).then_some(u as f64);
    }
    let f = n.as_f64()?;
    (f.is_finite() && (0.0..MAX_NUMERIC_DATE).contains(&f)).then_some(f)
}

/// Rules 1-11: everything up to and including the signature. The result can be cached per token;
/// on a cache hit only [`Validation::check_claims`] needs to run again.
pub fn verify_signature(token: &str, keys: &KeySet) -> Result<VerifiedToken, Rejection> {
    let p = parse(token)?;
    check_signature(&p, keys)?;
    Ok(verified_token(p))
}

/// A token decoded and checked up to its signature (rules 1-7): what [`verify_signature`]
/// does first, for a caller that must choose the keys by the token's unverified `iss`
/// without decoding the token twice. Nothing in it is trusted until
/// [`ParsedToken::verify_signature`] succeeds.
pub struct ParsedToken<'t>(Parsed<'t>);

/// Rules 1-7 on `token`: the same checks, in the same order, as [`verify_signature`].
pub fn parse_token(token: &str) -> Result<ParsedToken<'_>, Rejection> {
    parse(token).map(ParsedToken)
}

impl ParsedToken<'_> {
    /// The `iss` claim, UNVERIFIED: only to choose which keys to verify with.
    pub fn issuer(&self) -> Option<&str> {
        self.0.claims.get("iss").and_then(Value::as_str)
    }

    /// Rules 8-11 against `keys` (may be called again with other keys, e.g. after a
    /// refetch), as [`verify_signature`] checks them.
    pub fn verify_signature(&self, keys: &KeySet) -> Result<(), Rejection> {
        check_signature(&self.0, keys)
    }

    /// The verified token. Call only after [`ParsedToken::verify_signature`] succeeded.
    pub fn into_verified(self) -> VerifiedToken {
        verified_token(self.0)
    }
}

/// Rules 8-11: some key among the candidates for the token's `kid` fits its `alg`, is strong
/// enough, and verifies the signature.
pub(crate) fn check_signature(p: &Parsed<'_>, keys: &KeySet) -> Result<(), Rejection> {
    let (mut any_candidate, mut any_fit, mut any_strong) = (false, false, false);
    let mut verified = false;
    for key in keys.candidates(p.kid.as_deref()) {
        any_candidate = true;
        if !key.fits(p.alg) || !keys.allows(p.alg) {
            continue;
        }
        any_fit = true;
        if key.is_weak_for(p.alg) {
            continue;
        }
        any_strong = true;
        if key.verify(p.alg, p.signing_input.as_bytes(), &p.signature) {
            verified = true;
            break;
        }
    }
    if !verified {
        // The first rule that no candidate passes decides the reason (rules 8-11).
        return if !any_candidate {
            reject(Reason::UnknownKid, "no key matches the token kid")
        } else if !any_fit {
            reject(Reason::Alg, "no matching key may be used with this alg")
        } else if !any_strong {
            reject(
                Reason::WeakKey,
                "key is below the minimum size for this alg",
            )
        } else {
            reject(Reason::Signature, "signature does not verify")
        };
    }
    Ok(())
}

/// Claims vouched for by something other than a signature (an RFC 7662 introspection
/// answer) as a [`VerifiedToken`], so that the claims stage, policies, limits and identity
/// headers treat them exactly as a JWT's: the same claim type rules apply (rule 7).
pub fn claims_token(claims: Map<String, Value>) -> Result<VerifiedToken, Rejection> {
    check_claim_types(&claims)?;
    Ok(token_of(None, None, None, claims))
}

fn verified_token(p: Parsed<'_>) -> VerifiedToken {
    token_of(Some(p.alg), p.kid, p.typ, p.claims)
}

fn token_of(
    alg: Option<Algorithm>,
    kid: Option<String>,
    typ: Option<String>,
    claims: Map<String, Value>,
) -> VerifiedToken {
    let c = &claims;
    let string = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_owned);
    let date = |name: &str| c.get(name).and_then(numeric_date);
    let aud = match c.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    VerifiedToken {
        alg,
        exp: date("exp"),
        nbf: date("nbf"),
        iat: date("iat"),
        iss: string("iss"),
        sub: string("sub"),
        aud,
        kid,
        typ,
        claims,
    }
}

impl Validation {
    /// Rules 12-14 on an already verified token, at `now` (unix seconds), preceded by the
    /// `typ` check when [`Validation::token_types`] is set.
    ///
    /// Comparisons are in f64 because NumericDate may be fractional; every whole-second time up
    /// to 2^53 is exact there, far beyond any real `now`.
    pub fn check_claims(&self, t: &VerifiedToken, now: u64) -> Result<(), Rejection> {
        if !self.token_types.is_empty() {
            let listed = |typ: &str| self.token_types.iter().any(|t| same_media_type(t, typ));
            if !t.typ.as_deref().is_some_and(listed) {
                return reject(Reason::Type, "token typ is missing or not accepted");
            }
        }
        let now = now as f64;
        let leeway = self.leeway_s as f64;
        if t.exp.is_some_and(|exp| now >= exp + leeway) {
            return reject(Reason::Expired, "token has expired");
        }
        if t.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return reject(Reason::NotYetValid, "token is not valid yet (nbf)");
        }
        if t.iat.is_some_and(|iat| iat > now + leeway) {
            return reject(Reason::NotYetValid, "token was issued in the future (iat)");
        }
        if let Some(want) = &self.issuer {
            if t.iss.as_ref() != Some(want) {
                return reject(Reason::Issuer, "issuer does not match");
            }
        }
        if !self.audiences.is_empty() && !t.aud.iter().any(|a| self.audiences.contains(a)) {
            return reject(Reason::Audience, "no accepted audience in aud");
        }
        Ok(())
    }
}

/// Media types compared the way RFC 7515 §4.1.9 allows `typ` to be written: case-insensitively,
/// with `application/` left out when no other `/` follows (`application/at+jwt` = `AT+JWT`).
pub(crate) fn same_media_type(a: &str, b: &str) -> bool {
    fn short(t: &str) -> &str {
        match t.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") && !t[12..].contains('/') => &t[12..],
            _ => t,
        }
    }
    short(a).eq_ignore_ascii_case(short(b))
}

/// All rules, in order: [`verify_signature`] then [`Validation::check_claims`].
pub fn verify(
    token: &str,
    keys: &KeySet,
    v: &Validation,
    now: u64,
) -> Result<VerifiedToken, Rejection> {
    let t = verify_signature(token, keys)?;
    v.check_claims(&t, now)?;
    Ok(t)
}

/// The `iss` claim read WITHOUT verifying anything. Untrusted: use it only to choose which
/// provider's keys to verify with, never to make an access decision.
pub fn peek_issuer(token: &str) -> Option<String> {
    let payload = split(token).ok()?.payload;
    match parse_json_object(&payload).ok()?.remove("iss")? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// Decodes header and payload WITHOUT verifying the signature or any claim, for inspection tools.
/// The header must be a JSON object; the payload may be any JSON value. Duplicate members and
/// bad base64url are still refused (`malformed`), so what is shown is what `verify` would read.
pub fn decode_unverified(token: &str) -> Result<(Value, Value), Rejection> {
    let Segments {
        header, payload, ..
    } = split(token)?;
    let header = object(&header, Part::Header)?;
    let payload = parse_json_strict(&payload).map_err(|e| Rejection {
        reason: Reason::Malformed,
        detail: match e {
            KeyError::DuplicateMember => "duplicate member in payload",
            _ => "payload is not json",
        },
    })?;
    Ok((Value::Object(header), payload))
}

/// The JSON answer of `token verify` (shared by the conformance example and the gateway CLI):
/// `{"valid":true,"alg":..,"kid":..,"claims":{..}}` or `{"valid":false,"reason":..,"detail":..}`.
pub fn verdict_json(result: &Result<VerifiedToken, Rejection>) -> Value {
    match result {
        Ok(t) => json!({
            "valid": true,
            "alg": t.alg.map(Algorithm::as_str),
            "kid": t.kid,
            "claims": t.claims,
        }),
        Err(r) => json!({
            "valid": false,
            "reason": r.reason.as_str(),
            "detail": r.detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_the_fixed_set() {
        let got: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            got,
            [
                "missing",
                "too_large",
                "malformed",
                "alg",
                "unsupported",
                "unknown_kid",
                "weak_key",
                "signature",
                "expired",
                "not_yet_valid",
                "issuer",
                "audience",
                "typ",
                "binding",
                "revoked"
            ]
        );
    }

    #[test]
    fn numeric_dates() {
        for (v, ok) in [
            (json!(0), true),
            (json!(1.5), true),
            (json!(-0.0), true),
            (json!(9_223_372_036_854_775_807u64), true),
            (json!(9_223_372_036_854_775_808u64), false),
            (json!(9.223372036854776e18), false),
            (json!(-1), false),
            (json!(-0.5), false),
            (json!(2.001e206), false),
            (json!("1"), false),
            (json!(true), false),
            (json!(null), false),
        ] {
            assert_eq!(numeric_date(&v).is_some(), ok, "{v}");
        }
    }

    #[test]
    fn rejection_display_is_lowercase_without_period() {
        let r = Rejection {
            reason: Reason::NotYetValid,
            detail: "token is not valid yet (nbf)",
        };
        assert_eq!(r.to_string(), "not_yet_valid: token is not valid yet (nbf)");
    }
}
