//! External authorization (`auth.ext_authz`, `routes[].ext_authz`) in Envoy ext_authz's
//! HTTP protocol, so that services written for Envoy (OPA's Envoy plugin in HTTP mode, an
//! in-house policy service) work unchanged: for each request, a request with the same
//! method to the service's URL with the request's path and query appended, carrying the
//! chosen client headers, the verified claims (base64url JSON in one header), the request
//! id and the client address, and no body. A 2xx answer allows, and its chosen headers are
//! set on the upstream request; any other answer denies with its status, body and chosen
//! headers.
//!
//! The service is a network wait: it takes a place in its own in-flight budget and in its
//! client's (`preauth::admit_network`), never a signature check's. When it cannot be asked
//! (connect error, `timeout`, an open circuit) the request is refused with 503
//! `ext_authz_unavailable` (fail closed), or let through with `failure_mode_allow`. Only
//! those count toward the circuit breaker: any answer is a decision (a 5xx denies with its
//! status; a body over 64 KiB is replaced by the gateway's JSON; a status outside 100-599
//! is a 403).
//! Decisions (2xx and 4xx) may be cached per caller (`iss` and `sub`), route and method for
//! `cache_ttl`.

use crate::identity::preauth::{Brakes, PreAuthRefusal, PREAUTH};
use crate::telemetry::metrics::METRICS;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The longest denial body passed on.
const MAX_BODY: usize = 64 * 1024;

