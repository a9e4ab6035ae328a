//! The gateway: Pingora wiring of the pure crates (`tollgate-config`, `tollgate-router`,
//! `tollgate-jwt`). A library so that benchmarks and tests can reach its parts; the binary
//! in `main.rs` is only the command line.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod conn;
pub mod credentials;
pub mod echo;
pub mod edge;
pub mod explain;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod preauth;
pub mod proxy;
pub mod respond;
pub mod runtime;
pub mod serve;
pub mod token;
