//! The decision pipeline: every check a request passes before it is proxied, in order, on
//! the request exactly as the upstream will receive it.
//!
//! ```text
//! admit ──> route ──> authenticate ──> authorize ──> limit ──> proxied
//!   │         │            │               │           │
//!   └─────────┴────────────┴───────────────┴───────────┴──> Refusal (one mapping: respond.rs)
//! ```
//!
//! - **admit** ([`crate::request::edge::prepare`]): size limits, the canonical form of target and
//!   `Host` written back into the request, headers a client must not set removed: 400/414/431;
//! - **route**: the router on the canonical host, path and method (404/405), then the
//!   route's `max_body` against a declared `Content-Length` (413);
//! - **authenticate**: the token from the route's sources, verified by the provider its
//!   `iss` names (400 for two tokens, 401, or 429/503 from the pre-auth brakes);
//! - **authorize**: the route's RBAC policy on the method and the verified claims (403),
//!   then its external authorization service ([`crate::authz::ext`]: its status, or 503);
//! - **limit**: every rate limit of the route (429), keeping the tightest for the
//!   `RateLimit` headers of the answer.
//!
//! The proxy runs it in [`Mode::Enforce`]; `tollgate explain` runs the very same steps in
//! [`Mode::DryRun`], where limits are looked at but not spent, so the two cannot drift.

use crate::identity::auth::{Identity, IdentityHeaders, VerifyError};
use crate::identity::binding;
use crate::identity::dpop::{DpopRefusal, Scheme};
use crate::identity::preauth::PREAUTH;
use crate::limits::{Claims, Stores};
use crate::request::cors;
use crate::request::respond::Refusal;
use crate::request::runtime::{RouteRuntime, RuntimeSnapshot};
use crate::telemetry::metrics::METRICS;
use crate::upstream::balance::RequestSlot;
use crate::upstream::cluster::Cluster;
use crate::util::span;
use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tollgate_config::AuthMode;
use tollgate_jwt::{Reason, VerifiedToken};
use tollgate_ratelimit::Verdict;
use tollgate_router::Match;

/// How the pipeline treats state it would change.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The proxy: limits are spent, failed authentications counted, metrics kept.
    Enforce,
    /// `tollgate explain`: limits are only looked at, not spent; no metric, failure count or
    /// log line of the proxy's is touched (explain is a process of its own).
    /// `claims`, when given, stand in for a verified token (the command line's `--claims`).
    DryRun { claims: Option<Arc<Claims>> },
}

impl Mode {
    fn enforces(&self) -> bool {
        matches!(self, Mode::Enforce)
    }
}

/// Who is calling, once authenticated.
pub struct Caller {
    /// The provider that verified the token (`--claims` in a dry run: the route's first
    /// provider, whose name keys claim-based limits as the proxy's would).
    pub provider: Arc<str>,
    claims: CallerClaims,
    /// The identity headers the upstream receives.
    pub headers: IdentityHeaders,
}

enum CallerClaims {
    Verified(Arc<VerifiedToken>),
    Given(Arc<Claims>),
}

impl Caller {
    /// Whether the claims were verified (false only for a dry run's `--claims`).
    pub fn verified(&self) -> bool {
        matches!(self.claims, CallerClaims::Verified(_))
    }

    pub fn claims(&self) -> &Claims {
        match &self.claims {
            CallerClaims::Verified(token) => &token.claims,
            CallerClaims::Given(claims) => claims,
        }
    }
}

