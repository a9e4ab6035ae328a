//! Who the caller is: finding the token ([`credentials`]), the providers and their key sets
//! ([`keys`], [`jwks`]), verification and its cache ([`auth`], [`token_cache`]), the brakes
//! before any work ([`preauth`]), the deny list ([`revocation`]) and the revocations pushed by Shared Signals transmitters ([`signals`]), DPoP ([`dpop`]),
//! introspection ([`introspect`]), API keys ([`apikeys`]) and the tokens the gateway mints for upstreams ([`mint`]).
//! Imports `limits` (Redis-backed stores, claims) and the rooms below.

pub mod apikeys;
pub mod auth;
pub mod binding;
pub mod credentials;
pub mod dpop;
pub mod introspect;
pub mod jwks;
pub mod keys;
pub mod mint;
pub mod preauth;
pub mod revocation;
pub mod signals;
pub mod token_cache;
