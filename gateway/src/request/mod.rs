//! One request, in order: the Pingora phases ([`proxy`]), the canonical edge checks
//! ([`edge`]), CORS ([`cors`]), the pipeline that decides ([`pipeline`]), the one mapping from a refusal to an
//! answer ([`respond`]), the routes' header rules ([`rewrite`]), and the runtime snapshot every decision reads ([`runtime`]), and OAuth protected resources ([`resource`]: RFC 9728 metadata, audience, step-up).
//! Imports `upstream`, `identity` and the rooms below; never `listener`, `ops` or `cli`.

pub mod cors;
pub mod edge;
pub mod pipeline;
pub mod proxy;
pub mod resource;
pub mod respond;
pub mod rewrite;
pub mod runtime;
