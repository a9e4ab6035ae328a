//! The JWS algorithms this crate accepts (RFC 7518 §3 plus EdDSA from RFC 8037).
//! A closed enum so that `none` and anything unknown cannot even be represented.

use std::fmt;
use std::str::FromStr;

use crate::KeyError;

/// A JWS signature algorithm. `none` is deliberately absent.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

/// The kind of key an algorithm needs; used to stop algorithm confusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    EcP521,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 13] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::EdDSA,
    ];

    /// The registered JOSE name, e.g. `"RS256"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::ES512 => "ES512",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub(crate) fn family(self) -> Family {
        match self {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 => Family::EcP256,
            Algorithm::ES384 => Family::EcP384,
            Algorithm::ES512 => Family::EcP521,
            Algorithm::EdDSA => Family::Ed25519,
        }
    }

    /// Minimum HMAC key length in bytes: the hash output size (RFC 7518 §3.2).
    pub fn hmac_min_len(self) -> usize {
        match self {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    /// Exact, case-sensitive match: JOSE names are case-sensitive (RFC 7515 §4.1.1), and a lax
    /// match would let `"hs256"` or `"NONE"` variants slip through differently in different places.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(KeyError::UnknownAlgorithm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>().ok(), Some(a));
            assert_eq!(a.to_string(), a.as_str());
        }
    }

    #[test]
    fn none_and_case_variants_are_refused() {
        for s in [
            "none", "None", "NONE", "nOnE", "hs256", "Rs256", "", "ES512 ", "EDDSA",
        ] {
            assert!(s.parse::<Algorithm>().is_err(), "{s}");
        }
    }

    #[test]
    fn hmac_minimums_match_hash_output() {
        assert_eq!(Algorithm::HS256.hmac_min_len(), 32);
        assert_eq!(Algorithm::HS384.hmac_min_len(), 48);
        assert_eq!(Algorithm::HS512.hmac_min_len(), 64);
    }
}
