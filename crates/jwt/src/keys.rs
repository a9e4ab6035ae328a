//! Verification keys: JWK/JWKS, PEM (SPKI, PKCS#1, X.509) and HMAC secrets, each parsed once into
//! a ready `ring` (or `p521`) verifier and indexed by `kid`, so verifying a token never parses a key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use ring::hmac;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::Decode;
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use crate::alg::{Algorithm, Family};
use crate::codec::{b64url_decode_lenient, parse_json_object};
use crate::KeyError;

/// RFC 7518 §3.3: RSA keys for RS*/PS* must be at least 2048 bits.
const MIN_RSA_BITS: usize = 2048;
/// ring's RSA verifiers stop at 8192 bits; a bigger key could never verify, so refuse it loudly.
const MAX_RSA_BITS: usize = 8192;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The prebuilt verifier for one key.
enum Material {
    Rsa {
        key: RsaPublicKeyComponents<Vec<u8>>,
        bits: usize,
    },
    P256(UnparsedPublicKey<Vec<u8>>),
    P384(UnparsedPublicKey<Vec<u8>>),
    P521(Box<p521::ecdsa::VerifyingKey>),
    Ed25519(UnparsedPublicKey<Vec<u8>>),
    Hmac(Box<HmacKeys>),
}

/// One prebuilt `hmac::Key` per hash, since a key without `alg` may serve any HS* algorithm.
struct HmacKeys {
    len: usize,
    hs256: hmac::Key,
    hs384: hmac::Key,
    hs512: hmac::Key,
}

impl Material {
    fn family(&self) -> Family {
        match self {
            Material::Rsa { .. } => Family::Rsa,
            Material::P256(_) => Family::EcP256,
            Material::P384(_) => Family::EcP384,
            Material::P521(_) => Family::EcP521,
            Material::Ed25519(_) => Family::Ed25519,
            Material::Hmac(_) => Family::Hmac,
        }
    }

    fn kty(&self) -> &'static str {
        match self {
            Material::Rsa { .. } => "RSA",
            Material::P256(_) | Material::P384(_) | Material::P521(_) => "EC",
            Material::Ed25519(_) => "OKP",
            Material::Hmac(_) => "oct",
        }
    }
}

/// One ready verification key. Its `alg`, key type and curve decide which token algorithms it may
/// verify: the token never gets to choose how a key is used.
pub(crate) struct VerifyingKey {
    kid: Option<String>,
    alg: Option<Algorithm>,
    material: Material,
}

impl VerifyingKey {
    pub(crate) fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Rule 9: the key's `alg` (if any) and its type/curve must fit the token's algorithm.
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.material.family() == alg.family()
    }

    /// Rule 10, asked only after `fits`.
    pub(crate) fn is_weak_for(&self, alg: Algorithm) -> bool {
        match &self.material {
            Material::Rsa { bits, .. } => *bits < MIN_RSA_BITS,
            Material::Hmac(h) => h.len < alg.hmac_min_len(),
            _ => false,
        }
    }

    /// Rule 11. Only called with an `alg` this key `fits`; any other combination is `false`.
    pub(crate) fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        use Algorithm as A;
        match (&self.material, alg) {
            (Material::Rsa { key, .. }, _) => {
                let params: &signature::RsaParameters = match alg {
                    A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    A::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                key.verify(params, msg, sig).is_ok()
            }
            (Material::P256(k), A::ES256)
            | (Material::P384(k), A::ES384)
            | (Material::Ed25519(k), A::EdDSA) => k.verify(msg, sig).is_ok(),
            (Material::P521(k), A::ES512) => {
                use p521::ecdsa::signature::Verifier;
                // Raw r||s of 66 bytes each (RFC 7518 §3.4); `from_slice` refuses any other length,
                // so a DER-encoded signature can never be accepted.
                sig.len() == 132
                    && p521::ecdsa::Signature::from_slice(sig)
                        .is_ok_and(|s| k.verify(msg, &s).is_ok())
            }
            (Material::Hmac(h), A::HS256) => hmac::verify(&h.hs256, msg, sig).is_ok(),
            (Material::Hmac(h), A::HS384) => hmac::verify(&h.hs384, msg, sig).is_ok(),
            (Material::Hmac(h), A::HS512) => hmac::verify(&h.hs512, msg, sig).is_ok(),
            _ => false,
        }
    }
}

