//! Every answer the gateway writes itself, and the one place where a refusal becomes a
//! response: [`Refusal`] names why a request is not proxied (or why proxying failed), and
//! [`Refusal::answer`] gives its status, JSON body and headers. The proxy sends answers on
//! the Pingora session ([`Answer::send`]); the connection guard writes the few that happen
//! before Pingora parses a request straight to the socket ([`Answer::to_http1`]).
//!
//! Bodies are `{"error": .., "reason": .., "policy": .., "limit": .., "message": ..,
//! "request_id": ..}` (only `error` and `message` always present). Messages are fixed text:
//! an answer never echoes request data, tokens or keys.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;
use tollgate_jwt::Reason;

/// `X-Request-Id`: kept from a well-formed client value or generated, sent both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Why the gateway answers a request itself instead of passing on the upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400, 414 or 431: the request is malformed, ambiguous or too large to read; `reason`
    /// is the label of `tollgate_bad_requests_total` and of the JSON `reason`.
    Malformed {
        status: u16,
        reason: &'static str,
        message: &'static str,
    },
    /// 405 for a method the gateway never proxies (`CONNECT`), answered by Pingora itself.
    MethodNotSupported,
    /// 408: the request header (`header_timeout`) or body (`body_timeout`) did not arrive
    /// in time.
    RequestTimeout { reason: &'static str },
    /// 413: the body is larger than the route's `max_body`.
    BodyTooLarge,
    /// 404: no route matches host and path.
    NotFound,
    /// 405: a route matches the path but not the method; `allow` lists the methods that do.
    MethodNotAllowed { allow: String },
    /// 400: more than one token in the request (RFC 6750 §2).
    MultipleTokens,
    /// 401; `presented` tells whether a token was there, which decides the challenge
    /// (RFC 6750 §3).
    Unauthorized {
        reason: Reason,
        detail: &'static str,
        presented: bool,
        schemes: Schemes,
    },
    /// 401: the DPoP proof is missing, invalid, for another request or key, or replayed
    /// (RFC 9449 §7.1 `invalid_dpop_proof`).
    InvalidDpopProof {
        detail: &'static str,
        schemes: Schemes,
    },
    /// 403 from the route's RBAC policy; `scopes` are the scopes that would have allowed it.
    Forbidden { policy: Arc<str>, scopes: Arc<str> },
    /// 403: the route takes only requests on a TLS connection with a verified client
    /// certificate (`client_certificate: required`).
    ClientCertificateRequired,
    /// 403: the client's address is not let in by `ip_rules` (global or the route's).
    IpDenied,
    /// 204: a CORS preflight the route's `cors` allows, answered by the gateway.
    CorsPreflight { headers: Vec<(HeaderName, String)> },
    /// 403: a CORS preflight the route's `cors` does not allow (no grant is given).
    CorsDenied,
    /// 308 to the same URL on https: a plain-HTTP request when `listen.tls.redirect_http`.
    RedirectToHttps { location: String },
    /// 429 from a rate limit, with its `RateLimit` headers.
    RateLimited {
        limit: Arc<str>,
        retry_after_secs: u64,
        policy_header: Arc<str>,
        ratelimit_header: String,
    },
    /// 429 before any signature check: this client failed authentication too often.
    TooManyFailedAttempts { retry_after_secs: u64 },
    /// 429: this client already has `auth.max_network_waits_per_client` requests waiting
    /// on an identity provider.
    TooManyWaiting,
    /// 503 with `Retry-After`: too many signature checks (`verification_budget`) or
    /// connections (`listener`, `client`) at once.
    Overloaded {
        reason: &'static str,
        message: &'static str,
        retry_after_secs: u64,
    },
    /// 503: the route's cluster has no healthy backend.
    NoHealthyBackend,
    /// 502: the upstream could not be reached or failed mid-answer.
    UpstreamFailed,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 400: the request could not be read after its header.
    Unreadable,
    /// 500: the gateway's own failure.
    Internal,
    /// The route's external authorization service denied: its status, body and headers.
    AuthzDenied {
        status: u16,
        body: Bytes,
        headers: Vec<(HeaderName, String)>,
    },
    /// 503: the external authorization service could not be asked (fail closed).
    AuthzUnavailable,
    /// 500: the route's `upstream_token` could not be signed; the request is not sent on
    /// without the token its backend expects. The gateway's fault, not the upstream's.
    UpstreamTokenFailed,
    /// 200: a protected resource's metadata document (RFC 9728), answered by the gateway.
    ResourceMetadata { body: Bytes },
    /// 401 `insufficient_user_authentication` (RFC 9470): the token's login is not the one
    /// the route's `step_up` asks for; the challenge says what to ask for.
    StepUpRequired {
        /// `acr_values` for the challenge (space-separated), empty when not the reason.
        acr_values: Arc<str>,
        max_age: Option<u64>,
        detail: &'static str,
        schemes: Schemes,
    },
    /// 401 `use_dpop_nonce` (RFC 9449 §9): the proof has no nonce, or an old one; the
    /// answer carries the current one in `DPoP-Nonce`.
    UseDpopNonce { nonce: String, schemes: Schemes },
}