/// What the pipeline established about a request, step by step. What a step established
/// stays when a later step refuses (logs and metrics name the route of a 401).
#[derive(Default)]
pub struct Passage {
    /// The client address and forwarding facts from the edge.
    pub edge: crate::request::edge::EdgeFacts,
    pub route: Option<Arc<RouteRuntime>>,
    /// The upstream the route sends this request to, and why; chosen after authorization,
    /// on the verified token's claims.
    pub target: Option<(
        Arc<crate::upstream::cluster::Cluster>,
        crate::upstream::split::Why,
    )>,
    /// `None` for anonymous callers (routes with `auth: none` or `optional`).
    pub caller: Option<Caller>,
    /// `RateLimit-Policy` and `RateLimit` for the answer, when the route asks for them.
    pub ratelimit_headers: Option<(Arc<str>, String)>,
    /// In a dry run: each limit looked at, with its verdict.
    pub limits_seen: Vec<(Arc<str>, Verdict)>,
    /// For the access log: the authentication result and reason (`allow`/`ok`,
    /// `anonymous`/`missing`, `deny`/reason, `refused`/brake), when the route has auth.
    pub auth: Option<(&'static str, &'static str)>,
    /// For the access log: the RBAC outcome and the rule that decided.
    pub rbac: Option<(&'static str, tollgate_policy::DecidedBy)>,
    /// For the access log: `allow` or `deny`, when the route has limits.
    pub limit: Option<&'static str>,
    /// The connection's TLS, set by the caller before [`Pipeline::decide`].
    pub transport: crate::tls::facts::Transport,
    /// The CORS grant for the answer (`Vary: Origin` at least), when the route has `cors`:
    /// on the upstream's answer (replacing its own) and on the gateway's refusals.
    pub cors: Vec<(http::HeaderName, String)>,
    /// For the access log: the external authorization outcome (`allow`, `deny`,
    /// `unavailable`, `failure_allowed`), when the route has `ext_authz`.
    pub ext_authz: Option<&'static str>,
    /// Headers an allowing external authorization service set for the upstream.
    pub authz_headers: Vec<(HeaderName, HeaderValue)>,
}

/// The checks of one snapshot, for one request.
pub struct Pipeline<'a> {
    pub snapshot: &'a RuntimeSnapshot,
    pub stores: &'a Stores,
    pub mode: Mode,
    /// Named in the log line of an RBAC denial.
    pub request_id: &'a HeaderValue,
}

/// Records one step of a traced request that ended now.
fn step<const N: usize>(
    name: &'static str,
    start: SystemTime,
    failed: bool,
    attributes: [(&'static str, &str); N],
) {
    span::record(span::Step {
        name,
        client: false,
        start,
        end: SystemTime::now(),
        attributes: attributes
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.into()))
            .collect(),
        failed,
    });
}