/// What the service decided.
#[derive(Debug)]
pub enum Decision {
    /// 2xx: go on, with these headers set on the upstream request.
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Any other status: this answer goes to the client.
    Deny {
        status: u16,
        body: Bytes,
        /// `content-type` and the service's `client_headers`.
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// Why no decision was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The service could not be asked, or its circuit is open.
    Unavailable,
    /// The service's or the client's network budget is spent.
    Budget(PreAuthRefusal),
}

/// The request the service is asked about.
pub struct Asked<'a> {
    /// The request as the upstream will receive it: canonical, its credentials removed,
    /// `strip_prefix` done.
    pub req: &'a RequestHeader,
    pub route: &'a str,
    /// The verified claims; none for an anonymous caller.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub client: Option<IpAddr>,
    pub request_id: &'a str,
    pub brakes: &'a Brakes,
    /// False for `explain`: nothing is counted or cached.
    pub enforce: bool,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

type CacheKey = (String, Arc<str>, http::Method);

/// One `auth.ext_authz` service.
pub struct Service {
    pub name: Arc<str>,
    config: tollgate_config::ExtAuthz,
    ca: Option<Arc<pingora_core::protocols::tls::CaType>>,
    connector: Connector,
    breaker: Mutex<Breaker>,
    cache: Option<moka::sync::Cache<CacheKey, Arc<Decision>>>,
    waits: AtomicUsize,
}

impl Service {
    /// Builds the service (reading its CA file: a config problem when it fails).
    pub fn build(name: &str, config: &tollgate_config::ExtAuthz) -> Result<Service, String> {
        let ca = config
            .ca_file
            .as_deref()
            .map(crate::tls::pem::load_ca)
            .transpose()?;
        let cache = config.cache_ttl.map(|ttl| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_size)
                .time_to_live(ttl)
                .build()
        });
        Ok(Service {
            name: name.into(),
            config: config.clone(),
            ca,
            connector: Connector::new(None),
            breaker: Mutex::new(Breaker::default()),
            cache,
            waits: AtomicUsize::new(0),
        })
    }

    fn count(&self, enforce: bool, result: &str) {
        if enforce {
            METRICS
                .ext_authz_checks
                .with_label_values(&[&self.name, result])
                .inc();
        }
    }

    /// Whether requests go on when the service cannot be asked.
    pub fn failure_mode_allow(&self) -> bool {
        self.config.failure_mode_allow
    }

    /// Asks the service (or its cache) about `asked`.
    pub async fn check(&self, asked: &Asked<'_>) -> Result<Arc<Decision>, Failure> {
        let key = self.cache.as_ref().and_then(|_| {
            let claims = asked.claims?;
            let sub = claims.get("sub")?.as_str()?;
            let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
            Some((
                format!("{iss}\0{sub}"),
                Arc::<str>::from(asked.route),
                asked.req.method.clone(),
            ))
        });
        if let (Some(cache), Some(key)) = (&self.cache, &key) {
            if let Some(hit) = cache.get(key) {
                self.count(asked.enforce, "cached");
                return Ok(hit);
            }
        }
        {
            let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            match b.open_until {
                Some(t) if Instant::now() < t => {
                    drop(b);
                    self.count(asked.enforce, "circuit_open");
                    return Err(Failure::Unavailable);
                }
                Some(_) => b.open_until = None,
                None => {}
            }
        }
        let brakes = Brakes {
            max_network_waits: self.config.max_in_flight,
            ..*asked.brakes
        };
        let permit = PREAUTH
            .admit_network(
                &self.waits,
                asked.client,
                &brakes,
                crate::util::clock::now_ns(),
            )
            .map_err(Failure::Budget)?;
        let started = Instant::now();
        let answer = tokio::time::timeout(self.config.timeout, self.call(asked))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {:?}", self.config.timeout)));
        drop(permit);
        if asked.enforce {
            METRICS
                .ext_authz_duration
                .with_label_values(&[&self.name])
                .observe(started.elapsed().as_secs_f64());
        }
        // Only a service that could not answer counts toward the breaker: a 5xx is its
        // answer (a denial), and counting it would let a breaker opened by answers turn a
        // `failure_mode_allow` service's denials into passes.
        let failed = answer.is_err();
        {
            let mut b = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
            if failed {
                b.failures += 1;
                if b.failures >= self.config.failure_threshold {
                    b.open_until = Some(Instant::now() + self.config.open_for);
                    b.failures = 0;
                }
            } else {
                b.failures = 0;
            }
        }
        let decision = match answer {
            Ok(d) => Arc::new(d),
            Err(error) => {
                self.count(asked.enforce, "error");
                tracing::warn!(service = %self.name, %error, "external authorization failed");
                return Err(Failure::Unavailable);
            }
        };
        let result = match &*decision {
            Decision::Allow { .. } => "allow",
            Decision::Deny { status, .. } if *status >= 500 => "deny_5xx",
            Decision::Deny { .. } => "deny",
        };
        self.count(asked.enforce, result);
        if let (Some(cache), Some(key), true, false) = (&self.cache, key, asked.enforce, failed) {
            cache.insert(key, decision.clone());
        }
        Ok(decision)
    }

    async fn call(&self, asked: &Asked<'_>) -> Result<Decision, String> {
        use base64::Engine;
        let req = asked.req;
        let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!("{}{target}", self.config.url);
        let mut headers: Vec<(&str, Vec<u8>)> = Vec::new();
        for name in &self.config.send_headers {
            for value in req.headers.get_all(name) {
                headers.push((name.as_str(), value.as_bytes().to_vec()));
            }
        }
        let claims = asked
            .claims
            .map(|c| serde_json::to_vec(c).expect("claims serialise"))
            .unwrap_or_else(|| b"{}".to_vec());
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
        headers.push((self.config.claims_header.as_str(), claims.into_bytes()));
        headers.push(("x-request-id", asked.request_id.as_bytes().to_vec()));
        headers.push(("x-tollgate-route", asked.route.as_bytes().to_vec()));
        if let Some(host) = req.uri.host().or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        }) {
            headers.push(("x-forwarded-host", host.as_bytes().to_vec()));
        }
        if let Some(ip) = asked.client {
            headers.push(("x-forwarded-for", ip.to_string().into_bytes()));
        }
        let borrowed: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let (resp, body) = crate::util::outbound::call(
            &self.connector,
            crate::util::outbound::Call {
                method: req.method.as_str(),
                uri: &uri,
                headers: &borrowed,
                body: None,
                ca: self.ca.as_ref(),
                max_body: MAX_BODY,
                pool: true,
                truncate: true,
            },
        )
        .await?;
        let status = resp.status.as_u16();
        // An answer the service gave is a decision whatever its shape: a body cut at
        // `MAX_BODY` is dropped (the gateway's JSON goes instead), and a status that is no
        // HTTP status is a 403.
        let body = match body {
            crate::util::outbound::Body::Whole(b) => b,
            crate::util::outbound::Body::Cut => Vec::new(),
        };
        let pick = |names: &[HeaderName]| -> Vec<(HeaderName, HeaderValue)> {
            names
                .iter()
                .flat_map(|n| {
                    resp.headers
                        .get_all(n)
                        .iter()
                        .map(move |v| (n.clone(), v.clone()))
                })
                .collect()
        };
        Ok(match status {
            200..=299 => Decision::Allow {
                headers: pick(&self.config.upstream_headers),
            },
            300..=599 => {
                let mut headers = pick(&self.config.client_headers);
                if let Some(ct) = resp.headers.get(http::header::CONTENT_TYPE) {
                    if !body.is_empty() {
                        headers.push((http::header::CONTENT_TYPE, ct.clone()));
                    }
                }
                Decision::Deny {
                    status,
                    body: body.into(),
                    headers,
                }
            }
            _ => Decision::Deny {
                status: 403,
                body: Bytes::new(),
                headers: Vec::new(),
            },
        })
    }
}
