//! The Pingora `ProxyHttp` implementation. Each phase is a few lines; what they call:
//!
//! - `request_filter`: [`crate::request::pipeline`] decides (admit → route → authenticate →
//!   authorize → limit); a refusal is answered through the one mapping in
//!   [`crate::request::respond`];
//! - `upstream_peer` / `fail_to_connect`: the route's [`Cluster`] picks a healthy backend
//!   and retries connect failures on another;
//! - `upstream_request_filter`: credentials out ([`crate::identity::credentials`]), identity and
//!   forwarding headers in ([`crate::request::edge::forward`]), the route's prefix stripped;
//! - `response_filter`: request id and `RateLimit` headers on the upstream's answer;
//! - `fail_to_proxy`: the refusal a later phase decided (circuit breaker, streamed body,
//!   upstream token), or a Pingora error, as a [`Refusal`]; `logging`: counters, the
//!   access log, and a sampled request's spans ([`crate::telemetry::trace`]).

use crate::limits::Stores;
use crate::request::edge::ForwardFrom;
use crate::request::pipeline::{Mode, Passage, Pipeline};
use crate::request::respond::{Refusal, X_REQUEST_ID};
use crate::request::rewrite;
use crate::request::runtime::{RouteRuntime, RuntimeSnapshot};
use crate::telemetry::metrics::{RequestCounters, METRICS};
use crate::telemetry::trace::{Finish, Trace};
use crate::upstream::backends::Outcome;
use crate::upstream::cluster::Cluster;
use crate::util::span::Value;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use futures::future::{Either, FutureExt};
use http::header::{HeaderName, HeaderValue};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_load_balancing::Backend;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_config::{AuthMode, SubjectInLog};

/// W3C Trace Context headers.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `tollgate_requests_total{route="unmatched"}`.
static UNMATCHED: once_cell::sync::Lazy<RequestCounters> =
    once_cell::sync::Lazy::new(|| RequestCounters::new("unmatched".into()));

pub struct Gateway {
    pub snapshot: Arc<ArcSwap<RuntimeSnapshot>>,
    /// Rate-limit state; lives as long as the process, across reloads.
    pub stores: Arc<Stores>,
    /// `X-Forwarded-Port`: the proxy listener's port (listeners do not change on reload).
    pub listen_port: Option<HeaderValue>,
    /// `X-Forwarded-Port` of requests on the HTTPS listener.
    pub https_port: Option<HeaderValue>,
}

/// What the request knows of its connection's TLS (nothing on the plain listener).
fn transport_of(session: &Session) -> crate::tls::facts::Transport {
    let tls = session.digest().and_then(|d| d.ssl_digest.clone());
    let alpn = tls
        .as_ref()
        .map(|_| if session.is_http2() { "h2" } else { "http/1.1" });
    crate::tls::facts::Transport { tls, alpn }
}

/// Per-request state, carried across the phases.
pub struct RequestCtx {
    started: Instant,
    request_id: HeaderValue,
    /// The snapshot the request was decided on; kept to its end across reloads.
    snapshot: Option<Arc<RuntimeSnapshot>>,
    /// What the pipeline established: edge facts, route, caller, `RateLimit` headers.
    passage: Passage,
    /// Backends already attempted, in order; the last is the current one.
    tried: Vec<Backend>,
    /// The route's mirror copy was sent (or sampled out): once per request, on the first
    /// attempt that got a connection (an attempt that failed to connect never gets here).
    mirror_decided: bool,
    /// Whether the current attempt got a connection (so its failure is not a connect error).
    connected: bool,
    /// When the current attempt's backend was chosen (connect and response times).
    attempt_started: Option<Instant>,
    /// From choosing the backend to its response header, for the access log.
    upstream_ms: Option<f64>,
    /// Counts the request in `tollgate_requests_in_flight` while it lives.
    _in_flight: InFlight,
    /// Request body bytes received so far, against the route's `max_body`.
    body_bytes: u64,
    /// The request's place in its cluster's circuit breaker, and the retries it was granted.
    slot: Option<crate::upstream::balance::RequestSlot>,
    /// The current attempt, counted on its backend and in the cluster's load.
    attempt: Option<crate::upstream::balance::Attempt>,
    /// A refusal the pipeline decided in a later phase, carried to `fail_to_proxy`.
    decided: Option<Refusal>,
    /// The request's place in a trace, with `logging.tracing`.
    trace: Option<Box<Trace>>,
}