/// Shows what a key is, never what it contains: oct keys are secrets, and even public key bytes
/// have no business in logs.
impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("VerifyingKey");
        d.field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.material.kty());
        match &self.material {
            Material::Rsa { bits, .. } => d.field("bits", bits),
            Material::Hmac(_) => d.field("secret", &"<redacted>"),
            _ => &mut d,
        };
        d.finish_non_exhaustive()
    }
}

/// An immutable set of ready verification keys, indexed by `kid`.
///
/// `Send + Sync`; cloning is cheap (the keys are reference-counted), and the gateway shares one
/// behind an `Arc` and swaps it whole on refresh.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    by_kid: HashMap<String, Vec<usize>>,
    kidless: Vec<usize>,
    skipped: usize,
    skipped_symmetric: usize,
    /// When set, only these algorithms verify, whatever the keys would fit (an OpenID
    /// provider's published list).
    algorithms: Option<Vec<Algorithm>>,
}

impl KeySet {
    /// An empty set (every token is then rejected with `unknown_kid`).
    pub fn new() -> KeySet {
        KeySet::default()
    }

    /// Loads a JWKS document (`{"keys":[...]}`) or a single JWK object.
    ///
    /// Keys this verifier can never use are skipped rather than refused, because real JWKS
    /// endpoints publish them next to signing keys: `use` other than `sig`, `key_ops` without
    /// `verify`, an `alg` that is not a JWS algorithm we support (e.g. `RSA-OAEP`), an unknown
    /// `kty` or curve. [`KeySet::skipped`] counts them. A key of a supported type that is
    /// malformed fails the whole document, so a broken configuration is noticed.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, KeyError> {
        KeySet::parse_jwks(json, true)
    }

    /// Loads a JWKS document fetched from a URL (`jwks_uri`): like [`KeySet::from_jwks`], but
    /// symmetric (`oct`) keys are skipped and counted in [`KeySet::skipped`] and
    /// [`KeySet::skipped_symmetric`], without even decoding them. A secret served at a URL is
    /// no secret: whoever can read the document, or change it in transit, could mint HS*
    /// tokens the gateway would accept (RFC 8725 §3.1, §3.2).
    pub fn from_remote_jwks(json: &[u8]) -> Result<KeySet, KeyError> {
        KeySet::parse_jwks(json, false)
    }

    fn parse_jwks(json: &[u8], symmetric: bool) -> Result<KeySet, KeyError> {
        let doc = parse_json_object(json)?;
        let mut set = KeySet::new();
        let mut add = |index: usize, jwk: &Value| -> Result<(), KeyError> {
            let wrap = |e: KeyError| KeyError::InSet {
                index,
                source: Box::new(e),
            };
            let obj = jwk.as_object().ok_or(KeyError::NotAnObject).map_err(wrap)?;
            if !symmetric && obj.get("kty").and_then(Value::as_str) == Some("oct") {
                set.skipped += 1;
                set.skipped_symmetric += 1;
                return Ok(());
            }
            match parse_jwk(obj).map_err(wrap)? {
                Some(k) => set.push(k),
                None => set.skipped += 1,
            }
            Ok(())
        };
        match doc.get("keys") {
            Some(Value::Array(keys)) => {
                for (i, jwk) in keys.iter().enumerate() {
                    add(i, jwk)?;
                }
            }
            Some(_) => return Err(KeyError::BadMember("keys")),
            None if doc.contains_key("kty") => add(0, &Value::Object(doc.clone()))?,
            None => return Err(KeyError::NotAKeySet),
        }
        Ok(set)
    }

    /// Loads every block of a PEM document: `PUBLIC KEY` (SPKI: RSA, EC P-256/384/521, Ed25519),
    /// `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (X.509; only its public key is used: the
    /// certificate's validity and chain are not checked, it is just a key container here).
    /// All keys get the given `kid` and `alg`; an `alg` that cannot fit a key is an error.
    pub fn from_pem(
        pem: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
    ) -> Result<KeySet, KeyError> {
        let blocks = pem::parse_many(pem).map_err(|_| KeyError::Pem)?;
        if blocks.is_empty() {
            return Err(KeyError::NoPem);
        }
        let mut set = KeySet::new();
        for (index, block) in blocks.iter().enumerate() {
            let material = pem_block_material(block).map_err(|e| KeyError::InSet {
                index,
                source: Box::new(e),
            })?;
            let key = VerifyingKey {
                kid: kid.map(str::to_owned),
                alg,
                material,
            };
            if let Some(alg) = alg {
                if !key.fits(alg) {
                    return Err(KeyError::AlgorithmMismatch { alg });
                }
            }
            set.push(key);
        }
        Ok(set)
    }

    /// A set holding one HMAC secret. A secret shorter than the hash output is kept but answers
    /// `weak_key`; an `alg` that is not HS* makes the key unusable (every token gets `alg`).
    pub fn from_hmac_secret(secret: &[u8], kid: Option<&str>, alg: Option<Algorithm>) -> KeySet {
        let mut set = KeySet::new();
        set.push(VerifyingKey {
            kid: kid.map(str::to_owned),
            alg,
            material: hmac_material(secret),
        });
        set
    }

    /// The one public key a DPoP proof carries in its `jwk` header (RFC 9449 §4.2): an
    /// asymmetric key of a supported type and curve, with no private member. Its `kid`, if
    /// any, is dropped so the proof's header `kid` cannot steer key selection.
    pub(crate) fn from_proof_jwk(jwk: &Map<String, Value>) -> Result<KeySet, &'static str> {
        const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if PRIVATE.iter().any(|m| jwk.contains_key(*m)) {
            return Err("the DPoP proof jwk holds private key material");
        }
        if jwk.get("kty").and_then(Value::as_str) == Some("oct") {
            return Err("the DPoP proof jwk must be an asymmetric key");
        }
        let Ok(Some(mut key)) = parse_jwk(jwk) else {
            return Err("the DPoP proof jwk is not a usable public key");
        };
        key.kid = None;
        let mut set = KeySet::new();
        set.push(key);
        Ok(set)
    }

    /// Combines several sets (e.g. a JWKS and a PEM file for the same provider).
    pub fn merge(sets: impl IntoIterator<Item = KeySet>) -> KeySet {
        let mut out = KeySet::new();
        for s in sets {
            out.extend(s);
        }
        out
    }

    /// Adds all keys of `other` to this set.
    pub fn extend(&mut self, other: KeySet) {
        self.skipped += other.skipped;
        self.skipped_symmetric += other.skipped_symmetric;
        for k in other.keys {
            self.push_arc(k);
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Only `algorithms` verify from now on: a token whose `alg` is not listed is refused
    /// (`alg`) even when a key fits it. Narrows; never widens what a key allows.
    pub fn limit_algorithms(&mut self, algorithms: Vec<Algorithm>) {
        self.algorithms = Some(algorithms);
    }

    /// Whether `alg` may verify at all with this set (see [`KeySet::limit_algorithms`]).
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms
            .as_ref()
            .is_none_or(|list| list.contains(&alg))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many JWKS entries were skipped as unusable for JWS verification.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// How many of the skipped entries were symmetric keys refused by
    /// [`KeySet::from_remote_jwks`].
    pub fn skipped_symmetric(&self) -> usize {
        self.skipped_symmetric
    }

    /// The `kid` of each key, in load order (`None` for keys without one).
    /// Each key's `kid` (`None` for a key without one), in the set's order.
    pub fn kids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid())
    }

    /// Each key's `kid`, the algorithm it names (if any) and its `kty`, in the set's order:
    /// what may be shown of a key set (never key material).
    pub fn describe(
        &self,
    ) -> impl Iterator<Item = (Option<&str>, Option<Algorithm>, &'static str)> {
        self.keys.iter().map(|k| (k.kid(), k.alg, k.material.kty()))
    }

    /// Whether a key with exactly this `kid` exists (kid-less keys do not count).
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Rule 8: keys whose `kid` equals the token's, then keys without a `kid`; every key when the
    /// token has none.
    pub(crate) fn candidates<'s>(
        &'s self,
        kid: Option<&str>,
    ) -> Box<dyn Iterator<Item = &'s VerifyingKey> + 's> {
        match kid {
            None => Box::new(self.keys.iter().map(|k| &**k)),
            Some(kid) => Box::new(
                self.by_kid
                    .get(kid)
                    .into_iter()
                    .flatten()
                    .chain(self.kidless.iter())
                    .map(|&i| &*self.keys[i]),
            ),
        }
    }

    fn push(&mut self, key: VerifyingKey) {
        self.push_arc(Arc::new(key));
    }

    fn push_arc(&mut self, key: Arc<VerifyingKey>) {
        let i = self.keys.len();
        match key.kid() {
            Some(kid) => self.by_kid.entry(kid.to_owned()).or_default().push(i),
            None => self.kidless.push(i),
        }
        self.keys.push(key);
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys)
            .field("skipped", &self.skipped)
            .field("skipped_symmetric", &self.skipped_symmetric)
            .finish()
    }
}