impl Pipeline<'_> {
    /// Runs every step on `req` (rewritten in place into its canonical form) from a client
    /// at `peer`. `Ok` means the request goes to the upstream.
    pub async fn decide(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        passage: &mut Passage,
    ) -> Result<(), Refusal> {
        passage.edge = self.admit(req, peer)?;
        self.client_address(&self.snapshot.http.ip_rules, passage.edge.client_ip, None)?;
        self.https_only(req, passage)?;
        self.resource_metadata(req, passage)?;
        self.preflight(req, passage)?;
        let route = self.route(req, passage.edge.host.as_deref())?;
        passage.route = Some(route.clone());
        self.client_address(&route.ip_rules, passage.edge.client_ip, Some(&route))?;
        if let Some(policy) = route.cors.as_ref() {
            let (seen, grant) = cors::grant(policy, req);
            if let Some(allowed) = seen {
                self.count_cors(&route, "actual", allowed);
            }
            passage.cors = grant;
        }
        if route.require_client_certificate && passage.transport.peer_certificate().is_none() {
            return Err(Refusal::ClientCertificateRequired);
        }
        self.declared_body(req, &route)?;
        let https = passage.transport.tls.is_some()
            || passage.edge.forwarded_proto.as_deref() == Some("https");
        let started = (route.auth != AuthMode::None && span::active()).then(SystemTime::now);
        let caller = self
            .authenticate(
                req,
                &route,
                (passage.edge.client_ip, &passage.transport, https),
                &mut passage.auth,
            )
            .await;
        if let Some(start) = started {
            let (outcome, reason) = passage.auth.unwrap_or(("", ""));
            step(
                "verify token",
                start,
                caller.is_err(),
                [("tollgate.auth", outcome), ("tollgate.auth_reason", reason)],
            );
        }
        passage.caller = caller?;
        self.authorize(req, &route, passage.caller.as_ref(), &mut passage.rbac)?;
        self.ext_authz(req, &route, passage).await?;
        let (cluster, why) = route
            .targets
            .choose(req, passage.caller.as_ref().map(Caller::claims));
        passage.target = Some((cluster.clone(), why));
        let started = (!route.limits.is_empty() && span::active()).then(SystemTime::now);
        let limited = self
            .limit(
                req,
                &route,
                passage.edge.client_ip,
                passage.caller.as_ref(),
                &mut passage.limits_seen,
            )
            .await;
        if !route.limits.is_empty() {
            let verdict = if limited.is_ok() { "allow" } else { "deny" };
            passage.limit = Some(verdict);
            if let Some(start) = started {
                step("rate limits", start, false, [("tollgate.limit", verdict)]);
            }
        }
        passage.ratelimit_headers = limited?;
        Ok(())
    }

    fn admit(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
    ) -> Result<crate::request::edge::EdgeFacts, Refusal> {
        let snapshot = self.snapshot;
        crate::request::edge::prepare(req, peer, &snapshot.http, &snapshot.strip).inspect_err(|r| {
            if let (Refusal::Malformed { reason, .. }, true) = (r, self.mode.enforces()) {
                METRICS.bad_requests.with_label_values(&[reason]).inc();
            }
        })
    }

    /// A protected resource's metadata (RFC 9728 §3): answered by the gateway, before any
    /// route, to anyone (it names no secret); a CORS preflight for it too, so that a page
    /// may read it.
    fn resource_metadata(&self, req: &RequestHeader, passage: &Passage) -> Result<(), Refusal> {
        let resources = &self.snapshot.resources;
        let path = req.uri.path();
        if resources.is_empty() || !path.starts_with(crate::request::resource::WELL_KNOWN) {
            return Ok(());
        }
        let Some(body) = resources.find(passage.edge.host.as_deref(), path) else {
            return Ok(());
        };
        match req.method {
            http::Method::GET | http::Method::HEAD => Err(Refusal::ResourceMetadata { body }),
            http::Method::OPTIONS if cors::preflight_method(req).is_some() => {
                let mut headers = vec![
                    (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_owned()),
                    (
                        http::header::ACCESS_CONTROL_ALLOW_METHODS,
                        "GET, HEAD".to_owned(),
                    ),
                    (http::header::ACCESS_CONTROL_MAX_AGE, "600".to_owned()),
                ];
                // The document is public: any request header may come with it. Only
                // header-name characters are echoed.
                if let Some(asked) = req
                    .headers
                    .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| {
                        v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_, ".contains(&b))
                    })
                {
                    headers.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, asked.to_owned()));
                }
                Err(Refusal::CorsPreflight { headers })
            }
            // Anything else is not about the document: routed as any request.
            _ => Ok(()),
        }
    }

    /// A CORS preflight to a route with `cors` is answered here, before authentication:
    /// the route is the one the asked-for method would reach, and the preflight never goes
    /// upstream. Other `OPTIONS` requests go on as any request.
    fn preflight(&self, req: &RequestHeader, passage: &mut Passage) -> Result<(), Refusal> {
        let Some(method) = cors::preflight_method(req) else {
            return Ok(());
        };
        let found = self
            .snapshot
            .router
            .find(passage.edge.host.as_deref(), req.uri.path(), method);
        let Match::Found(route) = found else {
            return Ok(());
        };
        let Some(policy) = route.cors.clone() else {
            return Ok(());
        };
        let route = route.clone();
        passage.route = Some(route.clone());
        self.client_address(&route.ip_rules, passage.edge.client_ip, Some(&route))?;
        let answer = cors::preflight(&policy, req, method);
        self.count_cors(&route, "preflight", answer.is_some());
        Err(match answer {
            Some(headers) => Refusal::CorsPreflight { headers },
            None => Refusal::CorsDenied,
        })
    }

    fn count_cors(&self, route: &RouteRuntime, kind: &str, allowed: bool) {
        if self.mode.enforces() {
            let result = if allowed { "allowed" } else { "denied" };
            METRICS
                .cors_requests
                .with_label_values(&[&route.name, kind, result])
                .inc();
        }
    }

    /// `ip_rules`, global (before routing, `route` none) or the route's: the client address
    /// (behind trusted proxies, the real client's) let in or refused, before any token is
    /// looked at.
    fn client_address(
        &self,
        rules: &tollgate_config::IpRules,
        client: Option<IpAddr>,
        route: Option<&RouteRuntime>,
    ) -> Result<(), Refusal> {
        if rules.admits(client) {
            return Ok(());
        }
        if self.mode.enforces() {
            let (scope, name) = match route {
                Some(r) => ("route", r.name.as_ref()),
                None => ("global", "unmatched"),
            };
            METRICS.ip_refusals.with_label_values(&[scope, name]).inc();
        }
        Err(Refusal::IpDenied)
    }

    /// `listen.tls.redirect_http`: a plain-HTTP request (not one a trusted proxy received on
    /// https) is answered with a redirect to the same URL on the HTTPS listener.
    fn https_only(&self, req: &RequestHeader, passage: &Passage) -> Result<(), Refusal> {
        let Some(port) = self.snapshot.tls.as_ref().and_then(|t| t.redirect_to) else {
            return Ok(());
        };
        if passage.transport.tls.is_some()
            || passage.edge.forwarded_proto.as_deref() == Some("https")
        {
            return Ok(());
        }
        let Some(host) = passage.edge.host.as_deref() else {
            return Ok(());
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let authority = match port {
            443 => host,
            port => format!("{host}:{port}"),
        };
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        Err(Refusal::RedirectToHttps {
            location: format!("https://{authority}{target}"),
        })
    }

    fn route(&self, req: &RequestHeader, host: Option<&str>) -> Result<Arc<RouteRuntime>, Refusal> {
        match self
            .snapshot
            .router
            .find(host, req.uri.path(), req.method.as_str())
        {
            Match::Found(route) => Ok(route.clone()),
            Match::MethodNotAllowed(allowed) => Err(Refusal::MethodNotAllowed {
                allow: allowed.join(", "),
            }),
            Match::NotFound => Err(Refusal::NotFound),
        }
    }

    /// A declared `Content-Length` over the route's `max_body` is refused before anything
    /// is read or verified (a chunked body is counted as it arrives, by the proxy).
    fn declared_body(&self, req: &RequestHeader, route: &RouteRuntime) -> Result<(), Refusal> {
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > route.max_body) {
            return Err(body_too_large(self.mode.enforces()));
        }
        Ok(())
    }

    /// Who the caller is, in named steps: find the token → verify it (or introspect it),
    /// with its claims and the deny list ([`crate::identity::auth::Authenticator::verify`])
    /// → hold it to its certificate and DPoP proof ([`binding::check`]). Every outcome is
    /// counted once, through [`Tally`].
    async fn authenticate(
        &self,
        req: &RequestHeader,
        route: &RouteRuntime,
        (client, transport, https): (Option<IpAddr>, &crate::tls::facts::Transport, bool),
        outcome: &mut Option<(&'static str, &'static str)>,
    ) -> Result<Option<Caller>, Refusal> {
        if route.auth == AuthMode::None {
            return Ok(None);
        }
        if let Some(caller) = self.given_caller(route) {
            let checked = resource_audience(route, caller.claims())
                .map_err(|r| (Reason::Audience.as_str(), r))
                .and_then(|()| step_up(route, caller.claims()).map_err(|r| ("step_up", r)));
            if let Err((reason, refusal)) = checked {
                *outcome = Some(("deny", reason));
                return Err(refusal);
            }
            *outcome = Some(("allow", "ok"));
            return Ok(Some(caller));
        }
        let auth = &self.snapshot.auth;
        let mut tally = Tally {
            outcome,
            enforces: self.mode.enforces(),
            client,
            brakes: &auth.brakes,
        };
        let Some((token, scheme)) = find(req, route, &mut tally)? else {
            return Ok(None);
        };
        let identity = match auth
            .verify(token, &route.providers, SystemTime::now(), client)
            .await
        {
            Ok(identity) => identity,
            // Counted by the brakes themselves (`tollgate_preauth_refusals_total`).
            Err(VerifyError::Refused(refused)) => {
                tally.refused(refused.label());
                return Err(refused.into());
            }
            Err(VerifyError::Rejected(provider, rejection)) => {
                let provider = provider.as_ref().map_or("none", |p| &*p.name);
                tally.failed(provider, rejection.reason.as_str());
                return Err(Refusal::Unauthorized {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    presented: true,
                    schemes: route.schemes,
                });
            }
        };
        let carrier = binding::Carrier {
            req,
            token,
            scheme,
            peer: transport.peer_certificate(),
            https,
        };
        // RFC 8707: a token for another resource is refused before its proof is spent.
        if let Err(refusal) = resource_audience(route, &identity.token.claims) {
            tally.failed(&identity.provider.name, Reason::Audience.as_str());
            return Err(refusal);
        }
        self.hold(carrier, route, &identity, &mut tally).await?;
        // RFC 9470: a good token whose login is too weak or too old. Not charged to the
        // client as a failed attempt: the client did nothing wrong.
        if let Err(refusal) = step_up(route, &identity.token.claims) {
            tally.count(&identity.provider.name, "deny", "step_up");
            return Err(refusal);
        }
        let provider = &identity.provider;
        tally.allowed(provider);
        let Identity {
            provider,
            token: verified,
            headers,
        } = identity;
        Ok(Some(Caller {
            provider: provider.name.clone(),
            claims: CallerClaims::Verified(verified),
            headers,
        }))
    }

    /// The last step: the verified token held to its certificate and DPoP proof.
    async fn hold(
        &self,
        carrier: binding::Carrier<'_>,
        route: &RouteRuntime,
        identity: &Identity,
        tally: &mut Tally<'_>,
    ) -> Result<(), Refusal> {
        let demands = binding::Demands {
            certificate: route.require_certificate_binding,
            dpop: route.accepts_dpop().then_some(route.dpop),
        };
        let auth = &self.snapshot.auth;
        let (provider, claims) = (&identity.provider, &identity.token.claims);
        let bound = binding::check(
            carrier,
            claims,
            provider,
            demands,
            (&auth.dpop, auth.dpop_nonces.as_ref()),
            self.stores,
            tally.enforces,
        );
        let Err(unbound) = bound.await else {
            return Ok(());
        };
        match unbound {
            DpopRefusal::Unavailable => tally.refused(unbound.reason()),
            // The first request of every client that follows RFC 9449 §9: not a failure.
            DpopRefusal::UseNonce(_) => tally.count(&provider.name, "deny", unbound.reason()),
            _ => tally.failed(&provider.name, unbound.reason()),
        }
        Err(Refusal::unbound(unbound, route.schemes))
    }

    /// The caller `explain` was given claims for (dry run): no token to look for.
    fn given_caller(&self, route: &RouteRuntime) -> Option<Caller> {
        let Mode::DryRun {
            claims: Some(claims),
        } = &self.mode
        else {
            return None;
        };
        Some(Caller {
            provider: route
                .providers
                .first()
                .map_or_else(|| "command-line".into(), |p| p.name.clone()),
            headers: self.snapshot.auth.identity_headers(claims).into(),
            claims: CallerClaims::Given(claims.clone()),
        })
    }

    fn authorize(
        &self,
        req: &RequestHeader,
        route: &RouteRuntime,
        caller: Option<&Caller>,
        decided: &mut Option<(&'static str, tollgate_policy::DecidedBy)>,
    ) -> Result<(), Refusal> {
        let Some(policy) = &route.policy else {
            return Ok(());
        };
        let facts =
            tollgate_policy::RequestFacts::new(req.method.as_str(), caller.map(Caller::claims));
        let decision = policy.evaluate(&facts);
        *decided = Some((decision.outcome(), decision.decided_by));
        if let (Some(counters), true) = (&route.rbac_counters, self.mode.enforces()) {
            match decision.outcome() {
                "allow" => &counters[0],
                "deny" => &counters[1],
                _ => &counters[2],
            }
            .inc();
        }
        if decision.allowed {
            return Ok(());
        }
        if self.mode.enforces() {
            tracing::info!(
                request_id = self.request_id.to_str().unwrap_or(""),
                route = %route.name,
                policy = decision.policy,
                rule = %decision.decided_by,
                outcome = decision.outcome(),
                "rbac denied"
            );
        }
        if decision.effective_allow() {
            return Ok(());
        }
        Err(Refusal::Forbidden {
            policy: decision.policy.into(),
            scopes: decision.required_scopes.into(),
        })
    }

    /// The route's external authorization service, after RBAC: its allow (with headers
    /// for the upstream), its denial as the answer, or, when it cannot be asked, 503 (or
    /// the request goes on, with `failure_mode_allow`).
    async fn ext_authz(
        &self,
        req: &RequestHeader,
        route: &RouteRuntime,
        passage: &mut Passage,
    ) -> Result<(), Refusal> {
        use crate::authz::ext::{Asked, Decision, Failure};
        let Some(service) = &route.ext_authz else {
            return Ok(());
        };
        // The service judges the request the upstream will receive: its credentials
        // removed (a token in the query never reaches the service) and `strip_prefix` done.
        let mut upstream = req.clone();
        if route.auth != AuthMode::None && !route.keep_authorization {
            crate::identity::credentials::strip(&mut upstream, &route.token_sources)
                .map_err(|_| Refusal::Internal)?;
        }
        route
            .strip_prefix_from(&mut upstream)
            .map_err(|_| Refusal::Internal)?;
        let asked = Asked {
            req: &upstream,
            route: &route.name,
            claims: passage.caller.as_ref().map(Caller::claims),
            client: passage.edge.client_ip,
            request_id: self.request_id.to_str().unwrap_or(""),
            brakes: &self.snapshot.auth.brakes,
            enforce: self.mode.enforces(),
        };
        // Boxed: the call's future (an HTTP exchange) is several KiB, which every request's
        // pipeline would otherwise carry and move, on routes without `ext_authz` too
        // (measured: +19% instructions per request on the repeat path before it was boxed).
        let checked = Box::pin(service.check(&asked)).await;
        let (outcome, result) = match checked {
            Ok(decision) => match &*decision {
                Decision::Allow { headers } => {
                    passage.authz_headers = headers.clone();
                    ("allow", Ok(()))
                }
                Decision::Deny {
                    status,
                    body,
                    headers,
                } => (
                    "deny",
                    Err(Refusal::AuthzDenied {
                        status: *status,
                        body: body.clone(),
                        headers: headers
                            .iter()
                            .filter_map(|(n, v)| Some((n.clone(), v.to_str().ok()?.to_owned())))
                            .collect(),
                    }),
                ),
            },
            Err(Failure::Budget(refused)) => ("unavailable", Err(refused.into())),
            Err(Failure::Unavailable) if service.failure_mode_allow() => {
                ("failure_allowed", Ok(()))
            }
            Err(Failure::Unavailable) => ("unavailable", Err(Refusal::AuthzUnavailable)),
        };
        passage.ext_authz = Some(outcome);
        result
    }

    /// Checks every limit; the first that refuses decides. Returns the `RateLimit` headers
    /// of the limit with the fewest requests left among those that send headers.
    async fn limit(
        &self,
        req: &RequestHeader,
        route: &RouteRuntime,
        client_ip: Option<IpAddr>,
        caller: Option<&Caller>,
        seen: &mut Vec<(Arc<str>, Verdict)>,
    ) -> Result<Option<(Arc<str>, String)>, Refusal> {
        let caller = caller.map(|c| crate::limits::Caller {
            provider: &c.provider,
            claims: c.claims(),
        });
        let consume = self.mode.enforces();
        let mut tightest: Option<(u32, Arc<str>, String)> = None;
        for limit in &route.limits {
            let outcome = limit
                .check(self.stores, req, client_ip, caller, consume)
                .await;
            if !consume {
                seen.push((limit.name.clone(), outcome.verdict));
            }
            if !outcome.verdict.allowed {
                return Err(Refusal::RateLimited {
                    limit: limit.name.clone(),
                    retry_after_secs: outcome.verdict.retry_after_secs().max(1),
                    ratelimit_header: outcome.ratelimit_header(&limit.name),
                    policy_header: outcome.policy_header,
                });
            }
            let remaining = outcome.verdict.remaining;
            if limit.headers && tightest.as_ref().is_none_or(|(r, _, _)| remaining < *r) {
                let value = outcome.ratelimit_header(&limit.name);
                tightest = Some((remaining, outcome.policy_header, value));
            }
        }
        Ok(tightest.map(|(_, policy, value)| (policy, value)))
    }
}