/// `DPoP-Nonce` (RFC 9449 §8.1).
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The `Authorization` schemes a route takes, which decide its 401 challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schemes {
    Bearer,
    /// Bearer and DPoP: one challenge for each (RFC 9449 §7.1).
    BearerAndDpop,
    Dpop,
}

impl Schemes {
    /// `WWW-Authenticate` for each scheme. `error` (code, description) goes on the
    /// challenge it belongs to: `invalid_dpop_proof` on DPoP's only, a token error on each.
    fn challenges<'a>(
        self,
        answer: Answer<'a>,
        realm: &str,
        error: Option<(&str, &str)>,
    ) -> Answer<'a> {
        self.challenges_with(answer, realm, error, "")
    }

    /// As `challenges`, with `params` (`, name="value"`…) after the error on the
    /// challenges that carry it.
    fn challenges_with<'a>(
        self,
        mut answer: Answer<'a>,
        realm: &str,
        error: Option<(&str, &str)>,
        params: &str,
    ) -> Answer<'a> {
        let with_error = |mut c: String, scheme_error: bool| {
            if let (Some((code, description)), true) = (error, scheme_error) {
                c.push_str(&format!(
                    ", error=\"{code}\", error_description=\"{description}\"{params}"
                ));
            }
            c
        };
        // A proof's errors are DPoP's alone.
        let proof_error =
            error.is_some_and(|(code, _)| code == "invalid_dpop_proof" || code == "use_dpop_nonce");
        if self != Schemes::Dpop {
            answer = answer.header(
                http::header::WWW_AUTHENTICATE,
                with_error(format!("Bearer realm=\"{realm}\""), !proof_error),
            );
        }
        if self != Schemes::Bearer {
            let algs = tollgate_jwt::dpop::PROOF_ALGORITHMS
                .map(|a| a.as_str())
                .join(" ");
            answer = answer.header(
                http::header::WWW_AUTHENTICATE,
                with_error(format!("DPoP realm=\"{realm}\", algs=\"{algs}\""), true),
            );
        }
        answer
    }
}

impl From<crate::identity::credentials::MultipleTokens> for Refusal {
    fn from(_: crate::identity::credentials::MultipleTokens) -> Refusal {
        Refusal::MultipleTokens
    }
}

impl From<crate::identity::preauth::PreAuthRefusal> for Refusal {
    fn from(refused: crate::identity::preauth::PreAuthRefusal) -> Refusal {
        use crate::identity::preauth::PreAuthRefusal as P;
        match refused {
            P::FailedAuthLimit { retry_after_secs } => {
                Refusal::TooManyFailedAttempts { retry_after_secs }
            }
            P::Busy => Refusal::Overloaded {
                reason: "verification_budget",
                message: "too many tokens are being verified; retry later",
                retry_after_secs: 1,
            },
            P::RevocationUnavailable => Refusal::Overloaded {
                reason: "revocation_unavailable",
                message: "the revocation list has not been read yet; retry later",
                retry_after_secs: 1,
            },
            P::IntrospectionUnavailable => Refusal::Overloaded {
                reason: "introspection_unavailable",
                message: "the token could not be checked with its issuer; retry later",
                retry_after_secs: 1,
            },
            P::NetworkBusy => Refusal::Overloaded {
                reason: "network_budget",
                message: "too many requests are waiting on an identity or authorization service; retry later",
                retry_after_secs: 1,
            },
            P::ClientNetworkBusy => Refusal::TooManyWaiting,
        }
    }
}

