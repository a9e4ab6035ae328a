//! `tollgate echo`: a small upstream that answers every request with a JSON description of
//! what it received, so tests, the demo and the load test can see what the gateway forwarded.
//!
//! Test hooks, read from request headers: `x-echo-delay-ms` waits before answering;
//! `x-echo-status` sets the response status. Defaults for every request come from
//! `--delay-ms` and `--status`, and can be changed while it runs, straight at the echo (the
//! load and failover tests slow or fail one backend this way): `GET /__echo/set?delay_ms=N&status=N`.
//! `GET /__echo/count` answers `{"count": N}`, the requests served other than these two.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::listening::Service;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

pub struct EchoApp {
    /// Reported as `server` in every answer, so a caller can tell backends apart.
    pub name: String,
    /// Milliseconds to wait before every answer (a request's `x-echo-delay-ms` overrides).
    pub delay_ms: AtomicU64,
    /// The status of every answer (a request's `x-echo-status` overrides).
    pub status: AtomicU16,
    /// Requests served, control requests excepted.
    pub count: AtomicU64,
}

impl EchoApp {
    pub fn new(name: String, delay_ms: u64, status: u16) -> EchoApp {
        EchoApp {
            name,
            delay_ms: AtomicU64::new(delay_ms),
            status: AtomicU16::new(status),
            count: AtomicU64::new(0),
        }
    }

    /// `/__echo/set` and `/__echo/count`.
    fn control(&self, path: &str, query: Option<&str>) -> Option<Vec<u8>> {
        match path {
            "/__echo/set" => {
                for (k, v) in query
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                {
                    match (k, v.parse::<u64>()) {
                        ("delay_ms", Ok(ms)) => {
                            self.delay_ms.store(ms.min(60_000), Ordering::Relaxed)
                        }
                        ("status", Ok(s)) if StatusCode::from_u16(s as u16).is_ok() => {
                            self.status.store(s as u16, Ordering::Relaxed)
                        }
                        _ => {}
                    }
                }
                Some(
                    serde_json::json!({
                        "delay_ms": self.delay_ms.load(Ordering::Relaxed),
                        "status": self.status.load(Ordering::Relaxed),
                    })
                    .to_string()
                    .into_bytes(),
                )
            }
            "/__echo/count" => Some(
                serde_json::json!({"count": self.count.load(Ordering::Relaxed)})
                    .to_string()
                    .into_bytes(),
            ),
            _ => None,
        }
    }
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
        let uri = &session.req_header().uri;
        if let Some(body) = self.control(uri.path(), uri.query()) {
            return answer(StatusCode::OK, body);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let delay = header_u64(session, "x-echo-delay-ms")
            .unwrap_or_else(|| self.delay_ms.load(Ordering::Relaxed));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
        }
        let status = header_u64(session, "x-echo-status")
            .and_then(|s| StatusCode::from_u16(s as u16).ok())
            .or_else(|| StatusCode::from_u16(self.status.load(Ordering::Relaxed)).ok())
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
        answer(status, body)
    }
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::SERVER, "tollgate-echo")
        .body(body)
        .expect("static headers are valid")
}

/// `tollgate echo`: a test upstream that answers every request with what it received.
pub fn run(listen: &str, name: Option<String>, delay_ms: u64, status: u16) -> ExitCode {
    let _log_writer =
        crate::ops::serve::init_logging("warn", tollgate_config::DEFAULT_LOG_BUFFER_LINES);
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut echo = Service::new(
        "tollgate echo".to_owned(),
        EchoApp::new(name.unwrap_or_else(|| listen.to_owned()), delay_ms, status),
    );
    echo.add_tcp(listen);
    server.add_service(echo);
    server.run_forever()
}