/// A body over the route's `max_body`, declared or streamed: 413, counted when enforcing.
fn body_too_large(count: bool) -> Refusal {
    if count {
        METRICS
            .bad_requests
            .with_label_values(&["body_too_large"])
            .inc();
    }
    Refusal::BodyTooLarge
}

/// Step one of authentication: the token and the scheme it came under. `Ok(None)` is an
/// anonymous caller on an optional route.
fn find<'r>(
    req: &'r RequestHeader,
    route: &RouteRuntime,
    tally: &mut Tally<'_>,
) -> Result<Option<(&'r str, Scheme)>, Refusal> {
    let presented = crate::identity::credentials::find_presented(
        req,
        &route.token_sources,
        route.accepts_dpop(),
    );
    match presented {
        Ok(Some(found)) => Ok(Some(found)),
        Ok(None) if route.auth == AuthMode::Optional => {
            tally.count("none", "anonymous", "missing");
            Ok(None)
        }
        Ok(None) => {
            tally.count("none", "deny", Reason::Missing.as_str());
            Err(Refusal::Unauthorized {
                reason: Reason::Missing,
                detail: "a bearer token is required",
                presented: false,
                schemes: route.schemes,
            })
        }
        Err(several) => {
            tally.count("none", "deny", "malformed");
            Err(several.into())
        }
    }
}