impl Refusal {
    /// A verified token that may not be used the way it came (certificate binding, DPoP),
    /// on a route that accepts `schemes`.
    pub fn unbound(unbound: crate::identity::dpop::DpopRefusal, schemes: Schemes) -> Refusal {
        use crate::identity::dpop::DpopRefusal as D;
        match unbound {
            D::Token(detail) => Refusal::Unauthorized {
                reason: tollgate_jwt::Reason::Binding,
                detail,
                presented: true,
                schemes,
            },
            D::Proof(detail) => Refusal::InvalidDpopProof { detail, schemes },
            D::UseNonce(nonce) => Refusal::UseDpopNonce { nonce, schemes },
            D::Unavailable => Refusal::Overloaded {
                reason: "dpop_replay_unavailable",
                message: "DPoP proofs cannot be checked for replay now; retry later",
                retry_after_secs: 1,
            },
        }
    }

    /// A refusal before routing, from the canonical-request rules.
    pub fn from_canonical(r: tollgate_canonical::Refusal) -> Refusal {
        Refusal::Malformed {
            status: 400,
            reason: r.reason(),
            message: "the request is malformed or ambiguous",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed { status, .. } => *status,
            Refusal::MethodNotSupported | Refusal::MethodNotAllowed { .. } => 405,
            Refusal::RequestTimeout { .. } => 408,
            Refusal::BodyTooLarge => 413,
            Refusal::NotFound => 404,
            Refusal::MultipleTokens | Refusal::Unreadable => 400,
            Refusal::Unauthorized { .. }
            | Refusal::InvalidDpopProof { .. }
            | Refusal::StepUpRequired { .. }
            | Refusal::UseDpopNonce { .. } => 401,
            Refusal::ResourceMetadata { .. } => 200,
            Refusal::Forbidden { .. }
            | Refusal::ClientCertificateRequired
            | Refusal::IpDenied
            | Refusal::CorsDenied => 403,
            Refusal::CorsPreflight { .. } => 204,
            Refusal::RedirectToHttps { .. } => 308,
            Refusal::RateLimited { .. }
            | Refusal::TooManyFailedAttempts { .. }
            | Refusal::TooManyWaiting => 429,
            Refusal::AuthzDenied { status, .. } => *status,
            Refusal::Overloaded { .. } | Refusal::NoHealthyBackend | Refusal::AuthzUnavailable => {
                503
            }
            Refusal::UpstreamFailed => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::Internal | Refusal::UpstreamTokenFailed => 500,
        }
    }

