//! Minting tokens for development tooling (`tollgate token mint`) and tests. Not used on the
//! gateway's request path; it exists so the same algorithm rules produce the tokens we verify.

use std::fmt;

use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, RsaPublicKeyComponents,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use ring::{hmac, signature};
use serde_json::{json, Map, Value};

use crate::alg::{Algorithm, Family};
use crate::codec::b64url_encode;
use crate::KeyError;

/// A private key (or HMAC secret) ready to sign. Debug never shows key material.
pub struct SigningKey {
    inner: Inner,
    rng: SystemRandom,
}

enum Inner {
    Hmac { key: hmac::Key, alg: Algorithm },
    Rsa(Box<RsaKeyPair>),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    P521(Box<p521::ecdsa::SigningKey>),
    Ed25519(Ed25519KeyPair),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            Inner::Hmac { alg, .. } => alg.as_str(),
            Inner::Rsa(_) => "RSA",
            Inner::P256(_) => "EC P-256",
            Inner::P384(_) => "EC P-384",
            Inner::P521(_) => "EC P-521",
            Inner::Ed25519(_) => "Ed25519",
        };
        f.debug_struct("SigningKey")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 `PRIVATE KEY` PEM block: RSA (2048-4096 bits), EC P-256, P-384, P-521 or
    /// Ed25519 (`openssl genpkey` output).
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, KeyError> {
        let block = pem::parse(pem).map_err(|_| KeyError::NoPem)?;
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::UnexpectedPemBlock);
        }
        SigningKey::from_pkcs8_der(block.contents())
    }

    /// Reads a PKCS#8 DER private key; the key type is detected by trying each parser, since ring
    /// binds a key pair to one algorithm at parse time.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let inner = if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            Inner::Ed25519(k)
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            Inner::P256(k)
        } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
        {
            Inner::P384(k)
        } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
            Inner::Rsa(Box::new(k))
        } else {
            use p521::pkcs8::DecodePrivateKey;
            let sk = p521::SecretKey::from_pkcs8_der(der)
                .map_err(|_| KeyError::UnsupportedKey("pkcs8 private key"))?;
            let sk = p521::ecdsa::SigningKey::from_bytes(&sk.to_bytes())
                .map_err(|_| KeyError::InvalidKey("p-521 private key"))?;
            Inner::P521(Box::new(sk))
        };
        Ok(SigningKey { inner, rng })
    }

    /// An HMAC secret for one HS* algorithm. Secrets shorter than the hash output are refused,
    /// since our own verifier would answer `weak_key` to every token they sign.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<SigningKey, KeyError> {
        let digest = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return Err(KeyError::AlgorithmMismatch { alg }),
        };
        if secret.len() < alg.hmac_min_len() {
            return Err(KeyError::WeakSecret(alg));
        }
        Ok(SigningKey {
            inner: Inner::Hmac {
                key: hmac::Key::new(digest, secret),
                alg,
            },
            rng: SystemRandom::new(),
        })
    }

    /// Whether this key can sign tokens with `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        match &self.inner {
            Inner::Hmac { alg: a, .. } => *a == alg,
            Inner::Rsa(_) => alg.family() == Family::Rsa,
            Inner::P256(_) => alg == Algorithm::ES256,
            Inner::P384(_) => alg == Algorithm::ES384,
            Inner::P521(_) => alg == Algorithm::ES512,
            Inner::Ed25519(_) => alg == Algorithm::EdDSA,
        }
    }

    /// The natural algorithm for this key (RS256 for RSA).
    pub fn default_algorithm(&self) -> Algorithm {
        match &self.inner {
            Inner::Hmac { alg, .. } => *alg,
            Inner::Rsa(_) => Algorithm::RS256,
            Inner::P256(_) => Algorithm::ES256,
            Inner::P384(_) => Algorithm::ES384,
            Inner::P521(_) => Algorithm::ES512,
            Inner::Ed25519(_) => Algorithm::EdDSA,
        }
    }

    /// The public half as a JWK (`None` for HMAC secrets, which have no public half), so tooling
    /// can publish a JWKS for a key it signs with.
    pub fn public_jwk(&self, kid: Option<&str>, alg: Option<Algorithm>) -> Option<Value> {
        let mut jwk = match &self.inner {
            Inner::Hmac { .. } => return None,
            Inner::Rsa(k) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "n": b64url_encode(&c.n), "e": b64url_encode(&c.e)})
            }
            Inner::P256(k) => ec_jwk("P-256", k.public_key().as_ref()),
            Inner::P384(k) => ec_jwk("P-384", k.public_key().as_ref()),
            Inner::P521(k) => {
                let vk = p521::ecdsa::VerifyingKey::from(&**k);
                ec_jwk("P-521", vk.to_encoded_point(false).as_bytes())
            }
            Inner::Ed25519(k) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64url_encode(k.public_key().as_ref()),
            }),
        };
        let obj = jwk.as_object_mut()?;
        if let Some(kid) = kid {
            obj.insert("kid".into(), kid.into());
        }
        if let Some(alg) = alg {
            obj.insert("alg".into(), alg.as_str().into());
        }
        obj.insert("use".into(), "sig".into());
        Some(jwk)
    }

    pub(crate) fn sign_bytes(&self, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |_| KeyError::SigningFailed;
        Ok(match &self.inner {
            Inner::Hmac { key, .. } => hmac::sign(key, msg).as_ref().to_vec(),
            Inner::Rsa(k) => {
                let padding: &dyn signature::RsaEncoding = match alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    _ => &signature::RSA_PSS_SHA512,
                };
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(padding, &self.rng, msg, &mut sig).map_err(failed)?;
                sig
            }
            Inner::P256(k) | Inner::P384(k) => {
                k.sign(&self.rng, msg).map_err(failed)?.as_ref().to_vec()
            }
            Inner::P521(k) => {
                use p521::ecdsa::signature::Signer;
                let sig: p521::ecdsa::Signature =
                    k.try_sign(msg).map_err(|_| KeyError::SigningFailed)?;
                sig.to_bytes().to_vec()
            }
            Inner::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
        })
    }
}

