//! The admin listener's app: `/metrics`, `/healthz`, `/readyz` and the gateway's public keys
//! (`/.well-known/jwks.json`), on a listener and runtime of their own so that a flood of
//! requests never starves a scrape.

use crate::identity::mint;
use crate::request::runtime::RuntimeSnapshot;
use crate::telemetry::metrics::{METRICS, READY};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves `/metrics`, `/healthz`, `/readyz`, the gateway's public keys
/// (`/.well-known/jwks.json`) and, with `auth.shared_signals`, its push endpoint, on the
/// metrics listener.
pub struct MetricsApp {
    pub snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
}

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
        let signals = self.snapshot.load().signals.clone();
        if let Some(receiver) = signals.filter(|r| r.path == session.req_header().uri.path()) {
            return push(&receiver, session).await;
        }
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

/// A push of security events (RFC 8935): `POST` with the event as the body.
async fn push(
    receiver: &crate::identity::signals::Receiver,
    session: &mut ServerSession,
) -> Response<Vec<u8>> {
    if session.req_header().method != http::Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            br#"{"err":"invalid_request","description":"POST a security event token"}"#.to_vec(),
        );
        r.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return r;
    }
    let header = |name: http::HeaderName| {
        session
            .req_header()
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
    };
    let authorization = header(http::header::AUTHORIZATION);
    let content_type = header(http::header::CONTENT_TYPE);
    // Before the body: a client without the token never holds the listener while it sends.
    if !receiver.authentic(authorization.as_deref()) {
        let reply = crate::identity::signals::unauthenticated();
        return challenge(text(
            StatusCode::UNAUTHORIZED,
            "application/json",
            reply.body,
        ));
    }
    // Read whole, up to a little over the largest event taken (the receiver refuses more).
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= 65 * 1024 => {
                body.extend_from_slice(&chunk)
            }
            Ok(Some(_)) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "application/json",
                    br#"{"err":"invalid_request","description":"the event is larger than 64 KiB"}"#
                        .to_vec(),
                )
            }
            Ok(None) => break,
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "application/json",
                    br#"{"err":"invalid_request","description":"the body could not be read"}"#
                        .to_vec(),
                )
            }
        }
    }
    let reply = receiver
        .receive(authorization.as_deref(), content_type.as_deref(), &body)
        .await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_REQUEST);
    if reply.body.is_empty() {
        // 202: nothing to say.
        return Response::builder()
            .status(status)
            .header(http::header::CONTENT_LENGTH, 0)
            .body(Vec::new())
            .expect("static headers are valid");
    }
    let r = text(status, "application/json", reply.body);
    match reply.status {
        401 => challenge(r),
        _ => r,
    }
}

fn challenge(mut r: Response<Vec<u8>>) -> Response<Vec<u8>> {
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"shared-signals\""),
    );
    r
}