/// One request in `tollgate_requests_in_flight`, from its context's creation to its drop.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        METRICS.requests_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.requests_in_flight.dec();
    }
}

impl RequestCtx {
    /// Keeps a refusal the pipeline decided in a later phase, for `fail_to_proxy` to
    /// answer, and returns the error that takes the request there.
    fn decided(&mut self, refusal: Refusal) -> Box<Error> {
        // The error's text (Pingora's error line, the access log) says what was decided.
        let answer = refusal.answer("");
        let why = format!("{} {}: {}", answer.status, answer.reason, answer.message);
        drop(answer);
        self.decided = Some(refusal);
        Error::explain(DECIDED, why)
    }

    fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.passage.target.as_ref().map(|(c, _)| c)
    }

    /// Whether another attempt may follow: tries left, and (when `budgeted`) a retry from
    /// the budget.
    fn may_retry(&mut self, reason: &'static str, budgeted: bool) -> bool {
        let Some(cluster) = self.passage.target.as_ref().map(|(c, _)| c.clone()) else {
            return false;
        };
        if self.tried.len() > cluster.retries as usize {
            return false;
        }
        let granted = !budgeted
            || self
                .slot
                .as_mut()
                .is_some_and(|s| s.try_retry(&cluster.retry_budget));
        METRICS
            .upstream_retries
            .with_label_values(&[
                &*cluster.name,
                reason,
                if granted {
                    "retried"
                } else {
                    "budget_exhausted"
                },
            ])
            .inc();
        granted
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
    let mut id = [0u8; 32];
    crate::util::digest::hex_into(&fastrand::u128(..).to_be_bytes(), &mut id);
    HeaderValue::from_bytes(&id).expect("hex is a valid header value")
}

/// The peer's address; an IPv4-mapped one (a dual-stack listener's IPv4 client) is its IPv4
/// address, as `trusted_proxies`, `ip_rules` and rate-limit keys compare it.
fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

fn internal(what: &'static str) -> impl FnOnce(http::Error) -> Box<Error> {
    move |_| Error::explain(ErrorType::InternalError, what)
}

/// Whether the error's retry was decided, and decided yes: by `upstream_response_filter` for
/// a status in `retry_on`. Pingora marks a failure on a pooled connection "retry if it was
/// reused", undecided; asking such an error `retry()` panics, so this never does.
fn decided_retry(e: &Error) -> bool {
    matches!(e.retry, pingora_core::RetryType::Decided(true))
}

/// The error a phase returns for a refusal the pipeline decided ([`RequestCtx::decided`]
/// holds it): answered as that refusal, whatever phase it came from.
const DECIDED: ErrorType = ErrorType::Custom("refused by the gateway");

/// What to answer for a proxying error Pingora or the upstream raised, if anything
/// (`None`: the client is gone).
fn refusal_for(e: &Error) -> Option<Refusal> {
    Some(match (e.esource(), e.etype()) {
        // A status the last attempt answered with, after `retry_on` found no other backend.
        (_, ErrorType::HTTPStatus(503)) => Refusal::NoHealthyBackend,
        (_, ErrorType::HTTPStatus(413)) => Refusal::BodyTooLarge,
        (_, ErrorType::HTTPStatus(_)) => Refusal::UpstreamFailed,
        (ErrorSource::Upstream, _) if is_timeout(e) => Refusal::UpstreamTimeout,
        (ErrorSource::Upstream, _) => Refusal::UpstreamFailed,
        (ErrorSource::Downstream, ErrorType::ReadTimedout) => Refusal::RequestTimeout {
            reason: "body_timeout",
        },
        (
            ErrorSource::Downstream,
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
        ) => return None,
        (ErrorSource::Downstream, _) => Refusal::Unreadable,
        _ => Refusal::Internal,
    })
}

