//! The one HTTP/1.1 client call the gateway makes of its own (key documents, introspection,
//! external authorization), on Pingora's connector: a request with a body or none, the
//! answer's header and body up to a size. With `pool`, the connection goes back to the
//! connector's pool when the answer was read whole, so a service asked on every request is
//! not asked on a new connection each time; a pooled connection that fails before its
//! answer began (the server closed it while idle) is retried once on a new one.

use crate::util::span;
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long a pooled connection may sit idle before it is closed.
const POOLED_IDLE: Duration = Duration::from_secs(30);

/// One request.
pub struct Call<'a> {
    pub method: &'a str,
    /// `http://` or `https://` with a host; its path and query are the request target.
    pub uri: &'a str,
    /// Set after `Host`, `Accept: application/json` and `User-Agent`, replacing them.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: Option<Vec<u8>>,
    pub ca: Option<&'a Arc<CaType>>,
    /// A larger answer body is an error.
    pub max_body: usize,
    /// Reuse connections (see above).
    pub pool: bool,
    /// A body over `max_body` is [`Body::Cut`] instead of an error.
    pub truncate: bool,
}

/// An answer's body.
#[derive(Debug)]
pub enum Body {
    Whole(Vec<u8>),
    /// Longer than `max_body` (with `truncate`): not kept; the connection is not reused.
    Cut,
}

impl Body {
    /// The bytes, or an error for a cut body (callers without `truncate` never see one).
    pub fn whole(self, max_body: usize) -> Result<Vec<u8>, String> {
        match self {
            Body::Whole(b) => Ok(b),
            Body::Cut => Err(format!("answer larger than {max_body} bytes")),
        }
    }
}

/// Makes `call`: the answer's header and body. The caller bounds it in time. On a traced
/// request, the call is one of its steps (a client span), recorded even when the caller's
/// deadline cuts it short.
pub async fn call(connector: &Connector, call: Call<'_>) -> Result<(ResponseHeader, Body), String> {
    let mut step = span::active().then(|| CallStep::new(&call));
    let result = match once(connector, &call).await {
        Err((true, _)) => once(connector, &call).await.map_err(|(_, e)| e),
        other => other.map_err(|(_, e)| e),
    };
    if let Some(step) = step.as_mut() {
        step.outcome = Some(match &result {
            Ok((resp, _)) => Ok(resp.status.as_u16()),
            Err(_) => Err(()),
        });
    }
    result
}

/// An outbound call of a traced request, recorded as a step when it is dropped: when it
/// ended, or when the caller's deadline dropped it unfinished.
struct CallStep {
    start: SystemTime,
    method: &'static str,
    /// Scheme, host, port and path: never the query.
    url: String,
    host: String,
    outcome: Option<Result<u16, ()>>,
}

impl CallStep {
    fn new(call: &Call<'_>) -> CallStep {
        let url = call.uri.split(['?', '#']).next().unwrap_or("").to_owned();
        let host = url
            .split_once("://")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""))
            .to_owned();
        CallStep {
            start: SystemTime::now(),
            // The span's name is the method (OpenTelemetry's HTTP client spans).
            method: match call.method {
                "GET" => "GET",
                "POST" => "POST",
                _ => "HTTP",
            },
            url,
            host,
            outcome: None,
        }
    }
}

impl Drop for CallStep {
    fn drop(&mut self) {
        let mut attributes = vec![
            ("http.request.method", span::Value::from(self.method)),
            ("url.full", std::mem::take(&mut self.url).into()),
            ("server.address", std::mem::take(&mut self.host).into()),
        ];
        let failed = match self.outcome {
            Some(Ok(status)) => {
                attributes.push(("http.response.status_code", i64::from(status).into()));
                status >= 500
            }
            Some(Err(())) => {
                attributes.push(("error.type", "call_failed".into()));
                true
            }
            None => {
                attributes.push(("error.type", "timeout".into()));
                true
            }
        };
        span::record(span::Step {
            name: self.method,
            client: true,
            start: self.start,
            end: SystemTime::now(),
            attributes,
            failed,
        });
    }
}

/// One attempt; an error says whether it was on a reused connection before any answer.
async fn once(
    connector: &Connector,
    call: &Call<'_>,
) -> Result<(ResponseHeader, Body), (bool, String)> {
    let mut reused = false;
    let result = attempt(connector, call, &mut reused).await;
    result.map_err(|(before_answer, e)| (reused && before_answer, e))
}

async fn attempt(
    connector: &Connector,
    call: &Call<'_>,
    reused_out: &mut bool,
) -> Result<(ResponseHeader, Body), (bool, String)> {
    let no = |e: String| (false, e);
    let parsed: http::Uri = call
        .uri
        .parse()
        .map_err(|e| no(format!("invalid URL: {e}")))?;
    let tls = parsed.scheme_str() == Some("https");
    let host = parsed
        .host()
        .ok_or_else(|| no("URL has no host".into()))?
        .to_owned();
    let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| no(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| no(format!("{host} has no address")))?;
    let mut peer = HttpPeer::new(addr, tls, host.clone());
    peer.options.ca = call.ca.cloned();
    // Without `pool` nothing is released, so the connector has nothing to reuse.
    let (mut session, reused) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| no(format!("connect: {e}")))?;
    *reused_out = reused;
    let before = |e: String| (true, e);
    let path = parsed.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req =
        RequestHeader::build(call.method, path.as_bytes(), None).map_err(|e| no(e.to_string()))?;
    let host_header = match parsed.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let e = |e: Box<pingora_core::Error>| no(e.to_string());
    req.insert_header("host", host_header).map_err(e)?;
    req.insert_header("accept", "application/json").map_err(e)?;
    req.insert_header(
        "user-agent",
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(e)?;
    for (name, value) in call.headers {
        req.insert_header(name.to_string(), *value).map_err(e)?;
    }
    let body = call.body.clone().unwrap_or_default();
    req.insert_header("content-length", body.len()).map_err(e)?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| before(format!("send: {e}")))?;
    if !body.is_empty() {
        session
            .write_request_body(body.into(), false)
            .await
            .map_err(|e| before(format!("send: {e}")))?;
    }
    session
        .finish_request_body()
        .await
        .map_err(|e| before(format!("send: {e}")))?;
    session
        .read_response_header()
        .await
        .map_err(|e| before(format!("read: {e}")))?;
    let resp = session
        .response_header()
        .ok_or_else(|| no("no response header".into()))?
        .clone();
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| no(format!("read: {e}")))?
    {
        if body.len() + chunk.len() > call.max_body {
            if call.truncate {
                return Ok((resp, Body::Cut));
            }
            return Err(no(format!("answer larger than {} bytes", call.max_body)));
        }
        body.extend_from_slice(&chunk);
    }
    if call.pool {
        connector
            .release_http_session(session, &peer, Some(POOLED_IDLE))
            .await;
    }
    Ok((resp, Body::Whole(body)))
}
