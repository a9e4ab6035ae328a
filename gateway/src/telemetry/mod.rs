//! The metrics registry every room counts into, and OpenTelemetry tracing's ids, sampling
//! and export (`trace`). On the ground floor with `util`: it imports only `util`; what a room's labels are is said by that room (see
//! `listener::handshake::FAILURE_REASONS`).

pub mod metrics;
pub mod trace;
