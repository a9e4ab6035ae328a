//! Authorization beyond the route's own RBAC: external authorization services
//! ([`ext`], Envoy ext_authz's HTTP protocol), asked after authentication and RBAC, before
//! the upstream. Imports `identity` (the network-wait brakes) and the rooms below.

pub mod ext;