/// `Ok(None)` means "valid JWK, but not one this verifier can use" (see [`KeySet::from_jwks`]).
fn parse_jwk(jwk: &Map<String, Value>) -> Result<Option<VerifyingKey>, KeyError> {
    let kty = str_member(jwk, "kty")?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(KeyError::BadMember("kid")),
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(_)) => return Ok(None),
        Some(_) => return Err(KeyError::BadMember("use")),
    }
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if !ops.iter().any(|o| o == "verify") => return Ok(None),
        Some(Value::Array(_)) => {}
        Some(_) => return Err(KeyError::BadMember("key_ops")),
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(a) => Some(a),
            Err(_) => return Ok(None),
        },
        Some(_) => return Err(KeyError::BadMember("alg")),
    };
    let material = match kty {
        "RSA" => {
            if jwk.contains_key("n") || !jwk.contains_key("x5c") {
                rsa_material(&bytes_member(jwk, "n")?, &bytes_member(jwk, "e")?)?
            } else {
                x5c_material(jwk, Family::Rsa)?
            }
        }
        "EC" => {
            let (len, family) = match str_member(jwk, "crv")? {
                "P-256" => (32, Family::EcP256),
                "P-384" => (48, Family::EcP384),
                "P-521" => (66, Family::EcP521),
                _ => return Ok(None),
            };
            if !jwk.contains_key("x") && jwk.contains_key("x5c") {
                x5c_material(jwk, family)?
            } else {
                let x = coordinate(&bytes_member(jwk, "x")?, len)?;
                let y = coordinate(&bytes_member(jwk, "y")?, len)?;
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                ec_material(family, point)?
            }
        }
        "OKP" => match str_member(jwk, "crv")? {
            "Ed25519" => ed25519_material(bytes_member(jwk, "x")?)?,
            _ => return Ok(None),
        },
        "oct" => hmac_material(&bytes_member(jwk, "k")?),
        _ => return Ok(None),
    };
    Ok(Some(VerifyingKey { kid, alg, material }))
}

