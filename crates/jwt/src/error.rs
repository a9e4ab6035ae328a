//! The crate's one error type, for loading keys, parsing configuration documents and signing.
//! Token verdicts are not errors and use [`crate::Rejection`]; no variant ever carries key bytes.

/// Why a key, key set or signing request was refused. Messages name the offending member or
/// block, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("not valid json")]
    Json,
    #[error("duplicate json object member")]
    DuplicateMember,
    #[error("json document is not an object")]
    NotAnObject,
    #[error("document is neither a jwks (`keys` array) nor a single jwk")]
    NotAKeySet,
    #[error("key {index}: {source}")]
    InSet {
        index: usize,
        #[source]
        source: Box<KeyError>,
    },
    #[error("jwk member `{0}` is missing or not a string")]
    MissingMember(&'static str),
    #[error("jwk member `{0}` is not base64url")]
    BadBase64(&'static str),
    #[error("jwk member `{0}` has the wrong type")]
    BadMember(&'static str),
    #[error("unsupported jws algorithm")]
    UnknownAlgorithm,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("unsupported key type: {0}")]
    UnsupportedKey(&'static str),
    #[error("algorithm {alg} does not fit this key")]
    AlgorithmMismatch { alg: crate::Algorithm },
    #[error("no pem block found")]
    NoPem,
    #[error("pem block is not a public key or certificate")]
    UnexpectedPemBlock,
    #[error("malformed pem")]
    Pem,
    #[error("malformed der: {0}")]
    Der(&'static str),
    #[error("hmac secret is shorter than the {0} hash output")]
    WeakSecret(crate::Algorithm),
    #[error("claims must be a json object")]
    ClaimsNotObject,
    #[error("signing failed")]
    SigningFailed,
}
