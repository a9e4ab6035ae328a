//! Where a request goes: clusters of backends ([`cluster`]) with their selection, health
//! checks ([`health`]), DNS discovery ([`dns`]), peer TLS ([`peer_tls`]) and its
//! members ([`backends`]); the load and
//! failure state that outlives a reload ([`balance`]); splits and the mirror's shadow copy
//! ([`split`]). Imports `identity` (a shadow's minted token, token sources to strip) and the
//! rooms below.

pub mod backends;
pub mod balance;
pub mod cluster;
pub mod dns;
pub mod health;
pub mod peer_tls;
pub mod split;