fn str_member<'a>(jwk: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, KeyError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or(KeyError::MissingMember(name))
}

fn bytes_member(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    b64url_decode_lenient(str_member(jwk, name)?).ok_or(KeyError::BadBase64(name))
}

/// JWK coordinates must be full length (RFC 7518 §6.2.1.2), but some producers drop leading zero
/// bytes (jwt_verify_lib's own P-521 test key does); left-padding is unambiguous, so accept that.
fn coordinate(c: &[u8], len: usize) -> Result<Vec<u8>, KeyError> {
    if c.len() > len {
        return Err(KeyError::InvalidKey(
            "ec coordinate is longer than the curve size",
        ));
    }
    let mut out = vec![0u8; len - c.len()];
    out.extend_from_slice(c);
    Ok(out)
}

/// A key given only as a certificate chain (`x5c`, standard base64 DER): the first certificate
/// carries the key (RFC 7517 §4.7). The chain itself is not validated.
fn x5c_material(jwk: &Map<String, Value>, want: Family) -> Result<Material, KeyError> {
    use base64::Engine as _;
    let first = jwk
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or(KeyError::BadMember("x5c"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(first)
        .map_err(|_| KeyError::BadBase64("x5c"))?;
    let material = cert_material(&der)?;
    if material.family() != want {
        return Err(KeyError::InvalidKey(
            "x5c certificate key does not match kty/crv",
        ));
    }
    Ok(material)
}

fn pem_block_material(block: &pem::Pem) -> Result<Material, KeyError> {
    match block.tag() {
        "PUBLIC KEY" => {
            let spki = SubjectPublicKeyInfoOwned::from_der(block.contents())
                .map_err(|_| KeyError::Der("not a subject public key info"))?;
            spki_material(&spki)
        }
        "CERTIFICATE" => cert_material(block.contents()),
        "RSA PUBLIC KEY" => rsa_pkcs1_material(block.contents()),
        _ => Err(KeyError::UnexpectedPemBlock),
    }
}

fn cert_material(der: &[u8]) -> Result<Material, KeyError> {
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|_| KeyError::Der("not an x.509 certificate"))?;
    spki_material(&cert.tbs_certificate.subject_public_key_info)
}

fn spki_material(spki: &SubjectPublicKeyInfoOwned) -> Result<Material, KeyError> {
    let key = spki
        .subject_public_key
        .as_bytes()
        .ok_or(KeyError::Der("public key bit string has unused bits"))?;
    let oid = spki.algorithm.oid;
    if oid == OID_RSA {
        rsa_pkcs1_material(key)
    } else if oid == OID_EC {
        let curve: ObjectIdentifier = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as().ok())
            .ok_or(KeyError::Der("ec key without a named curve"))?;
        let family = match curve {
            c if c == OID_P256 => Family::EcP256,
            c if c == OID_P384 => Family::EcP384,
            c if c == OID_P521 => Family::EcP521,
            _ => return Err(KeyError::UnsupportedKey("ec curve")),
        };
        ec_material(family, key.to_vec())
    } else if oid == OID_ED25519 {
        ed25519_material(key.to_vec())
    } else {
        Err(KeyError::UnsupportedKey("public key algorithm"))
    }
}

