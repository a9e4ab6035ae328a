//! The gateway's integration tests, in one binary (one link instead of one per file): each
//! module starts the real `tollgate` binary on 127.0.0.1 with real upstreams, JWKS servers
//! and Redis, and checks what the client and the upstream saw.

#![allow(clippy::disallowed_methods, reason = "tests, off the workers")]

mod admin;
mod apikey;
mod auth;
mod balance;
mod browser;
mod cli;
mod common;
mod config;
mod deploy;
mod docs;
mod dpop;
mod edge;
mod explain;
mod ext_authz;
mod fleet;
mod grpc;
mod house;
mod introspect;
mod lifecycle;
mod mcp;
mod mint;
mod oidc;
mod policy;
mod proxy;
mod signals;
mod step_up;
mod tls;
mod tracing;
mod upstream_tls;