    /// Whether the connection must end after this answer: the request's framing or size
    /// cannot be trusted, so nothing after it on the connection can be either.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Refusal::Malformed { .. }
                | Refusal::MethodNotSupported
                | Refusal::RequestTimeout { .. }
                | Refusal::BodyTooLarge
                | Refusal::Unreadable
                | Refusal::Overloaded {
                    reason: "listener" | "client",
                    ..
                }
        )
    }

    /// The one mapping from a refusal to its answer. `realm` is the Bearer realm of
    /// `WWW-Authenticate` challenges.
    pub fn answer(&self, realm: &str) -> Answer<'_> {
        let mut a = match self {
            Refusal::Malformed {
                status,
                reason,
                message,
            } => Answer::new(*status, "bad_request", reason, message),
            Refusal::MethodNotSupported => Answer::new(
                405,
                "method_not_allowed",
                "method_connect",
                "this method is not supported",
            ),
            Refusal::RequestTimeout { reason } => Answer::new(
                408,
                "request_timeout",
                reason,
                match *reason {
                    "header_timeout" => "the request header was not received in time",
                    _ => "the request body was not received in time",
                },
            ),
            Refusal::BodyTooLarge => Answer::new(
                413,
                "payload_too_large",
                "body_too_large",
                "the request body is larger than this route accepts",
            ),
            Refusal::NotFound => Answer::new(
                404,
                "not_found",
                "no_route",
                "no route matches this request",
            ),
            Refusal::MethodNotAllowed { allow } => Answer::new(
                405,
                "method_not_allowed",
                "method",
                "the route does not accept this method",
            )
            .header(http::header::ALLOW, allow.clone()),
            Refusal::MultipleTokens => Answer::new(
                400,
                "invalid_request",
                "malformed",
                "more than one token in the request",
            )
            .header(
                http::header::WWW_AUTHENTICATE,
                format!("Bearer realm=\"{realm}\", error=\"invalid_request\""),
            ),
            Refusal::Unauthorized {
                reason,
                detail,
                presented,
                schemes,
            } => {
                let error = presented.then(|| ("invalid_token", reason.as_str()));
                schemes.challenges(
                    Answer::new(401, "unauthorized", reason.as_str(), detail),
                    realm,
                    error,
                )
            }
            Refusal::InvalidDpopProof { detail, schemes } => schemes.challenges(
                Answer::new(401, "unauthorized", "dpop_proof", detail),
                realm,
                Some(("invalid_dpop_proof", detail)),
            ),
            Refusal::Forbidden { policy, scopes } => {
                let mut challenge =
                    format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\"");
                if !scopes.is_empty() {
                    challenge.push_str(&format!(", scope=\"{scopes}\""));
                }
                let mut a = Answer::new(
                    403,
                    "forbidden",
                    "policy",
                    "the policy of this route does not allow this request",
                )
                .header(http::header::WWW_AUTHENTICATE, challenge);
                a.policy = Some(policy);
                a
            }
            Refusal::CorsPreflight { headers } => {
                let mut a = Answer::new(204, "", "cors_preflight", "");
                a.headers = headers.clone();
                a
            }
            Refusal::CorsDenied => Answer::new(
                403,
                "forbidden",
                "cors",
                "this origin, method or header is not allowed by the route's CORS settings",
            ),
            Refusal::IpDenied => Answer::new(
                403,
                "forbidden",
                "ip",
                "requests from this address are not allowed here",
            ),
            Refusal::ClientCertificateRequired => Answer::new(
                403,
                "forbidden",
                "client_certificate",
                "this route requires a client certificate (mutual TLS)",
            ),
            Refusal::RedirectToHttps { location } => Answer::new(
                308,
                "https_required",
                "https_required",
                "this gateway serves https only; the request was not sent",
            )
            .header(http::header::LOCATION, location.clone()),
            Refusal::RateLimited {
                limit,
                retry_after_secs,
                policy_header,
                ratelimit_header,
            } => {
                let mut a = Answer::new(
                    429,
                    "rate_limited",
                    "rate_limit",
                    "too many requests; retry after the time in Retry-After",
                )
                .header(RETRY_AFTER.clone(), retry_after_secs.to_string())
                .header(RATELIMIT_POLICY.clone(), policy_header.to_string())
                .header(RATELIMIT.clone(), ratelimit_header.clone());
                a.limit = Some(limit);
                a
            }
            Refusal::TooManyFailedAttempts { retry_after_secs } => Answer::new(
                429,
                "too_many_failed_attempts",
                "failed_auth_limit",
                "too many failed authentications from this address; retry later",
            )
            .header(RETRY_AFTER.clone(), retry_after_secs.to_string()),
            Refusal::TooManyWaiting => Answer::new(
                429,
                "too_many_requests",
                "client_network_budget",
                "too many of this client's tokens are waiting on their issuer; retry later",
            )
            .header(RETRY_AFTER.clone(), "1".to_owned()),
            Refusal::Overloaded {
                reason,
                message,
                retry_after_secs,
            } => Answer::new(503, "overloaded", reason, message)
                .header(RETRY_AFTER.clone(), retry_after_secs.to_string()),
            Refusal::AuthzDenied {
                status,
                body,
                headers,
            } => {
                let (error, message) = match status {
                    401 => (
                        "unauthorized",
                        "the authorization service refused the caller",
                    ),
                    403 => ("forbidden", "the authorization service denied this request"),
                    _ => ("denied", "the authorization service denied this request"),
                };
                let mut a = Answer::new(*status, error, "ext_authz", message);
                // The service's own body and headers when it gave a body; else the JSON.
                if !body.is_empty() {
                    a.raw = Some(body.clone());
                }
                a.headers.extend(headers.iter().cloned());
                a
            }
            Refusal::AuthzUnavailable => Answer::new(
                503,
                "ext_authz_unavailable",
                "ext_authz_unavailable",
                "the authorization service could not be asked; retry later",
            )
            .header(RETRY_AFTER.clone(), "1".to_owned()),
            Refusal::NoHealthyBackend => Answer::new(
                503,
                "no_healthy_backend",
                "no_healthy_backend",
                "no healthy backend for this route",
            ),
            Refusal::UpstreamFailed => Answer::new(
                502,
                "upstream_error",
                "upstream_error",
                "the upstream could not be reached or failed",
            ),
            Refusal::UpstreamTimeout => Answer::new(
                504,
                "upstream_timeout",
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            Refusal::Unreadable => Answer::new(
                400,
                "bad_request",
                "unreadable",
                "the request could not be read",
            ),
            Refusal::Internal => Answer::new(500, "internal_error", "internal", "internal error"),
            Refusal::UpstreamTokenFailed => Answer::new(
                500,
                "internal_error",
                "upstream_token",
                "the token for the upstream could not be signed",
            ),
            Refusal::ResourceMetadata { body } => {
                let mut a = Answer::new(200, "", "resource_metadata", "")
                    .header(http::header::CONTENT_TYPE, "application/json".to_owned())
                    // A public document that browser-based clients read from other origins.
                    .header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_owned());
                a.raw = Some(body.clone());
                a
            }
            Refusal::StepUpRequired {
                acr_values,
                max_age,
                detail,
                schemes,
            } => {
                let mut params = String::new();
                if !acr_values.is_empty() {
                    params.push_str(&format!(", acr_values=\"{acr_values}\""));
                }
                if let Some(age) = max_age {
                    params.push_str(&format!(", max_age={age}"));
                }
                schemes.challenges_with(
                    Answer::new(401, "unauthorized", "step_up", detail),
                    realm,
                    Some(("insufficient_user_authentication", detail)),
                    &params,
                )
            }
            Refusal::UseDpopNonce { nonce, schemes } => schemes
                .challenges(
                    Answer::new(
                        401,
                        "unauthorized",
                        "dpop_nonce",
                        "the DPoP proof must carry the nonce in DPoP-Nonce",
                    ),
                    realm,
                    Some((
                        "use_dpop_nonce",
                        "the DPoP proof must carry the nonce in DPoP-Nonce",
                    )),
                )
                .header(DPOP_NONCE.clone(), nonce.clone()),
        };
        if self.closes_connection() {
            a = a.header(http::header::CONNECTION, "close".to_owned());
        }
        a
    }
}