fn rsa_pkcs1_material(der: &[u8]) -> Result<Material, KeyError> {
    let key =
        pkcs1::RsaPublicKey::from_der(der).map_err(|_| KeyError::Der("not an rsa public key"))?;
    rsa_material(key.modulus.as_bytes(), key.public_exponent.as_bytes())
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, KeyError> {
    // ring refuses integers with leading zero bytes; JWKs sometimes carry one.
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    let bits = match n.first() {
        Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => return Err(KeyError::InvalidKey("rsa modulus is zero")),
    };
    if bits > MAX_RSA_BITS {
        return Err(KeyError::InvalidKey("rsa modulus over 8192 bits"));
    }
    if n[n.len() - 1] & 1 == 0 {
        return Err(KeyError::InvalidKey("rsa modulus is even"));
    }
    // ring accepts odd exponents in [3, 2^33 - 1]; check here so a bad key fails at load time
    // instead of making every signature fail.
    let e_val = if e.len() <= 5 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        u64::MAX
    };
    if !(3..(1u64 << 33)).contains(&e_val) || e_val & 1 == 0 {
        return Err(KeyError::InvalidKey("rsa public exponent is not supported"));
    }
    Ok(Material::Rsa {
        key: RsaPublicKeyComponents {
            n: n.to_vec(),
            e: e.to_vec(),
        },
        bits,
    })
}

/// `point` is a SEC1 uncompressed point (0x04 || x || y), the only form ring verifies with.
fn ec_material(family: Family, point: Vec<u8>) -> Result<Material, KeyError> {
    let len = match family {
        Family::EcP256 => 65,
        Family::EcP384 => 97,
        Family::EcP521 => 133,
        _ => return Err(KeyError::UnsupportedKey("ec curve")),
    };
    if point.len() != len || point[0] != 0x04 {
        return Err(KeyError::InvalidKey(
            "ec point is not uncompressed or has the wrong size",
        ));
    }
    // ring checks P-256/P-384 points on every verify and has no load-time check; p521 checks here.
    Ok(match family {
        Family::EcP256 => Material::P256(UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            point,
        )),
        Family::EcP384 => Material::P384(UnparsedPublicKey::new(
            &signature::ECDSA_P384_SHA384_FIXED,
            point,
        )),
        _ => Material::P521(Box::new(
            p521::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .map_err(|_| KeyError::InvalidKey("ec point is not on the curve"))?,
        )),
    })
}

fn ed25519_material(x: Vec<u8>) -> Result<Material, KeyError> {
    if x.len() != signature::ED25519_PUBLIC_KEY_LEN {
        return Err(KeyError::InvalidKey("ed25519 public key is not 32 bytes"));
    }
    Ok(Material::Ed25519(UnparsedPublicKey::new(
        &signature::ED25519,
        x,
    )))
}