/// RFC 8707: on a route with a `resource`, the claims' `aud` holds it.
fn resource_audience(
    route: &RouteRuntime,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Refusal> {
    match &route.resource {
        Some(resource) if !crate::request::resource::audience_holds(claims, &resource.id) => {
            Err(Refusal::Unauthorized {
                reason: Reason::Audience,
                detail: "the token is not for this resource (aud)",
                presented: true,
                schemes: route.schemes,
            })
        }
        _ => Ok(()),
    }
}

/// RFC 9470: the claims' `acr` and `auth_time` meet the route's `step_up`.
fn step_up(
    route: &RouteRuntime,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), Refusal> {
    use crate::request::resource::{step_up_miss, StepUpMiss};
    let Some(step_up) = &route.step_up else {
        return Ok(());
    };
    let now = crate::util::clock::unix_seconds();
    let Some(miss) = step_up_miss(step_up, claims, now) else {
        return Ok(());
    };
    Err(Refusal::StepUpRequired {
        acr_values: route.step_up_acr.clone(),
        max_age: step_up.max_age.map(|d| d.as_secs()),
        detail: match miss {
            StepUpMiss::Acr => "a stronger authentication (acr) is required",
            StepUpMiss::MaxAge => "a more recent authentication (auth_time) is required",
        },
        schemes: route.schemes,
    })
}

/// Authentication's outcome, for the access log and (in enforce mode) its counter, and a
/// failed attempt charged to the client's pre-auth brake: one place for all three.
struct Tally<'a> {
    outcome: &'a mut Option<(&'static str, &'static str)>,
    enforces: bool,
    client: Option<IpAddr>,
    brakes: &'a crate::identity::preauth::Brakes,
}

