//! `tollgate echo`: a small upstream that answers every request with a JSON description of
//! what it received, so tests, the demo and the load test can see what the gateway forwarded.
//!
//! Test hooks, read from request headers: `x-echo-delay-ms` waits before answering;
//! `x-echo-status` sets the response status.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::time::Duration;

pub struct EchoApp {
    /// Reported as `server` in every answer, so a caller can tell backends apart.
    pub name: String,
}

fn header_u64(session: &ServerSession, name: &str) -> Option<u64> {
    session
        .get_header(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[async_trait]
impl ServeHttp for EchoApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body_len = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body_len += chunk.len();
        }
        if let Some(ms) = header_u64(session, "x-echo-delay-ms") {
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        }
        let status = header_u64(session, "x-echo-status")
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .unwrap_or(StatusCode::OK);
        let req = session.req_header();
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                // Repeated headers are joined as a proxy would fold them.
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_owned(), value.into());
                }
            }
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "server": self.name,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "query": req.uri.query(),
            "headers": headers,
            "body_bytes": body_len,
        }))
        .expect("JSON values serialise");
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .header(http::header::SERVER, "tollgate-echo")
            .body(body)
            .expect("static headers are valid")
    }
}