/// An answer ready to write: status, JSON body fields and extra headers.
pub struct Answer<'a> {
    pub status: u16,
    /// A stable machine-readable code, e.g. `not_found`, `unauthorized`.
    pub error: &'a str,
    /// The reason from a fixed set (`expired`, `signature`, `policy`, `no_route`, ...):
    /// every answer has one, so a client can always tell refusals apart by it.
    pub reason: &'a str,
    pub message: &'a str,
    /// For 403: the policy that denied.
    pub policy: Option<&'a str>,
    /// For 429: the limit that refused.
    pub limit: Option<&'a str>,
    pub headers: Vec<(HeaderName, String)>,
    /// A body written as is instead of the JSON one (an external authorization service's
    /// denial, whose `content-type` is among `headers`).
    pub raw: Option<Bytes>,
}

impl<'a> Answer<'a> {
    fn new(status: u16, error: &'a str, reason: &'a str, message: &'a str) -> Answer<'a> {
        Answer {
            status,
            error,
            reason,
            message,
            policy: None,
            limit: None,
            headers: Vec::new(),
            raw: None,
        }
    }

    fn header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Points every challenge to the route's protected-resource metadata (RFC 9728 §5.1:
    /// `resource_metadata`), so that a client can find how to get a token.
    pub fn point_to_metadata(&mut self, url: &str) {
        for (name, value) in &mut self.headers {
            if *name == http::header::WWW_AUTHENTICATE {
                value.push_str(&format!(", resource_metadata=\"{url}\""));
            }
        }
    }

    /// The JSON body; `request_id` is left out when there is none (answers written before
    /// a request was parsed).
    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.error.into());
        body.insert("reason".into(), self.reason.into());
        if let Some(p) = self.policy {
            body.insert("policy".into(), p.into());
        }
        if let Some(l) = self.limit {
            body.insert("limit".into(), l.into());
        }
        body.insert("message".into(), self.message.into());
        if let Some(id) = request_id {
            body.insert("request_id".into(), id.into());
        }
        serde_json::to_vec(&body).expect("a JSON object of strings serialises")
    }

    /// Writes the answer on the session, with `Content-Length` and the request id (these
    /// answers bypass `response_filter`); a `HEAD` request gets the header only.
    pub async fn send(self, session: &mut Session, request_id: &HeaderValue) -> Result<()> {
        if session.is_http2() && is_grpc(session.req_header()) && self.status != 204 {
            return self.send_grpc(session, request_id).await;
        }
        if self.status == 204 {
            // A preflight's answer: headers only.
            let mut resp = ResponseHeader::build(204, Some(2 + self.headers.len()))?;
            resp.insert_header(X_REQUEST_ID.clone(), request_id.clone())?;
            for (name, value) in self.headers {
                resp.append_header(name, value)?;
            }
            return session.write_response_header(Box::new(resp), true).await;
        }
        let raw = self.raw.is_some();
        let body = match &self.raw {
            Some(raw) => raw.to_vec(),
            None => self.body(Some(request_id.to_str().unwrap_or(""))),
        };
        let mut resp = ResponseHeader::build(self.status, Some(4 + self.headers.len()))?;
        if !raw {
            resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(X_REQUEST_ID.clone(), request_id.clone())?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        for (name, value) in self.headers {
            // Appended: a route taking Bearer and DPoP challenges with both (RFC 9110 §11.6.1).
            resp.append_header(name, value)?;
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// The answer to a gRPC call: HTTP 200 and trailers-only (one HEADERS frame ending the
    /// stream) with `grpc-status` and a percent-encoded `grpc-message` (the gRPC over HTTP/2
    /// spec's "Trailers-Only" response), so that a gRPC client sees `UNAUTHENTICATED`, not
    /// `UNKNOWN`. The answer's headers (`WWW-Authenticate`, `Retry-After`, CORS) are kept as
    /// metadata.
    async fn send_grpc(self, session: &mut Session, request_id: &HeaderValue) -> Result<()> {
        let mut resp = ResponseHeader::build(200, Some(4 + self.headers.len()))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
        resp.insert_header("grpc-status", grpc_code(self.status).to_string())?;
        resp.insert_header(
            "grpc-message",
            grpc_message(&format!("{} ({})", self.message, self.reason)),
        )?;
        resp.insert_header(X_REQUEST_ID.clone(), request_id.clone())?;
        for (name, value) in self.headers {
            // The answer's own type and status are the ones above (an authorization
            // service's denial names its body's type).
            if name == http::header::CONTENT_TYPE || name.as_str().starts_with("grpc-") {
                continue;
            }
            resp.append_header(name, value)?;
        }
        // Pingora's `Session::write_response_header` never ends an HTTP/2 stream with its
        // HEADERS frame (an empty DATA frame follows), which a gRPC client reads as headers
        // without trailers: `UNKNOWN`. The stream is ended by the HEADERS frame itself.
        match session.as_downstream_mut() {
            pingora_core::protocols::http::ServerSession::H2(h2) => {
                h2.write_response_header(Box::new(resp), true)
            }
            _ => session.write_response_header(Box::new(resp), true).await,
        }
    }

    /// The answer as HTTP/1.1 bytes, for the connection guard, which answers before Pingora
    /// has a session (and so before there is a request id).
    pub fn to_http1(&self) -> Vec<u8> {
        let body = self.body(None);
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&body);
        out
    }
}

/// A gRPC call: `content-type` `application/grpc` or `application/grpc+…` (gRPC-Web, whose
/// trailers travel in the body, is not one).
pub fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim();
            let (base, rest) = ct.split_at(ct.len().min(16));
            base.eq_ignore_ascii_case("application/grpc")
                && (rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
        })
}

