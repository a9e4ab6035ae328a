//! The gateway: Pingora wiring of the pure crates (`tollgate-config`, `tollgate-router`,
//! `tollgate-canonical`, `tollgate-jwt`, `tollgate-policy`, `tollgate-ratelimit`).
//!
//! A request's path: [`proxy`] (the Pingora phases) → `pipeline` (admit → route →
//! authenticate → authorize → limit) → the pure crates; refusals become answers in one
//! place, `respond`. A library so that the binary (`main.rs`), the benchmarks and the
//! integration tests can reach what they need; everything else is private to the crate.

// The crate's docs are built with private items (`make doc`): a public module's docs may
// point at the private module that does the work.
#![allow(rustdoc::private_intra_doc_links)]

// What main.rs, benches and tests use.
pub mod auth;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod mint;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod serve;
pub mod token;

mod balance;
mod clock;
mod cluster;
mod conn;
mod credentials;
mod dpop;
mod echo;
mod edge;
mod introspect;
mod jwks;
mod keys;
mod metrics;
mod pipeline;
mod preauth;
mod respond;
mod revocation;
mod split;
mod tls;
mod token_cache;
