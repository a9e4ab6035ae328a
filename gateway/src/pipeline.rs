//! The decision pipeline: every check a request passes before it is proxied, in order, on
//! the request exactly as the upstream will receive it.
//!
//! ```text
//! admit ──> route ──> authenticate ──> authorize ──> limit ──> proxied
//!   │         │            │               │           │
//!   └─────────┴────────────┴───────────────┴───────────┴──> Refusal (one mapping: respond.rs)
//! ```
//!
//! - **admit** ([`crate::edge::prepare`]): size limits, the canonical form of target and
//!   `Host` written back into the request, headers a client must not set removed: 400/414/431;
//! - **route**: the router on the canonical host, path and method (404/405), then the
//!   route's `max_body` against a declared `Content-Length` (413);
//! - **authenticate**: the token from the route's sources, verified by the provider its
//!   `iss` names (400 for two tokens, 401, or 429/503 from the pre-auth brakes);
//! - **authorize**: the route's RBAC policy on the method and the verified claims (403);
//! - **limit**: every rate limit of the route (429), keeping the tightest for the
//!   `RateLimit` headers of the answer.
//!
//! The proxy runs it in [`Mode::Enforce`]; `tollgate explain` runs the very same steps in
//! [`Mode::DryRun`], where limits are looked at but not spent, so the two cannot drift.

use crate::auth::{Identity, IdentityHeaders, VerifyError};
use crate::dpop::DpopRefusal;
use crate::limits::{Claims, Stores};
use crate::metrics::METRICS;
use crate::preauth::{PreAuthRefusal, PREAUTH};
use crate::respond::Refusal;
use crate::runtime::{RouteRuntime, RuntimeSnapshot};
use http::header::HeaderValue;
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
    pub edge: crate::edge::EdgeFacts,
    pub route: Option<Arc<RouteRuntime>>,
    /// The upstream the route sends this request to, and why; chosen after authorization,
    /// on the verified token's claims.
    pub target: Option<(Arc<crate::cluster::Cluster>, crate::split::Why)>,
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
    pub transport: crate::tls::Transport,
}

