//! The admin listener's app: `/metrics`, `/healthz`, `/readyz` and the gateway's public keys
//! (`/.well-known/jwks.json`), on a listener and runtime of their own so that a flood of
//! requests never starves a scrape.

use crate::identity::mint;
use crate::telemetry::metrics::{METRICS, READY};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::Ordering;

/// Serves `/metrics`, `/healthz`, `/readyz` and the gateway's public keys
/// (`/.well-known/jwks.json`) on the metrics listener.
pub struct MetricsApp;

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static headers are valid")
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                METRICS.render(),
            ),
            "/healthz" => text(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/.well-known/jwks.json" => match mint::published() {
                Some(jwks) => text(StatusCode::OK, "application/jwk-set+json", jwks.to_vec()),
                None => text(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    b"no auth.signing_keys\n".to_vec(),
                ),
            },
            "/readyz" if READY.load(Ordering::Acquire) => {
                text(StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            "/readyz" => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready\n".to_vec(),
            ),
            _ => text(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}