fn hmac_material(secret: &[u8]) -> Material {
    Material::Hmac(Box::new(HmacKeys {
        len: secret.len(),
        hs256: hmac::Key::new(hmac::HMAC_SHA256, secret),
        hs384: hmac::Key::new(hmac::HMAC_SHA384, secret),
        hs512: hmac::Key::new(hmac::HMAC_SHA512, secret),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PUB: &[u8] = include_bytes!("../tests/data/rsa2048-test-pub.pem");
    const RSA_PKCS1: &[u8] = include_bytes!("../tests/data/rsa2048-test-pkcs1-pub.pem");
    const RSA_CERT: &[u8] = include_bytes!("../tests/data/rsa2048-test-cert.pem");
    const RSA_WEAK: &[u8] = include_bytes!("../tests/data/rsa1024-weak-test-pub.pem");
    const P256_PUB: &[u8] = include_bytes!("../tests/data/p256-test-pub.pem");
    const P384_CERT: &[u8] = include_bytes!("../tests/data/p384-test-cert.pem");
    const P521_PUB: &[u8] = include_bytes!("../tests/data/p521-test-pub.pem");
    const ED_PUB: &[u8] = include_bytes!("../tests/data/ed25519-test-pub.pem");
    const P256_PRIV: &[u8] = include_bytes!("../tests/data/p256-test-key.pem");

    fn only(set: &KeySet) -> &VerifyingKey {
        assert_eq!(set.len(), 1);
        set.candidates(None).next().unwrap()
    }

    #[test]
    fn pem_spki_pkcs1_and_certificates_load() {
        for (pem, family) in [
            (RSA_PUB, Family::Rsa),
            (RSA_PKCS1, Family::Rsa),
            (RSA_CERT, Family::Rsa),
            (P256_PUB, Family::EcP256),
            (P384_CERT, Family::EcP384),
            (P521_PUB, Family::EcP521),
            (ED_PUB, Family::Ed25519),
        ] {
            let set = KeySet::from_pem(pem, Some("k"), None).unwrap();
            assert_eq!(only(&set).material.family(), family);
            assert!(set.contains_kid("k"));
        }
        let rsa = KeySet::from_pem(RSA_PUB, None, None).unwrap();
        assert!(matches!(
            only(&rsa).material,
            Material::Rsa { bits: 2048, .. }
        ));
    }

    #[test]
    fn pem_with_several_blocks_loads_each() {
        let both = [RSA_CERT, P256_PUB].concat();
        let set = KeySet::from_pem(&both, None, None).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.kids().collect::<Vec<_>>(), vec![None, None]);
    }

    #[test]
    fn pem_refuses_private_keys_garbage_and_misfit_alg() {
        assert_eq!(
            KeySet::from_pem(P256_PRIV, None, None).unwrap_err(),
            KeyError::InSet {
                index: 0,
                source: Box::new(KeyError::UnexpectedPemBlock)
            }
        );
        assert_eq!(
            KeySet::from_pem(b"hello", None, None).unwrap_err(),
            KeyError::NoPem
        );
        assert_eq!(
            KeySet::from_pem(P256_PUB, None, Some(Algorithm::HS256)).unwrap_err(),
            KeyError::AlgorithmMismatch {
                alg: Algorithm::HS256
            }
        );
        assert_eq!(
            KeySet::from_pem(P256_PUB, None, Some(Algorithm::ES384)).unwrap_err(),
            KeyError::AlgorithmMismatch {
                alg: Algorithm::ES384
            }
        );
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            KeySet::from_pem(garbage, None, None),
            Err(KeyError::InSet { .. })
        ));
    }

    #[test]
    fn weak_rsa_is_kept_but_flagged() {
        let set = KeySet::from_pem(RSA_WEAK, None, None).unwrap();
        let k = only(&set);
        assert!(k.fits(Algorithm::RS256));
        assert!(k.is_weak_for(Algorithm::RS256));
        assert!(k.is_weak_for(Algorithm::PS512));
        let strong = KeySet::from_pem(RSA_PUB, None, None).unwrap();
        assert!(!only(&strong).is_weak_for(Algorithm::RS256));
    }

    #[test]
    fn hmac_weakness_depends_on_the_algorithm() {
        let set = KeySet::from_hmac_secret(&[7u8; 48], None, None);
        let k = only(&set);
        assert!(!k.is_weak_for(Algorithm::HS256));
        assert!(!k.is_weak_for(Algorithm::HS384));
        assert!(k.is_weak_for(Algorithm::HS512));
    }

    #[test]
    fn key_type_and_alg_decide_what_a_key_may_verify() {
        let rsa = KeySet::from_pem(RSA_PUB, None, None).unwrap();
        let k = only(&rsa);
        for a in Algorithm::ALL {
            let want = matches!(a.family(), Family::Rsa);
            assert_eq!(k.fits(a), want, "{a}");
        }
        let rsa_rs256 = KeySet::from_pem(RSA_PUB, None, Some(Algorithm::RS256)).unwrap();
        assert!(only(&rsa_rs256).fits(Algorithm::RS256));
        assert!(!only(&rsa_rs256).fits(Algorithm::PS256));
        let ec = KeySet::from_pem(P256_PUB, None, None).unwrap();
        assert!(only(&ec).fits(Algorithm::ES256));
        assert!(!only(&ec).fits(Algorithm::ES384));
        assert!(!only(&ec).fits(Algorithm::HS256));
        let oct = KeySet::from_hmac_secret(b"0123456789abcdef0123456789abcdef", None, None);
        assert!(!only(&oct).fits(Algorithm::RS256));
        assert!(only(&oct).fits(Algorithm::HS512));
    }

    #[test]
    fn jwks_skips_unusable_keys_and_counts_them() {
        let doc = br#"{"keys":[
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"},
            {"kty":"OKP","crv":"X25519","x":"AA"},
            {"kty":"oct","key_ops":["encrypt"],"k":"AA"},
            {"kty":"XYZ"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"}
        ]}"#;
        let set = KeySet::from_jwks(doc).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped(), 6);
        assert!(set.contains_kid("h"));
    }

    #[test]
    fn remote_jwks_never_yields_a_symmetric_key() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty":"oct","kid":"bad","k":"c2Vj*"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"XYZ"}
        ]}"#;
        let set = KeySet::from_remote_jwks(doc).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), [Some("ed")]);
        assert_eq!(set.skipped(), 3);
        assert_eq!(set.skipped_symmetric(), 2);
        // A single oct JWK is skipped too, leaving an empty set.
        let single = KeySet::from_remote_jwks(br#"{"kty":"oct","k":"c2VjcmV0"}"#).unwrap();
        assert!(single.is_empty());
        assert_eq!(single.skipped_symmetric(), 1);
        // The same oct key from a local document is used.
        let local = KeySet::from_jwks(br#"{"kty":"oct","k":"c2VjcmV0"}"#).unwrap();
        assert_eq!((local.len(), local.skipped_symmetric()), (1, 0));
    }

    #[test]
    fn jwks_accepts_a_single_jwk_and_padded_members() {
        let set = KeySet::from_jwks(br#"{"kty":"oct","k":"c2VjcmV0"}"#).unwrap();
        assert_eq!(set.len(), 1);
        let set = KeySet::from_jwks(br#"{"kty":"oct","k":"c2VjcmV0MQ=="}"#).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn jwks_errors_name_the_member_not_the_value() {
        let cases: [(&[u8], KeyError); 6] = [
            (b"[]", KeyError::NotAnObject),
            (b"{}", KeyError::NotAKeySet),
            (br#"{"keys":{}}"#, KeyError::BadMember("keys")),
            (br#"{"keys":[],"keys":[]}"#, KeyError::DuplicateMember),
            (
                br#"{"keys":[{"kty":"oct","k":"c2Vj*"}]}"#,
                KeyError::InSet {
                    index: 0,
                    source: Box::new(KeyError::BadBase64("k")),
                },
            ),
            (
                br#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#,
                KeyError::InSet {
                    index: 0,
                    source: Box::new(KeyError::MissingMember("n")),
                },
            ),
        ];
        for (doc, want) in cases {
            let got = KeySet::from_jwks(doc).unwrap_err();
            assert_eq!(got, want);
            assert!(!got.to_string().contains("c2Vj"));
        }
        let e = KeySet::from_jwks(br#"{"keys":[{"kty":"oct","kid":1,"k":"AA"}]}"#).unwrap_err();
        assert_eq!(e.to_string(), "key 0: jwk member `kid` has the wrong type");
    }

    #[test]
    fn bad_ec_and_okp_keys_fail_at_load() {
        let long = crate::codec::b64url_encode(&[1u8; 33]);
        let doc = format!(r#"{{"kty":"EC","crv":"P-256","x":"{long}","y":"AA"}}"#);
        assert!(KeySet::from_jwks(doc.as_bytes()).is_err());
        let x = crate::codec::b64url_encode(&[1u8; 66]);
        let doc = format!(r#"{{"kty":"EC","crv":"P-521","x":"{x}","y":"{x}"}}"#);
        assert_eq!(
            KeySet::from_jwks(doc.as_bytes()).unwrap_err(),
            KeyError::InSet {
                index: 0,
                source: Box::new(KeyError::InvalidKey("ec point is not on the curve"))
            }
        );
        let doc = br#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#;
        assert!(KeySet::from_jwks(doc).is_err());
    }

    #[test]
    fn bad_rsa_exponents_fail_at_load() {
        let n = crate::codec::b64url_encode(&[0xffu8; 256]);
        for e in ["AQ", "Ag", "AQAA", "AQAAAAAAAQ"] {
            let doc = format!(r#"{{"kty":"RSA","n":"{n}","e":"{e}"}}"#);
            assert!(KeySet::from_jwks(doc.as_bytes()).is_err(), "{e}");
        }
        let mut padded = vec![0u8];
        padded.extend_from_slice(&[0xffu8; 256]);
        let n = crate::codec::b64url_encode(&padded);
        let doc = format!(r#"{{"kty":"RSA","n":"{n}","e":"AQAB"}}"#);
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        assert!(matches!(
            only(&set).material,
            Material::Rsa { bits: 2048, .. }
        ));
    }

    #[test]
    fn x5c_only_jwk_uses_the_certificate_key() {
        let block = pem::parse(RSA_CERT).unwrap();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(block.contents());
        let doc = format!(r#"{{"kty":"RSA","kid":"c","x5c":["{b64}"]}}"#);
        let set = KeySet::from_jwks(doc.as_bytes()).unwrap();
        assert!(matches!(
            only(&set).material,
            Material::Rsa { bits: 2048, .. }
        ));
        let doc = format!(r#"{{"kty":"EC","crv":"P-256","x5c":["{b64}"]}}"#);
        assert!(KeySet::from_jwks(doc.as_bytes()).is_err());
    }

    #[test]
    fn candidates_follow_the_kid_rule() {
        let doc = br#"{"keys":[
            {"kty":"oct","kid":"a","k":"AA"},
            {"kty":"oct","kid":"b","k":"AA"},
            {"kty":"oct","k":"AA"},
            {"kty":"oct","kid":"a","k":"AQ"}
        ]}"#;
        let set = KeySet::from_jwks(doc).unwrap();
        let kids = |t: Option<&str>| set.candidates(t).map(|k| k.kid()).collect::<Vec<_>>();
        assert_eq!(kids(Some("a")), vec![Some("a"), Some("a"), None]);
        assert_eq!(kids(Some("zzz")), vec![None]);
        assert_eq!(kids(None).len(), 4);
        assert!(set.contains_kid("b"));
        assert!(!set.contains_kid("zzz"));
    }

    #[test]
    fn merge_keeps_all_keys_and_reindexes() {
        let a = KeySet::from_hmac_secret(b"x", Some("a"), None);
        let b = KeySet::from_pem(RSA_PUB, Some("b"), None).unwrap();
        let m = KeySet::merge([a, b]);
        assert_eq!(m.len(), 2);
        assert!(m.contains_kid("a") && m.contains_kid("b"));
        assert_eq!(m.candidates(Some("b")).count(), 1);
    }

    #[test]
    fn debug_output_redacts_key_material() {
        let secret = b"super-secret-hmac-key-material!!";
        let mut set = KeySet::from_hmac_secret(secret, Some("h"), None);
        set.extend(KeySet::from_pem(RSA_PUB, Some("r"), None).unwrap());
        let dbg = format!("{set:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        assert!(!dbg.contains("super-secret"), "{dbg}");
        assert!(!dbg.to_lowercase().contains("73757065"), "{dbg}");
        assert!(dbg.contains("bits: 2048"), "{dbg}");
    }

    #[test]
    fn key_set_is_send_and_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<KeySet>();
    }
}