/// The checks of one snapshot, for one request.
pub struct Pipeline<'a> {
    pub snapshot: &'a RuntimeSnapshot,
    pub stores: &'a Stores,
    pub mode: Mode,
    /// Named in the log line of an RBAC denial.
    pub request_id: &'a HeaderValue,
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
        self.https_only(req, passage)?;
        let route = self.route(req, passage.edge.host.as_deref())?;
        passage.route = Some(route.clone());
        if route.require_client_certificate && passage.transport.peer_certificate().is_none() {
            return Err(Refusal::ClientCertificateRequired);
        }
        self.declared_body(req, &route)?;
        let https = passage.transport.tls.is_some()
            || passage.edge.forwarded_proto.as_deref() == Some("https");
        passage.caller = self
            .authenticate(
                req,
                &route,
                (passage.edge.client_ip, &passage.transport, https),
                &mut passage.auth,
            )
            .await?;
        self.authorize(req, &route, passage.caller.as_ref(), &mut passage.rbac)?;
        let (cluster, why) = route
            .targets
            .choose(req, passage.caller.as_ref().map(Caller::claims));
        passage.target = Some((cluster.clone(), why));
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
            passage.limit = Some(if limited.is_ok() { "allow" } else { "deny" });
        }
        passage.ratelimit_headers = limited?;
        Ok(())
    }

    fn admit(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
    ) -> Result<crate::edge::EdgeFacts, Refusal> {
        let snapshot = self.snapshot;
        crate::edge::prepare(req, peer, &snapshot.http, &snapshot.strip).inspect_err(|r| {
            if let (Refusal::Malformed { reason, .. }, true) = (r, self.mode.enforces()) {
                METRICS.bad_requests.with_label_values(&[reason]).inc();
            }
        })
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
            if self.mode.enforces() {
                METRICS
                    .bad_requests
                    .with_label_values(&["body_too_large"])
                    .inc();
            }
            return Err(Refusal::BodyTooLarge);
        }
        Ok(())
    }

    async fn authenticate(
        &self,
        req: &RequestHeader,
        route: &RouteRuntime,
        (client, transport, https): (Option<IpAddr>, &crate::tls::Transport, bool),
        outcome: &mut Option<(&'static str, &'static str)>,
    ) -> Result<Option<Caller>, Refusal> {
        if route.auth == AuthMode::None {
            return Ok(None);
        }
        let auth = &self.snapshot.auth;
        if let Mode::DryRun {
            claims: Some(claims),
        } = &self.mode
        {
            *outcome = Some(("allow", "ok"));
            return Ok(Some(Caller {
                provider: route
                    .providers
                    .first()
                    .map_or_else(|| "command-line".into(), |p| p.name.clone()),
                headers: auth.identity_headers(claims).into(),
                claims: CallerClaims::Given(claims.clone()),
            }));
        }
        // The outcome for the access log and, in enforce mode, its counter: one place for both.
        let enforces = self.mode.enforces();
        let mut count = |provider: &str, result: &'static str, reason: &'static str| {
            *outcome = Some((result, reason));
            if enforces {
                METRICS
                    .auth_decisions
                    .with_label_values(&[provider, result, reason])
                    .inc();
            }
        };
        let schemes = route.schemes;
        let presented =
            crate::credentials::find_presented(req, &route.token_sources, route.accepts_dpop());
        let (token, scheme) = match presented {
            Ok(Some(found)) => found,
            Ok(None) if route.auth == AuthMode::Optional => {
                count("none", "anonymous", "missing");
                return Ok(None);
            }
            Ok(None) => {
                count("none", "deny", Reason::Missing.as_str());
                return Err(Refusal::Unauthorized {
                    reason: Reason::Missing,
                    detail: "a bearer token is required",
                    presented: false,
                    schemes,
                });
            }
            Err(refusal) => {
                count("none", "deny", "malformed");
                return Err(refusal);
            }
        };
        match auth
            .verify(token, &route.providers, SystemTime::now(), client)
            .await
        {
            Ok(Identity {
                provider,
                token: verified,
                headers,
            }) => {
                // After the cache as before it: a bound token is held to the certificate of
                // the connection it arrives on, every time.
                let must_bind =
                    provider.require_certificate_binding || route.require_certificate_binding;
                if let Err(detail) =
                    certificate_binding(&verified.claims, must_bind, transport.peer_certificate())
                {
                    if enforces {
                        PREAUTH.record_failure(client, &auth.brakes, crate::clock::now_ns());
                    }
                    count(&provider.name, "deny", Reason::Binding.as_str());
                    return Err(Refusal::Unauthorized {
                        reason: Reason::Binding,
                        detail,
                        presented: true,
                        schemes,
                    });
                }
                if route.accepts_dpop() {
                    // Boxed: its Redis round trip's future would otherwise enlarge every
                    // request's, DPoP or not.
                    let checked = Box::pin(crate::dpop::check(
                        req,
                        token,
                        &verified.claims,
                        scheme,
                        provider.dpop.max(route.dpop),
                        crate::dpop::request_htu(req, https).as_deref(),
                        &auth.dpop,
                        self.stores,
                        enforces,
                        crate::clock::unix_seconds(),
                    ))
                    .await;
                    let refusal = match checked {
                        Ok(()) => None,
                        Err(DpopRefusal::Token(detail)) => Some((
                            Reason::Binding.as_str(),
                            Refusal::Unauthorized {
                                reason: Reason::Binding,
                                detail,
                                presented: true,
                                schemes,
                            },
                        )),
                        Err(DpopRefusal::Proof(detail)) => {
                            Some(("dpop_proof", Refusal::InvalidDpopProof { detail, schemes }))
                        }
                        Err(DpopRefusal::Unavailable) => {
                            *outcome = Some(("refused", "dpop_replay_unavailable"));
                            return Err(Refusal::Overloaded {
                                reason: "dpop_replay_unavailable",
                                message:
                                    "DPoP proofs cannot be checked for replay now; retry later",
                                retry_after_secs: 1,
                            });
                        }
                    };
                    if let Some((reason, refusal)) = refusal {
                        if enforces {
                            PREAUTH.record_failure(client, &auth.brakes, crate::clock::now_ns());
                        }
                        count(&provider.name, "deny", reason);
                        return Err(refusal);
                    }
                }
                *outcome = Some(("allow", "ok"));
                if enforces {
                    provider.allowed.inc();
                }
                Ok(Some(Caller {
                    provider: provider.name.clone(),
                    claims: CallerClaims::Verified(verified),
                    headers,
                }))
            }
            // Counted by the brakes themselves (`tollgate_preauth_refusals_total`).
            Err(VerifyError::Refused(refused)) => {
                *outcome = Some(("refused", refused.label()));
                Err(match refused {
                    PreAuthRefusal::FailedAuthLimit { retry_after_secs } => {
                        Refusal::TooManyFailedAttempts { retry_after_secs }
                    }
                    PreAuthRefusal::Busy => Refusal::Overloaded {
                        reason: "verification_budget",
                        message: "too many tokens are being verified; retry later",
                        retry_after_secs: 1,
                    },
                    PreAuthRefusal::RevocationUnavailable => Refusal::Overloaded {
                        reason: "revocation_unavailable",
                        message: "the revocation list has not been read yet; retry later",
                        retry_after_secs: 1,
                    },
                    PreAuthRefusal::IntrospectionUnavailable => Refusal::Overloaded {
                        reason: "introspection_unavailable",
                        message: "the token could not be checked with its issuer; retry later",
                        retry_after_secs: 1,
                    },
                    PreAuthRefusal::NetworkBusy => Refusal::Overloaded {
                        reason: "network_budget",
                        message: "too many tokens are waiting on their issuer; retry later",
                        retry_after_secs: 1,
                    },
                    PreAuthRefusal::ClientNetworkBusy => Refusal::TooManyWaiting,
                })
            }
            Err(VerifyError::Rejected(provider, rejection)) => {
                if enforces {
                    PREAUTH.record_failure(client, &auth.brakes, crate::clock::now_ns());
                }
                let provider = provider.as_ref().map_or("none", |p| &*p.name);
                count(provider, "deny", rejection.reason.as_str());
                Err(Refusal::Unauthorized {
                    reason: rejection.reason,
                    detail: rejection.detail,
                    presented: true,
                    schemes,
                })
            }
        }
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

/// RFC 8705 §3: a token whose `cnf` claim names a certificate thumbprint (`x5t#S256`) is
/// good only on a connection whose verified client certificate has that thumbprint; with
/// `required`, a token without one is refused too.
fn certificate_binding(
    claims: &Claims,
    required: bool,
    peer: Option<&crate::tls::PeerCertificate>,
) -> Result<(), &'static str> {
    let bound = claims
        .get("cnf")
        .and_then(|c| c.as_object())
        .and_then(|c| c.get("x5t#S256"));
    match (bound, peer) {
        (None, _) if !required => Ok(()),
        (None, _) => Err("the token must be bound to the client certificate (cnf.x5t#S256)"),
        (Some(serde_json::Value::String(t)), Some(peer)) if *t == peer.thumbprint => Ok(()),
        (Some(_), Some(_)) => Err("the token is bound to another client certificate"),
        (Some(_), None) => {
            Err("the token is bound to a client certificate the connection did not present")
        }
    }
}