/// What stands in for the request header while the request itself is being decided on.
fn placeholder_request() -> RequestHeader {
    RequestHeader::build_no_case(http::Method::GET, b"/", Some(0))
        .expect("a fixed, valid request line")
}

/// Resolves once the client has gone: an HTTP/2 stream reset or closed, or an HTTP/1.x
/// connection closed (a half-close included, as nginx's 499) after a request without a
/// body (`bodyless`, read from the request's own header). A request whose body is still
/// coming is not watched, since the watch would read its body. Never resolves otherwise;
/// bytes of a pipelined next request are kept for it by Pingora.
async fn client_gone(session: &mut pingora_core::protocols::http::ServerSession, bodyless: bool) {
    if let Some(closed) = session.watch_h2_stream_close() {
        let _ = closed.await;
        return;
    }
    if session.as_http1().is_some() && bodyless && session.read_body_or_idle(true).await.is_err() {
        return;
    }
    std::future::pending::<()>().await
}

impl Gateway {
    /// Answers `refusal` on the session, in the realm of the request's snapshot.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        refusal: &Refusal,
    ) -> Result<()> {
        if refusal.closes_connection() {
            session.set_keepalive(None);
        }
        let realm = ctx.snapshot.as_ref().map_or("", |s| s.auth.realm.as_str());
        let mut answer = refusal.answer(realm);
        if let Some(resource) = ctx.passage.route.as_ref().and_then(|r| r.resource.as_ref()) {
            answer.point_to_metadata(&resource.metadata_url);
        }
        // The CORS grant, so that a page can read the refusal (a preflight carries its own).
        answer.headers.extend(ctx.passage.cors.iter().cloned());
        answer.send(session, &ctx.request_id).await
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
            passage: Passage::default(),
            tried: Vec::new(),
            mirror_decided: false,
            connected: false,
            attempt_started: None,
            upstream_ms: None,
            _in_flight: InFlight::new(),
            body_bytes: 0,
            slot: None,
            attempt: None,
            decided: None,
            trace: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = match session.get_header(&X_REQUEST_ID) {
            Some(v) if well_formed_request_id(v) => v.clone(),
            _ => new_request_id(),
        };
        let snapshot = self.snapshot.load_full();
        let http = &snapshot.http;
        // Once shutting down (from SIGTERM on, or a graceful upgrade), every answer ends its
        // connection: clients move to another instance, or to the new process.
        let draining = session.is_process_shutting_down()
            || crate::telemetry::metrics::DRAINING.load(std::sync::atomic::Ordering::Acquire);
        session.set_keepalive((!draining).then_some(http.keepalive_timeout.as_secs()));
        session.set_read_timeout(Some(http.body_timeout));
        session.set_write_timeout(Some(http.send_timeout));
        // Pipelined requests are served in order, each decided on its own (RFC 9112 §9.3.2).
        session.set_pipelining_enabled(true);
        let peer = peer_ip(session);
        if let Some(settings) = crate::telemetry::trace::settings() {
            let trusted = peer.is_some_and(|p| http.trusted_proxies.iter().any(|n| n.contains(&p)));
            ctx.trace = Some(Box::new(Trace::begin(
                &settings,
                session.get_header(TRACEPARENT).map(HeaderValue::as_bytes),
                session.get_header(TRACESTATE).map(HeaderValue::as_bytes),
                trusted,
            )));
        }
        ctx.passage.transport = transport_of(session);
        let pipeline = Pipeline {
            snapshot: &snapshot,
            stores: &self.stores,
            mode: Mode::Enforce,
            request_id: &ctx.request_id,
        };
        // The request is decided on while the client is watched: one that leaves while a
        // decision waits on the network (introspection, a key refetch) stops holding its
        // places and sockets at once, and starts no call after it left (the pipeline gives
        // the watch a turn before each network wait). The header is moved out for the
        // decision, since the watch needs the session; it goes back either way.
        // Whether the request has a body is read from its own header, before the header is
        // moved out (Pingora sets up its body reader from the header on first use).
        let bodyless = session.is_body_empty();
        let mut req = std::mem::replace(session.req_header_mut(), placeholder_request());
        // A sampled request keeps the steps it records while it is decided.
        let sampled = ctx.trace.as_ref().is_some_and(|t| t.sampled);
        let decided = {
            let decide = pipeline.decide(&mut req, peer, &mut ctx.passage);
            let decide = if sampled {
                Either::Left(crate::util::span::recording(decide))
            } else {
                Either::Right(decide.map(|d| (d, Vec::new())))
            };
            let gone = client_gone(&mut session.downstream_session, bodyless);
            tokio::select! {
                biased;
                decided = decide => Some(decided),
                () = gone => None,
            }
        };
        let decided = decided.map(|(decided, steps)| {
            if let Some(trace) = ctx.trace.as_mut() {
                trace.add_steps(steps);
            }
            decided
        });
        *session.req_header_mut() = req;
        ctx.snapshot = Some(snapshot);
        match decided {
            Some(Ok(())) => Ok(false),
            Some(Err(refusal)) => {
                self.refuse(session, ctx, &refusal).await?;
                Ok(true)
            }
            None => {
                METRICS.clients_gone.inc();
                // Leaving mid-check costs the client like a failed authentication: a call it
                // started may still be running at the identity provider, and without this a
                // client could start calls and leave, again and again, past its budget.
                let auth = &ctx.snapshot.as_ref().expect("set above").auth;
                if ctx.passage.auth.is_none()
                    && ctx
                        .passage
                        .route
                        .as_ref()
                        .is_some_and(|r| r.auth != AuthMode::None)
                {
                    crate::identity::preauth::PREAUTH.record_failure(
                        ctx.passage.edge.client_ip,
                        &auth.brakes,
                        crate::util::clock::now_ns(),
                    );
                }
                Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "the client closed the connection while the request was being decided",
                )
                .into_down())
            }
        }
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
        if ctx.slot.is_none() {
            match ctx.passage.admit_upstream(&cluster) {
                Ok(slot) => ctx.slot = Some(slot),
                Err(refusal) => return Err(ctx.decided(refusal)),
            }
        }
        // The previous attempt (if any) is over.
        ctx.attempt = None;
        let claims = ctx
            .passage
            .caller
            .as_ref()
            .filter(|c| c.verified())
            .map(|c| c.claims());
        let backend = cluster.select_for(
            session.req_header(),
            ctx.passage.edge.client_ip,
            claims,
            &ctx.tried,
        );
        match backend {
            Some(backend) => {
                let peer = cluster.peer(&backend);
                if let Some(trace) = ctx.trace.as_mut() {
                    let addr = match trace.sampled {
                        true => cluster.info(&backend).map(|i| i.addr.to_string()),
                        false => None,
                    };
                    trace.attempt_started(&cluster.name, addr.as_deref().unwrap_or(""));
                }
                ctx.attempt = cluster.start_attempt(&backend);
                ctx.tried.push(backend);
                ctx.connected = false;
                ctx.attempt_started = Some(Instant::now());
                Ok(peer)
            }
            None => {
                let refusal = Passage::no_backend(ctx.tried.len(), &cluster);
                Err(ctx.decided(refusal))
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.connected = true;
        if let Some(attempt) = ctx.attempt.as_mut() {
            attempt.connected();
        }
        if let (false, Some(started), Some(cluster)) = (reused, ctx.attempt_started, ctx.cluster())
        {
            cluster
                .connect_time
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(attempt) = ctx.attempt.as_mut() {
            attempt.failed_to_connect();
        }
        if let Some(trace) = ctx.trace.as_mut() {
            trace.attempt_ended(Some(if is_timeout(&e) {
                "connect_timeout"
            } else {
                "connect_error"
            }));
        }
        if let (Some(cluster), Some(backend)) = (ctx.cluster(), ctx.tried.last()) {
            let outcome = if is_timeout(&e) {
                Outcome::Timeout
            } else {
                Outcome::ConnectError
            };
            if let Some(info) = cluster.info(backend) {
                info.count(outcome);
            }
            cluster.record(backend, None);
        }
        // The budget keeps retries from multiplying the load on struggling backends; a
        // refused connection put none on any (the request never left), so its retry is
        // bounded by `retries` alone. A connect timeout may be an overloaded backend: budgeted.
        let refused = matches!(e.etype(), ErrorType::ConnectRefused);
        if ctx.may_retry("connect", !refused) {
            e.set_retry(true);
        }
        e
    }

    /// An error after the connection was made (a reset, a timeout, a bad answer): outlier
    /// detection hears of it, and with `retry_on: [reset]` an idempotent request whose
    /// answer has not started is retried on another backend within the budget. Otherwise
    /// Pingora's rule: a failure on a reused connection may be retried (the backend may
    /// have closed it as it was taken from the pool).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let (Some(trace), ErrorSource::Upstream) = (ctx.trace.as_mut(), e.esource()) {
            trace.attempt_ended(Some(if is_timeout(&e) { "timeout" } else { "error" }));
        }
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        let upstream_failed = e.esource() == &ErrorSource::Upstream;
        let status_retry = decided_retry(&e);
        if let (true, Some(cluster), Some(backend)) =
            (upstream_failed, ctx.cluster(), ctx.tried.last())
        {
            // A retry on a status was already recorded as that status.
            if !status_retry {
                cluster.record(backend, None);
            }
        }
        if !replayable {
            e.set_retry(false);
            return e;
        }
        if status_retry {
            return e;
        }
        let reset = matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
        let on_reset = ctx.passage.route.as_ref().is_some_and(|r| r.retry_on.reset);
        if upstream_failed && reset && on_reset && !client_reused {
            let retry = ctx.may_retry("reset", true);
            e.set_retry(retry);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // `upstream` is a copy of the request the pipeline decided on (every spelling of the
        // identity, forwarding and override headers already removed, from the same
        // snapshot), so identity headers here come only from the verified token.
        let passage = &ctx.passage;
        if let Some(route) = &passage.route {
            if route.auth != AuthMode::None && !route.keep_authorization {
                crate::identity::credentials::strip(upstream, &route.token_sources)
                    .map_err(internal("query without the token is not a valid URI"))?;
            }
        }
        for (name, value) in passage.caller.iter().flat_map(|c| c.headers.iter()) {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        for (name, value) in &passage.authz_headers {
            upstream.append_header(name.clone(), value.clone())?;
        }
        match passage.upstream_token() {
            Ok(Some((name, token))) => {
                upstream.insert_header(name, token)?;
            }
            Ok(None) => {}
            Err(refusal) => return Err(ctx.decided(refusal)),
        }
        if let Some(tls) = ctx.snapshot.as_ref().and_then(|s| s.tls.as_ref()) {
            crate::tls::facts::forward_peer_certificate(
                &tls.client_cert_headers,
                &passage.transport,
                upstream,
            )?;
        }
        upstream.insert_header(X_REQUEST_ID.clone(), ctx.request_id.clone())?;
        // A client's own trace headers pass only when its trace was continued. The mirror's
        // copy (below) names the request's span as its parent; the upstream, its attempt's.
        if let Some(trace) = &ctx.trace {
            upstream.insert_header(TRACEPARENT, trace.traceparent(trace.span_id))?;
            match trace.tracestate() {
                Some(state) => upstream.insert_header(TRACESTATE, state)?,
                None if trace.client_sent_tracestate() => drop(upstream.remove_header(&TRACESTATE)),
                None => {}
            }
        }
        let on_tls = passage.transport.tls.is_some();
        crate::request::edge::forward(
            upstream,
            &ForwardFrom {
                facts: &passage.edge,
                peer: peer_ip(session),
                listen_port: if on_tls {
                    self.https_port.as_ref()
                } else {
                    self.listen_port.as_ref()
                },
                tls: on_tls,
            },
        )?;
        if let Some(route) = &passage.route {
            route
                .strip_prefix_from(upstream)
                .map_err(internal("stripped path is not a valid URI"))?;
            // Once per request, not per attempt.
            if let (Some(mirror), false) = (&route.mirror, ctx.mirror_decided) {
                ctx.mirror_decided = true;
                if mirror.sampled() {
                    let caller = passage
                        .caller
                        .as_ref()
                        .filter(|c| c.verified())
                        .map(|c| c.claims());
                    mirror.send(upstream, !session.is_body_empty(), caller);
                }
            }
            if let Some(trace) = &ctx.trace {
                if let Some(attempt) = trace.attempt_span() {
                    upstream.insert_header(TRACEPARENT, trace.traceparent(attempt))?;
                }
            }
            // After the mirror's copy: a rewritten header never reaches a shadow.
            rewrite::apply(
                &route.headers.request,
                &rewrite_vars(passage, &ctx.request_id, route),
                rewrite::Message::Request(upstream),
            )?;
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
        // A declared Content-Length was checked by the pipeline; this counts chunked bodies.
        if let Some(chunk) = body.as_ref() {
            if let Err(refusal) = ctx.passage.count_body(&mut ctx.body_bytes, chunk.len()) {
                return Err(ctx.decided(refusal));
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
            ctx.passage.edge.host.as_deref().unwrap_or("-"),
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

    /// Each attempt's answer: outlier detection hears of it, and a status in the route's
    /// `retry_on` sends an idempotent request to another backend (within the budget and
    /// the upstream's `retries`) before anything reached the client.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if let (Some(cluster), Some(backend)) = (ctx.cluster(), ctx.tried.last()) {
            // A 5xx is a failure; a success's time runs from choosing the backend.
            let took = ctx.attempt_started.map_or(Duration::ZERO, |s| s.elapsed());
            cluster.record(backend, (status < 500).then_some(took));
        }
        let listed = ctx
            .passage
            .route
            .as_ref()
            .is_some_and(|r| r.retry_on.statuses.contains(&status));
        if listed
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.may_retry("status", true)
        {
            if let (Some(cluster), Some(backend)) = (ctx.cluster(), ctx.tried.last()) {
                if let Some(info) = cluster.info(backend) {
                    info.count(Outcome::Response);
                }
            }
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "retried on another backend (retry_on)",
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(started), Some(cluster)) = (ctx.attempt_started.take(), ctx.cluster()) {
            let took = started.elapsed().as_secs_f64();
            cluster.response_time.observe(took);
            ctx.upstream_ms = Some(took * 1e3);
        }
        upstream_response.remove_header(&http::header::SERVER);
        if !ctx.passage.cors.is_empty() {
            // On a route with `cors` the gateway's grant is the only one.
            for name in &crate::request::cors::UPSTREAM_GRANTS {
                upstream_response.remove_header(name);
            }
            for (name, value) in &ctx.passage.cors {
                upstream_response.append_header(name.clone(), value)?;
            }
        }
        upstream_response.insert_header(X_REQUEST_ID.clone(), ctx.request_id.clone())?;
        // RFC 9449 §8.2: the nonce the next proof carries, on every answer to a DPoP
        // request (the upstream's own is replaced: nonces are the gateway's).
        if let Some(nonces) = ctx
            .snapshot
            .as_ref()
            .and_then(|s| s.auth.dpop_nonces.as_ref())
        {
            upstream_response.remove_header(&crate::request::respond::DPOP_NONCE);
            if ctx.passage.caller.is_some() && session.req_header().headers.contains_key("dpop") {
                let nonce = nonces.current(crate::util::clock::unix_seconds());
                upstream_response
                    .insert_header(crate::request::respond::DPOP_NONCE.clone(), nonce)?;
            }
        }
        if let Some((policy, value)) = ctx.passage.ratelimit_headers.take() {
            upstream_response.insert_header("ratelimit-policy", &*policy)?;
            upstream_response.insert_header("ratelimit", value)?;
        }
        if let Some(route) = &ctx.passage.route {
            rewrite::apply(
                &route.headers.response,
                &rewrite_vars(&ctx.passage, &ctx.request_id, route),
                rewrite::Message::Response(upstream_response),
            )?;
        }
        if ctx.passage.transport.tls.is_some() {
            if let Some(hsts) = ctx
                .snapshot
                .as_ref()
                .and_then(|s| s.tls.as_ref())
                .and_then(|t| t.hsts.clone())
            {
                upstream_response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let refusal = match e.etype() {
            t if *t == DECIDED => ctx.decided.take(),
            _ => refusal_for(e),
        };
        // The connection is not reused after a failed proxy (`can_reuse_downstream` below):
        // the answer says so, or an HTTP/1.1 client sends its next request into a closing
        // connection.
        session.set_keepalive(None);
        if let Some(refusal) = refusal
            .as_ref()
            .filter(|_| session.response_written().is_none())
        {
            if let Err(err) = self.refuse(session, ctx, refusal).await {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: refusal.map_or(0, |r| r.status()),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.passage.route.as_ref();
        let method = &session.req_header().method;
        match route {
            Some(r) => r.requests.inc(method, status),
            None => UNMATCHED.inc(method, status),
        }
        let elapsed = ctx.started.elapsed();
        if let Some(r) = route {
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
        let logged = ctx.snapshot.as_ref().is_none_or(|s| {
            s.access_log
                && (status >= 400
                    || s.access_log_sample >= 1.0
                    || fastrand::f64() < s.access_log_sample)
        });
        if logged {
            access_line(session, ctx, status, elapsed, e);
        }
        if let Some(mut trace) = ctx.trace.take() {
            if let Some(e) = e.filter(|e| e.esource() == &ErrorSource::Upstream) {
                trace.attempt_ended(Some(if is_timeout(e) { "timeout" } else { "error" }));
            }
            if trace.sampled {
                trace.finish(server_span(session, ctx, status));
            }
        }
    }
}

/// One JSON access line: never a token, a query string or a secret; the subject as
/// `logging.subject` says.
fn access_line(
    session: &Session,
    ctx: &RequestCtx,
    status: u16,
    elapsed: std::time::Duration,
    e: Option<&Error>,
) {
    let req = session.req_header();
    let passage = &ctx.passage;
    let (auth, auth_reason) = passage.auth.unwrap_or(("", ""));
    let (rbac, rbac_rule) = passage.rbac.map_or(("", String::new()), |(outcome, rule)| {
        (outcome, rule.to_string())
    });
    let subject = match (
        &passage.caller,
        ctx.snapshot.as_ref().map(|s| &s.subject_in_log),
    ) {
        (Some(caller), Some(how)) => subject_for_log(caller.claims(), how),
        _ => String::new(),
    };
    let backend = ctx
        .cluster()
        .zip(ctx.tried.last())
        .and_then(|(c, b)| c.info(b))
        .map(|i| i.addr.clone());
    tracing::info!(
        target: "access",
        request_id = ctx.request_id.to_str().unwrap_or(""),
        client = %passage.edge.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        method = req.method.as_str(),
        path = req.uri.path(),
        host = passage.edge.host.as_deref().unwrap_or(""),
        route = passage.route.as_ref().map_or("unmatched", |r| &*r.name),
        status,
        upstream = ctx.cluster().map_or("", |c| &*c.name),
        backend = backend.as_deref().unwrap_or(""),
        attempts = ctx.tried.len(),
        duration_ms = elapsed.as_secs_f64() * 1e3,
        upstream_ms = ctx.upstream_ms.unwrap_or(0.0),
        bytes_in = session.body_bytes_read(),
        bytes_out = session.body_bytes_sent(),
        auth,
        auth_reason,
        provider = passage.caller.as_ref().map_or("", |c| &*c.provider),
        subject,
        rbac,
        rbac_rule,
        ext_authz = passage.ext_authz.unwrap_or(""),
        limit = passage.limit.unwrap_or(""),
        tls_version = passage.transport.version().unwrap_or(""),
        alpn = passage.transport.alpn.unwrap_or(""),
        client_cert = passage.transport.peer_certificate().is_some(),
        error = e.map(|e| e.etype().as_str()).unwrap_or(""),
        // A gRPC answer's status (a refusal is HTTP 200 with `grpc-status`, as a gRPC
        // server answers): the gateway's own, or the backend's when it ended with headers.
        trace_id = ctx.trace.as_ref().map(|t| t.trace_id_hex()).unwrap_or_default(),
        grpc_status = session
            .response_written()
            .and_then(|r| r.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
}

/// The server span's name and attributes: what the access line says, the subject as
/// `logging.subject` says, never a token.
fn server_span(session: &Session, ctx: &RequestCtx, status: u16) -> Finish<'static> {
    let req = session.req_header();
    let passage = &ctx.passage;
    let route = passage.route.as_ref().map_or("unmatched", |r| &*r.name);
    let mut attributes = vec![
        ("http.request.method", Value::from(req.method.as_str())),
        ("url.path", Value::from(req.uri.path())),
        ("tollgate.route", Value::from(route)),
        (
            "tollgate.request_id",
            Value::from(ctx.request_id.to_str().unwrap_or("")),
        ),
    ];
    if let Some(host) = passage.edge.host.as_deref() {
        attributes.push(("server.address", Value::from(host)));
    }
    if let Some(ip) = passage.edge.client_ip {
        attributes.push(("client.address", Value::from(ip.to_string())));
    }
    if let Some((auth, reason)) = passage.auth {
        attributes.push(("tollgate.auth", Value::from(auth)));
        if !reason.is_empty() {
            attributes.push(("tollgate.auth_reason", Value::from(reason)));
        }
    }
    if let (Some(caller), Some(how)) = (
        &passage.caller,
        ctx.snapshot.as_ref().map(|s| &s.subject_in_log),
    ) {
        let subject = subject_for_log(caller.claims(), how);
        if !subject.is_empty() {
            attributes.push(("enduser.id", Value::from(subject)));
        }
    }
    if let Some((rbac, _)) = passage.rbac {
        attributes.push(("tollgate.rbac", Value::from(rbac)));
    }
    if let Some(upstream) = ctx.cluster() {
        attributes.push(("tollgate.upstream", Value::from(&*upstream.name)));
    }
    Finish {
        name: format!("{} {route}", req.method),
        status,
        attributes,
    }
}

/// The caller's `sub` as `logging.subject` says: left out, as it is, or the first 16 hex
/// digits of SHA-256(salt ‖ sub).
fn subject_for_log(claims: &crate::limits::Claims, how: &SubjectInLog) -> String {
    let Some(sub) = claims.get("sub").and_then(|v| v.as_str()) else {
        return String::new();
    };
    match how {
        SubjectInLog::Omit => String::new(),
        SubjectInLog::Plain => sub.to_owned(),
        SubjectInLog::Hashed { salt } => {
            let hash = crate::util::digest::sha256(&[salt.as_bytes(), sub.as_bytes()]);
            crate::util::digest::hex(&hash[..8])
        }
    }
}

/// What a route's header rules read: a verified caller's claims only.
fn rewrite_vars<'a>(
    passage: &'a Passage,
    request_id: &'a HeaderValue,
    route: &'a RouteRuntime,
) -> rewrite::Vars<'a> {
    rewrite::Vars {
        claims: passage
            .caller
            .as_ref()
            .filter(|c| c.verified())
            .map(|c| c.claims()),
        client_ip: passage.edge.client_ip,
        request_id,
        route: &route.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecided_retry_on_a_pooled_connection_is_read_without_panicking() {
        // Found by the failover load test: a killed backend's pooled connections fail with
        // Pingora's "retry only if reused", and reading it with `retry()` panicked.
        let mut e = Error::explain(ErrorType::ConnectionClosed, "pooled connection closed");
        e.retry = pingora_core::RetryType::ReusedOnly;
        assert!(!decided_retry(&e));
        e.retry.decide_reuse(true);
        assert!(decided_retry(&e));
        let mut e = Error::explain(ErrorType::HTTPStatus(503), "retry_on");
        e.set_retry(true);
        assert!(decided_retry(&e));
    }
}
