//! tollgate-jwt: a pure JWT (JWS compact) verifier on `ring`, plus a small signer for tooling.
//! Pure means no I/O, no async and no clock reads: the caller passes `now`, so the same token and
//! key set always give the same verdict and the gateway can verify on its hot path without blocking.
//!
//! Verification applies the rules of the conformance corpus in a fixed order; the first rule that
//! fails decides the [`Reason`]. Keys are parsed once into a [`KeySet`]; verifying never parses a key.
//!
//! ```
//! use tollgate_jwt::{sign, verify, Algorithm, KeySet, Reason, SigningKey, Validation};
//!
//! let secret = [7u8; 32];
//! let keys = KeySet::from_hmac_secret(&secret, Some("k1"), Some(Algorithm::HS256));
//! let minted = sign(
//!     Algorithm::HS256,
//!     Some("k1"),
//!     &serde_json::json!({"sub": "alice", "exp": 2_000}),
//!     &SigningKey::hmac(&secret, Algorithm::HS256).unwrap(),
//! )
//! .unwrap();
//! let v = Validation { leeway_s: 0, ..Validation::default() };
//! assert_eq!(verify(&minted, &keys, &v, 1_000).unwrap().claims["sub"], "alice");
//! assert_eq!(verify(&minted, &keys, &v, 2_000).unwrap_err().reason, Reason::Expired);
//! ```

mod alg;
pub mod codec;
pub mod dpop;
mod error;
mod keys;
mod revoke;
mod sign;
mod verify;

pub use alg::Algorithm;
pub use error::KeyError;
pub use keys::KeySet;
pub use revoke::{DenyList, Entry as DenyEntry, ListError, Revoked};
pub use sign::{sign, sign_with_header, SigningKey};
pub use verify::{
    claims_token, decode_unverified, parse_token, peek_issuer, verdict_json, verify,
    verify_signature, ParsedToken, Reason, Rejection, Validation, VerifiedToken, MAX_TOKEN_BYTES,
};

#[cfg(test)]
mod tests;
