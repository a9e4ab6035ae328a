//! The gateway: Pingora wiring of the pure crates (`tollgate-config`, `tollgate-router`,
//! `tollgate-canonical`, `tollgate-jwt`, `tollgate-policy`, `tollgate-ratelimit`).
//!
//! The crate is in rooms by concern, each a folder. A room imports only rooms below it, in
//! this order from the top (ARCHITECTURE.md says the same, and the `house` test holds the
//! code to that list and to no import circle):
//!
//! [`cli`] → [`ops`] → [`listener`] → [`request`] → [`authz`] → [`upstream`] → [`identity`] →
//! [`limits`] → [`tls`] → [`telemetry`] → [`util`]
//!
//! A request's path: [`request::proxy`] (the Pingora phases) → [`request::pipeline`] (admit →
//! route → authenticate → authorize → limit → choose the upstream) → the pure crates;
//! refusals become answers in one place, [`request::respond`]. A library so that the binary
//! (`main.rs`), the benchmarks and the integration tests can reach what they need.

// The crate's docs are built with private items (`make doc`): a public module's docs may
// point at the private module that does the work.
#![allow(rustdoc::private_intra_doc_links)]

pub mod authz;
pub mod cli;
pub mod identity;
pub mod limits;
pub mod listener;
pub mod ops;
pub mod request;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod util;

#[doc(hidden)]
pub mod fuzzing;