fn ec_jwk(crv: &str, point: &[u8]) -> Value {
    // `point` is SEC1 uncompressed: 0x04 || x || y with equal-length coordinates.
    let coords = &point[1..];
    let (x, y) = coords.split_at(coords.len() / 2);
    json!({"kty": "EC", "crv": crv, "x": b64url_encode(x), "y": b64url_encode(y)})
}

/// Signs `claims` (a JSON object) as a compact JWS with header `{"alg","kid"?,"typ":"JWT"}`.
pub fn sign(
    header_alg: Algorithm,
    kid: Option<&str>,
    claims: &Value,
    key: &SigningKey,
) -> Result<String, KeyError> {
    let mut header = Map::new();
    header.insert("alg".into(), header_alg.as_str().into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    header.insert("typ".into(), "JWT".into());
    sign_with_header(header_alg, header, claims, key)
}

/// Signs `claims` under `header`, to which `alg` is set: for JWS of other types, such as
/// a DPoP proof (`typ: dpop+jwt` and a `jwk`).
pub fn sign_with_header(
    alg: Algorithm,
    mut header: Map<String, Value>,
    claims: &Value,
    key: &SigningKey,
) -> Result<String, KeyError> {
    if !key.supports(alg) {
        return Err(KeyError::AlgorithmMismatch { alg });
    }
    if !claims.is_object() {
        return Err(KeyError::ClaimsNotObject);
    }
    header.insert("alg".into(), alg.as_str().into());
    let header = serde_json::to_vec(&header).map_err(|_| KeyError::Json)?;
    let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Json)?;
    let mut token = b64url_encode(&header);
    token.push('.');
    token.push_str(&b64url_encode(&payload));
    let sig = key.sign_bytes(alg, token.as_bytes())?;
    token.push('.');
    token.push_str(&b64url_encode(&sig));
    Ok(token)
}
