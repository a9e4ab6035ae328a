//! The Pingora `ProxyHttp` implementation: a request's path through the gateway.
//!
//! `request_filter` matches the route (and answers 400/404/405 itself); `upstream_peer`
//! picks a healthy backend of the route's cluster; `fail_to_connect` retries on another
//! backend; the header filters add forwarding headers and remove the upstream `Server`;
//! `fail_to_proxy` answers 502/503/504 with a JSON body; `logging` counts and logs.

use crate::auth::{self, AuthError};
use crate::cluster::{Cluster, Outcome};
use crate::edge::{EdgeFacts, X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::limits::Stores;
use crate::metrics::{RequestCounters, METRICS};
use crate::preauth::{PreAuthRefusal, PREAUTH};
use crate::respond::Answer;
use crate::runtime::{RouteRuntime, RuntimeSnapshot};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::Backend;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tollgate_config::{AuthMode, TokenSource};
use tollgate_router::Match;

/// `tollgate_requests_total{route="unmatched"}`.
static UNMATCHED: once_cell::sync::Lazy<RequestCounters> =
    once_cell::sync::Lazy::new(|| RequestCounters::new("unmatched".into()));

/// The 413 answer's `error` and message, whether `Content-Length` or a chunked body told.
const TOO_LARGE: (&str, &str) = (
    "payload_too_large",
    "the request body is larger than this route accepts",
);

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

pub struct Gateway {
    pub snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
    /// Rate-limit state; lives as long as the process, across reloads.
    pub stores: Arc<Stores>,
    /// `X-Forwarded-Port`: the proxy listener's port (listeners do not change on reload).
    pub listen_port: Option<HeaderValue>,
}

/// Per-request state, carried across the phases.
pub struct RequestCtx {
    started: Instant,
    request_id: HeaderValue,
    snapshot: Option<Arc<RuntimeSnapshot>>,
    route: Option<Arc<RouteRuntime>>,
    /// Backends already attempted, in order; the last is the current one.
    tried: Vec<Backend>,
    /// Whether the current attempt got a connection (so its failure is not a connect error).
    connected: bool,
    /// Headers that carry the verified identity upstream.
    identity: Option<auth::IdentityHeaders>,
    /// The verified token, for RBAC and rate-limit keys.
    token: Option<Arc<tollgate_jwt::VerifiedToken>>,
    /// The provider that verified `token`: claim rate-limit keys are namespaced by it.
    provider: Option<Arc<str>>,
    /// `RateLimit-Policy` and `RateLimit` for the response, when the route asks for them.
    ratelimit_headers: Option<(Arc<str>, String)>,
    /// The client address and forwarding facts established at the edge.
    edge: EdgeFacts,
    /// Request body bytes received so far, against the route's `max_body`.
    body_bytes: u64,
}

impl RequestCtx {
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.route.as_ref().map(|r| &r.cluster)
    }
}

/// A client's `X-Request-Id` is kept when it is 1 to 128 visible characters from a safe set.
fn well_formed_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// 128 random bits as 32 lower-case hex digits, formatted on the stack.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    let mut id = [0u8; 32];
    for digit in id.iter_mut().rev() {
        *digit = HEX[(bits & 0xf) as usize];
        bits >>= 4;
    }
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// Removes the credentials the route reads tokens from, so a token does not travel on to
/// the upstream: `Authorization`, token headers, and token query parameters. (Cookies are
/// left alone: the Cookie header usually carries more than the token.)
fn strip_credentials(upstream: &mut RequestHeader, sources: &[TokenSource]) -> Result<()> {
    upstream.remove_header(&http::header::AUTHORIZATION);
    for source in sources {
        match source {
            TokenSource::Header(name) => {
                upstream.remove_header(name.as_str());
            }
            TokenSource::Query(param) => {
                let uri = &upstream.uri;
                let Some(query) = uri.query() else { continue };
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        !auth::query_name_is(pair.split('=').next().unwrap_or(""), param)
                    })
                    .collect();
                if kept.len() == query.split('&').count() {
                    continue;
                }
                let new = if kept.is_empty() {
                    uri.path().to_owned()
                } else {
                    format!("{}?{}", uri.path(), kept.join("&"))
                };
                let new = new.parse().map_err(|_| {
                    Error::explain(
                        ErrorType::InternalError,
                        "query without the token is not a valid URI",
                    )
                })?;
                upstream.set_uri(new);
            }
            TokenSource::Bearer | TokenSource::Cookie(_) => {}
        }
    }
    Ok(())
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