impl Tally<'_> {
    fn count(&mut self, provider: &str, result: &'static str, reason: &'static str) {
        *self.outcome = Some((result, reason));
        if self.enforces {
            METRICS
                .auth_decisions
                .with_label_values(&[provider, result, reason])
                .inc();
        }
    }

    /// A presented token refused: counted, and charged to the client's failed attempts.
    fn failed(&mut self, provider: &str, reason: &'static str) {
        if self.enforces {
            PREAUTH.record_failure(self.client, self.brakes, crate::util::clock::now_ns());
        }
        self.count(provider, "deny", reason);
    }

    /// Allowed: counted on the provider's resolved counter.
    fn allowed(&mut self, provider: &crate::identity::keys::Provider) {
        *self.outcome = Some(("allow", "ok"));
        if self.enforces {
            provider.allowed.inc();
        }
    }

    /// Refused before or beside verification by a brake or an unavailable dependency: the
    /// brakes count themselves.
    fn refused(&mut self, reason: &'static str) {
        *self.outcome = Some(("refused", reason));
    }
}

/// The pipeline's later decisions, taken in the Pingora phase that holds what each needs:
/// the circuit breaker when an upstream is about to be chosen, a streamed body against the
/// route's `max_body`, the upstream token when the upstream request is written. Each
/// refusal is a [`Refusal`] like the pipeline's others, answered by the one mapping.
impl Passage {
    /// Whether the chosen cluster takes one more request (its circuit breaker).
    pub fn admit_upstream(&self, cluster: &Cluster) -> Result<RequestSlot, Refusal> {
        cluster.admit().map_err(|_| Refusal::Overloaded {
            reason: "circuit_breaker",
            message: "the upstream's circuit breaker is open; retry after the time in Retry-After",
            retry_after_secs: cluster.retry_after_secs(),
        })
    }