/// The gRPC status code for an answer's HTTP status: 16 UNAUTHENTICATED, 7
/// PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 12 UNIMPLEMENTED (no route),
/// 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED, 13 INTERNAL, else 2 UNKNOWN.
pub fn grpc_code(status: u16) -> u8 {
    match status {
        401 => 16,
        403 => 7,
        413 | 429 => 8,
        502..=504 => 14,
        404 | 405 => 12,
        400 | 414 | 431 => 3,
        408 => 4,
        500 => 13,
        _ => 2,
    }
}

/// `grpc-message` as the gRPC spec encodes it: printable ASCII but `%` as is, every other
/// byte of the UTF-8 text as `%XX`.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_end_the_connection_say_so() {
        let r = Refusal::Malformed {
            status: 431,
            reason: "too_many_headers",
            message: "m",
        };
        let raw = String::from_utf8(r.answer("r").to_http1()).unwrap();
        assert!(
            raw.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{raw}"
        );
        assert!(raw.contains("\r\nconnection: close\r\n"), "{raw}");
        let body: serde_json::Value =
            serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "bad_request", "reason": "too_many_headers", "message": "m"})
        );
        assert!(!Refusal::NotFound
            .answer("r")
            .headers
            .iter()
            .any(|(n, _)| n == http::header::CONNECTION));
    }

    #[test]
    fn the_challenge_names_the_reason_only_when_a_token_was_presented() {
        let challenge = |presented| {
            Refusal::Unauthorized {
                reason: Reason::Expired,
                detail: "d",
                presented,
                schemes: Schemes::Bearer,
            }
            .answer("api")
            .headers[0]
                .1
                .clone()
        };
        assert_eq!(challenge(false), "Bearer realm=\"api\"");
        assert_eq!(
            challenge(true),
            "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"expired\""
        );
    }
}