impl Gateway {
    /// Authenticates the request for `route`; answers 400/401 itself and returns false when
    /// the request must not go on.
    async fn authenticate(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &RuntimeSnapshot,
        route: &RouteRuntime,
    ) -> Result<bool> {
        let authenticator = &snapshot.auth;
        let outcome = match auth::extract_token(session.req_header(), &route.token_sources) {
            Err(e) => Err((None, e)),
            Ok(None) if route.auth == AuthMode::Optional => Ok(None),
            Ok(None) => Err((
                None,
                AuthError::Unauthorized {
                    reason: tollgate_jwt::Reason::Missing,
                    detail: "a bearer token is required",
                    presented: false,
                },
            )),
            Ok(Some(token)) => match authenticator
                .verify(
                    token,
                    &route.providers,
                    SystemTime::now(),
                    ctx.edge.client_ip,
                )
                .await
            {
                Ok(identity) => Ok(Some(identity)),
                Err(auth::VerifyError::Refused(r)) => Err((None, AuthError::PreAuth(r))),
                Err(auth::VerifyError::Rejected(provider, r)) => Err((
                    provider,
                    AuthError::Unauthorized {
                        reason: r.reason,
                        detail: r.detail,
                        presented: true,
                    },
                )),
            },
        };
        let (provider, error) = match outcome {
            Ok(Some(identity)) => {
                identity.provider.allowed.inc();
                ctx.identity = Some(identity.headers);
                ctx.token = Some(identity.token);
                ctx.provider = Some(identity.provider.name.clone());
                return Ok(true);
            }
            Ok(None) => {
                METRICS
                    .auth_decisions
                    .with_label_values(&["none", "anonymous", "missing"])
                    .inc();
                return Ok(true);
            }
            Err(e) => e,
        };
        let provider_label = provider.as_ref().map(|p| &*p.name).unwrap_or("none");
        let realm = &authenticator.realm;
        let answer = match error {
            AuthError::PreAuth(refusal) => {
                let (status, error, message, retry) = match refusal {
                    PreAuthRefusal::FailedAuthLimit { retry_after_secs } => (
                        429,
                        "too_many_failed_attempts",
                        "too many failed authentications from this address; retry later",
                        retry_after_secs,
                    ),
                    PreAuthRefusal::Busy => (
                        503,
                        "overloaded",
                        "too many tokens are being verified; retry later",
                        1,
                    ),
                };
                let mut a = Answer::new(status, error, message);
                a.reason = Some(refusal.label());
                a.headers
                    .push((HeaderName::from_static("retry-after"), retry.to_string()));
                a
            }
            AuthError::MultipleTokens => {
                METRICS
                    .auth_decisions
                    .with_label_values(&[provider_label, "deny", "malformed"])
                    .inc();
                let mut a =
                    Answer::new(400, "invalid_request", "more than one token in the request");
                a.reason = Some("malformed");
                a.headers.push((
                    http::header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"{realm}\", error=\"invalid_request\""),
                ));
                a
            }
            AuthError::Unauthorized {
                reason,
                detail,
                presented,
            } => {
                if presented {
                    PREAUTH.record_failure(
                        ctx.edge.client_ip,
                        &authenticator.brakes,
                        crate::limits::now_ns(),
                    );
                }
                METRICS
                    .auth_decisions
                    .with_label_values(&[provider_label, "deny", reason.as_str()])
                    .inc();
                let challenge = if presented {
                    format!(
                        "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                        reason.as_str()
                    )
                } else {
                    format!("Bearer realm=\"{realm}\"")
                };
                let mut a = Answer::new(401, "unauthorized", detail);
                a.reason = Some(reason.as_str());
                a.headers.push((http::header::WWW_AUTHENTICATE, challenge));
                a
            }
        };
        answer.send(session, ctx).await?;
        Ok(false)
    }

    /// Applies the route's RBAC policy; answers 403 itself and returns false on a denial.
    async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        snapshot: &RuntimeSnapshot,
        route: &RouteRuntime,
    ) -> Result<bool> {
        let Some(policy) = &route.policy else {
            return Ok(true);
        };
        let facts = tollgate_policy::RequestFacts::new(
            session.req_header().method.as_str(),
            ctx.token.as_ref().map(|t| &t.claims),
        );
        let decision = policy.evaluate(&facts);
        if let Some(counters) = &route.rbac_counters {
            match decision.outcome() {
                "allow" => &counters[0],
                "deny" => &counters[1],
                _ => &counters[2],
            }
            .inc();
        }
        if decision.allowed {
            return Ok(true);
        }
        tracing::info!(
            request_id = ctx.request_id.to_str().unwrap_or(""),
            route = %route.name,
            policy = decision.policy,
            rule = %decision.decided_by,
            outcome = decision.outcome(),
            "rbac denied"
        );
        if decision.effective_allow() {
            return Ok(true);
        }
        let realm = &snapshot.auth.realm;
        let mut challenge = format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\"");
        if !decision.required_scopes.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", decision.required_scopes));
        }
        let mut answer = Answer::new(
            403,
            "forbidden",
            "the policy of this route does not allow this request",
        );
        answer.policy = Some(decision.policy);
        answer
            .headers
            .push((http::header::WWW_AUTHENTICATE, challenge));
        answer.send(session, ctx).await?;
        Ok(false)
    }

    /// Checks every limit of the route; answers 429 itself and returns false when one refuses.
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &RouteRuntime,
    ) -> Result<bool> {
        let ip = ctx.edge.client_ip;
        let mut tightest: Option<(u32, Arc<str>, String)> = None;
        for limit in &route.limits {
            let outcome = limit
                .check(
                    &self.stores,
                    session.req_header(),
                    ip,
                    ctx.provider
                        .as_deref()
                        .zip(ctx.token.as_deref())
                        .map(|(provider, token)| crate::limits::Caller { provider, token }),
                )
                .await;
            if !outcome.verdict.allowed {
                let mut answer = Answer::new(
                    429,
                    "rate_limited",
                    "too many requests; retry after the time in Retry-After",
                );
                answer.limit = Some(&limit.name);
                answer.headers.push((
                    HeaderName::from_static("retry-after"),
                    outcome.verdict.retry_after_secs().max(1).to_string(),
                ));
                answer.headers.push((
                    HeaderName::from_static("ratelimit-policy"),
                    outcome.policy_header.to_string(),
                ));
                answer.headers.push((
                    HeaderName::from_static("ratelimit"),
                    outcome.ratelimit_header(&limit.name),
                ));
                answer.send(session, ctx).await?;
                return Ok(false);
            }
            let remaining = outcome.verdict.remaining;
            if limit.headers && tightest.as_ref().is_none_or(|(r, _, _)| remaining < *r) {
                let value = outcome.ratelimit_header(&limit.name);
                tightest = Some((remaining, outcome.policy_header, value));
            }
        }
        ctx.ratelimit_headers = tightest.map(|(_, policy, value)| (policy, value));
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            snapshot: None,
            route: None,
            tried: Vec::new(),
            connected: false,
            identity: None,
            token: None,
            provider: None,
            ratelimit_headers: None,
            edge: EdgeFacts::default(),
            body_bytes: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = match session.get_header(&X_REQUEST_ID) {
            Some(v) if well_formed_request_id(v) => v.clone(),
            _ => new_request_id(),
        };
        let snapshot = self.snapshot.load_full();
        let peer = peer_ip(session);
        let http = &snapshot.http;
        let prepared = crate::edge::prepare(session.req_header_mut(), peer, http, &snapshot.strip);
        ctx.edge = match prepared {
            Ok(facts) => facts,
            Err(refusal) => {
                METRICS
                    .bad_requests
                    .with_label_values(&[refusal.reason])
                    .inc();
                ctx.snapshot = Some(snapshot);
                let mut answer = Answer::new(refusal.status, "bad_request", refusal.message);
                answer.reason = Some(refusal.reason);
                answer
                    .headers
                    .push((http::header::CONNECTION, "close".to_owned()));
                session.set_keepalive(None);
                answer.send(session, ctx).await?;
                return Ok(true);
            }
        };
        session.set_keepalive(Some(http.keepalive_timeout.as_secs()));
        session.set_read_timeout(Some(http.body_timeout));
        session.set_write_timeout(Some(http.send_timeout));
        // Pipelined requests are served in order, each decided on its own (RFC 9112 §9.3.2).
        session.set_pipelining_enabled(true);
        let req = session.req_header();
        let path = req.uri.path();
        let host = ctx.edge.host.as_deref();
        let found = match snapshot.router.find(host, path, req.method.as_str()) {
            Match::Found(route) => Ok(route.clone()),
            Match::MethodNotAllowed(allowed) => Err(Some(allowed.join(", "))),
            Match::NotFound => Err(None),
        };
        let route = match found {
            Ok(route) => route,
            Err(None) => {
                ctx.snapshot = Some(snapshot);
                Answer::new(404, "not_found", "no route matches this request")
                    .send(session, ctx)
                    .await?;
                return Ok(true);
            }
            Err(Some(allow)) => {
                ctx.snapshot = Some(snapshot);
                let mut answer = Answer::new(
                    405,
                    "method_not_allowed",
                    "the route does not accept this method",
                );
                answer.headers.push((http::header::ALLOW, allow));
                answer.send(session, ctx).await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route.clone());
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.max_body) {
            ctx.snapshot = Some(snapshot);
            METRICS
                .bad_requests
                .with_label_values(&["body_too_large"])
                .inc();
            session.set_keepalive(None);
            let (error, message) = TOO_LARGE;
            let mut answer = Answer::new(413, error, message);
            answer.reason = Some("body_too_large");
            answer.send(session, ctx).await?;
            return Ok(true);
        }
        let proceed = (route.auth == AuthMode::None
            || self.authenticate(session, ctx, &snapshot, &route).await?)
            && self.authorize(session, ctx, &snapshot, &route).await?
            && self.rate_limit(session, ctx, &route).await?;
        ctx.snapshot = Some(snapshot);
        Ok(!proceed)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let cluster = ctx
            .cluster()
            .cloned()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route in context"))?;
        let ip_key;
        let key: &[u8] = match &cluster.hash_on {
            None => b"",
            Some(tollgate_config::HashOn::Header(name))
                if session.get_header(name.as_str()).is_some() =>
            {
                session.get_header_bytes(name.as_str())
            }
            Some(_) => {
                ip_key = ctx
                    .edge
                    .client_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                ip_key.as_bytes()
            }
        };
        match cluster.select(key, &ctx.tried) {
            Some(backend) => {
                let peer = cluster.peer(&backend);
                ctx.tried.push(backend);
                ctx.connected = false;
                Ok(peer)
            }
            None if ctx.tried.is_empty() || !cluster.any_healthy() => Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no healthy backend",
            )),
            // Every healthy backend was tried and failed to connect.
            None => Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "every backend failed",
            )),
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connected = true;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(cluster), Some(backend)) = (ctx.cluster(), ctx.tried.last()) {
            let outcome = if is_timeout(&e) {
                Outcome::Timeout
            } else {
                Outcome::ConnectError
            };
            if let Some(info) = cluster.info(backend) {
                info.count(outcome);
            }
            if ctx.tried.len() <= cluster.retries as usize {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // `upstream` is a copy of the request `edge::prepare` cleaned in request_filter (every
        // spelling of the identity, forwarding and override headers already removed, from the
        // same snapshot), so identity headers here come only from the verified token.
        if let Some(route) = &ctx.route {
            if route.auth != AuthMode::None && !route.keep_authorization {
                strip_credentials(upstream, &route.token_sources)?;
            }
        }
        for (name, value) in ctx.identity.iter().flat_map(|h| h.iter()) {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        upstream.insert_header(X_REQUEST_ID.clone(), ctx.request_id.clone())?;
        // The client's forwarding headers were removed at the edge; these are the gateway's.
        // Values are shared (`HeaderValue` clones are reference counts) where they can be.
        if let Some(ip) = ctx.edge.client_ip {
            let client = HeaderValue::from_str(&ip.to_string())
                .map_err(|_| Error::explain(ErrorType::InternalError, "address as a header"))?;
            let xff = match (&ctx.edge.forwarded_for, peer_ip(session)) {
                (Some(chain), Some(peer)) => HeaderValue::from_str(&format!("{chain}, {peer}"))
                    .map_err(|_| {
                        Error::explain(ErrorType::InternalError, "forwarded-for as a header")
                    })?,
                _ => client.clone(),
            };
            upstream.insert_header(X_FORWARDED_FOR.clone(), xff)?;
            upstream.insert_header(X_REAL_IP.clone(), client)?;
        }
        let proto = match ctx.edge.forwarded_proto.as_deref() {
            Some("https") => HeaderValue::from_static("https"),
            _ => HeaderValue::from_static("http"),
        };
        upstream.insert_header(X_FORWARDED_PROTO.clone(), proto)?;
        if let Some(host) = upstream.headers.get(http::header::HOST).cloned() {
            upstream.insert_header(X_FORWARDED_HOST.clone(), host)?;
        }
        if let Some(port) = &self.listen_port {
            upstream.insert_header(X_FORWARDED_PORT.clone(), port.clone())?;
        }
        if let Some(route) = ctx.route.as_ref().filter(|r| r.strip_prefix.is_some()) {
            let prefix = route.strip_prefix.as_deref().unwrap_or_default();
            let uri = &upstream.uri;
            let path = uri.path();
            let rest = match path.get(..prefix.len()) {
                Some(head) if head == prefix => &path[prefix.len()..],
                Some(head) if route.case_insensitive && head.eq_ignore_ascii_case(prefix) => {
                    &path[prefix.len()..]
                }
                _ => path,
            };
            let rest = if rest.starts_with('/') { rest } else { "/" };
            let new = match uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            upstream.set_uri(new.parse().map_err(|_| {
                Error::explain(ErrorType::InternalError, "stripped path is not a valid URI")
            })?);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Content-Length was checked in request_filter; this catches chunked bodies.
        if let (Some(chunk), Some(route)) = (body.as_ref(), &ctx.route) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > route.max_body {
                METRICS
                    .bad_requests
                    .with_label_values(&["body_too_large"])
                    .inc();
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body larger than the route's max_body",
                ));
            }
        }
        Ok(())
    }

    /// Pingora's own error lines name the request with this: method, path and host only,
    /// never the query string (it may carry a token).
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {}, host: {}, request_id: {}",
            req.method,
            req.uri.path(),
            ctx.edge.host.as_deref().unwrap_or("-"),
            ctx.request_id.to_str().unwrap_or("")
        )
    }

    /// A client that goes away mid-request is not an error of the gateway's.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        e.esource() == &ErrorSource::Downstream
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_response.remove_header(&http::header::SERVER);
        upstream_response.insert_header(X_REQUEST_ID.clone(), ctx.request_id.clone())?;
        if let Some((policy, value)) = ctx.ratelimit_headers.take() {
            upstream_response.insert_header("ratelimit-policy", &*policy)?;
            upstream_response.insert_header("ratelimit", value)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, error, message) = match e.etype() {
            ErrorType::HTTPStatus(503) => (
                503,
                "no_healthy_backend",
                "no healthy backend for this route",
            ),
            ErrorType::HTTPStatus(413) => (413, TOO_LARGE.0, TOO_LARGE.1),
            ErrorType::HTTPStatus(code) => {
                (*code, "upstream_error", "the upstream could not be reached")
            }
            _ if e.esource() == &ErrorSource::Upstream && is_timeout(e) => (
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            _ if e.esource() == &ErrorSource::Upstream => {
                (502, "upstream_error", "the upstream failed")
            }
            _ if e.esource() == &ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadTimedout => (
                    408,
                    "request_timeout",
                    "the request body was not received in time",
                ),
                // The client is gone: nothing to answer.
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    (0, "", "")
                }
                _ => (400, "bad_request", "the request could not be read"),
            },
            _ => (500, "internal_error", "internal error"),
        };
        if code > 0 && session.response_written().is_none() {
            if let Err(err) = Answer::new(code, error, message).send(session, ctx).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.route.as_ref().map(|r| &*r.name).unwrap_or("unmatched");
        let method = &session.req_header().method;
        match &ctx.route {
            Some(r) => r.requests.inc(method, status),
            None => UNMATCHED.inc(method, status),
        }
        let elapsed = ctx.started.elapsed();
        if let Some(r) = &ctx.route {
            r.duration.observe(elapsed.as_secs_f64());
        }
        if let (Some(cluster), Some(backend), true) =
            (ctx.cluster(), ctx.tried.last(), ctx.connected)
        {
            let outcome = match e {
                Some(e) if e.esource() == &ErrorSource::Upstream && is_timeout(e) => {
                    Outcome::Timeout
                }
                Some(e) if e.esource() == &ErrorSource::Upstream => Outcome::Error,
                _ => Outcome::Response,
            };
            if let Some(info) = cluster.info(backend) {
                info.count(outcome);
            }
        }
        let access_log = ctx.snapshot.as_ref().is_none_or(|s| s.access_log);
        if access_log {
            let req = session.req_header();
            tracing::info!(
                target: "access",
                request_id = ctx.request_id.to_str().unwrap_or(""),
                client = %ctx.edge.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                method = req.method.as_str(),
                path = req.uri.path(),
                route,
                status,
                backend = ctx
                    .cluster()
                    .zip(ctx.tried.last())
                    .and_then(|(c, b)| c.info(b))
                    .map(|i| &*i.addr)
                    .unwrap_or(""),
                attempts = ctx.tried.len(),
                duration_ms = elapsed.as_secs_f64() * 1e3,
                error = e.map(|e| e.etype().as_str()).unwrap_or(""),
            );
        }
    }
}
