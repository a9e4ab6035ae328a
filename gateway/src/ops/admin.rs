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
        let snapshot = self.snapshot.load_full();
        if let Some(receiver) = snapshot
            .signals
            .as_ref()
            .filter(|r| r.path == session.req_header().uri.path())
        {
            return push(receiver, session).await;
        }
        if session.req_header().uri.path().starts_with("/admin/") {
            return admin(&snapshot, session);
        }
        drop(snapshot);
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
    // Before the body: a client without the token never holds the listener while it sends.
    if !receiver.authentic(session.req_header()) {
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
    let reply = receiver.receive(session.req_header(), &body).await;
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

/// The read-only admin view (`ops::view`): loopback clients, or the configured token.
fn admin(snapshot: &RuntimeSnapshot, session: &ServerSession) -> Response<Vec<u8>> {
    let json = |status: StatusCode, body: serde_json::Value| {
        let mut bytes = serde_json::to_vec_pretty(&body).expect("JSON values print");
        bytes.push(b'\n');
        text(status, "application/json", bytes)
    };
    let error = |status: StatusCode, message: &str| {
        json(
            status,
            serde_json::json!({"error": status.as_u16(), "message": message}),
        )
    };
    let source = snapshot.source.as_deref();
    if source.is_some_and(|s| !s.config.metrics.admin.enabled) {
        return error(
            StatusCode::NOT_FOUND,
            "the admin view is off (metrics.admin.enabled)",
        );
    }
    let req = session.req_header();
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let bearer = source.and_then(|s| s.admin_bearer.as_deref());
    match crate::ops::view::admitted(bearer, peer, req) {
        Ok(()) => {}
        Err(401) => {
            return challenge(error(
                StatusCode::UNAUTHORIZED,
                "the admin view needs its bearer token",
            ))
        }
        Err(_) => {
            return error(
                StatusCode::FORBIDDEN,
                "the admin view answers loopback clients only (or set metrics.admin.bearer_file)",
            )
        }
    }
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin view is read-only",
        );
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match crate::ops::view::document(snapshot, req.uri.path()) {
        Some(doc) => json(StatusCode::OK, doc),
        None => error(StatusCode::NOT_FOUND, "no such admin document"),
    }
}