    /// No backend to try: none healthy (503), or every healthy one tried and failed (502).
    pub fn no_backend(tried: usize, cluster: &Cluster) -> Refusal {
        if tried == 0 || !cluster.any_healthy() {
            Refusal::NoHealthyBackend
        } else {
            Refusal::UpstreamFailed
        }
    }

    /// Counts a chunk of a body that declared no length: past the route's `max_body`, 413.
    pub fn count_body(&self, seen: &mut u64, chunk: usize) -> Result<(), Refusal> {
        let Some(route) = &self.route else {
            return Ok(());
        };
        *seen += chunk as u64;
        if *seen > route.max_body {
            return Err(body_too_large(true));
        }
        Ok(())
    }

    /// The route's `upstream_token` for this caller, as the header to set; a token that
    /// cannot be signed refuses the request (500): it is never sent on without one.
    pub fn upstream_token(&self) -> Result<Option<(HeaderName, HeaderValue)>, Refusal> {
        let Some(route) = &self.route else {
            return Ok(None);
        };
        let Some(tokens) = route.upstream_token.as_ref() else {
            return Ok(None);
        };
        let Some(caller) = self.caller.as_ref().filter(|c| c.verified()) else {
            return Ok(None);
        };
        match tokens.value_for(caller.claims()) {
            Some(token) => Ok(Some((tokens.spec.header.clone(), token))),
            None => Err(Refusal::UpstreamTokenFailed),
        }
    }
}
