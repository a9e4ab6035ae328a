//! The runtime snapshot: a validated config compiled once into what requests read (the
//! route matcher, the clusters), immutable and swapped whole through `ArcSwap`.
//!
//! A request loads the current snapshot once and keeps that `Arc` to its end, so a reload
//! never changes the rules under a request in flight.

use crate::identity::auth::Authenticator;
use crate::identity::keys::Provider;
use crate::limits::LimitRuntime;
use crate::request::respond::Schemes;
use crate::telemetry::metrics::{RequestCounters, METRICS};
use crate::upstream::cluster::Cluster;
use pingora_http::RequestHeader;
use prometheus::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_config::{AuthMode, Config, ConfigError, PathMatch, TokenSource};
use tollgate_router::{RouteSpec, Router};

/// A route ready for requests.
pub struct RouteRuntime {
    pub name: Arc<str>,
    /// Where its requests go: [`crate::upstream::split::Targets::choose`] after authentication.
    pub targets: crate::upstream::split::Targets,
    /// A sampled share copied to a shadow cluster.
    pub mirror: Option<crate::upstream::split::Mirror>,
    /// What an idempotent request is retried on, besides connect failures.
    pub retry_on: tollgate_config::RetryOn,
    /// The prefix removed from the path sent upstream (without a trailing `/`).
    pub strip_prefix: Option<Box<str>>,
    /// `path_case: insensitive`: the route matched the path ignoring letter case, and
    /// `strip_prefix` removes its prefix in whatever case the request wrote it.
    pub case_insensitive: bool,
    /// `tollgate_request_duration_seconds{route}`, resolved once.
    pub duration: Histogram,
    pub requests: RequestCounters,
    pub auth: AuthMode,
    /// The providers whose tokens this route accepts.
    pub providers: Vec<Arc<Provider>>,
    /// Where to look for a token: the union of the providers' sources.
    pub token_sources: Vec<TokenSource>,
    pub keep_authorization: bool,
    pub policy: Option<Arc<tollgate_policy::Policy>>,
    /// `ext_authz`: the external authorization service asked after RBAC.
    pub ext_authz: Option<Arc<crate::authz::ext::Service>>,
    /// `tollgate_rbac_decisions_total` for allow, deny, shadow_deny, resolved once
    /// (only for routes with a policy).
    pub rbac_counters: Option<[prometheus::IntCounter; 3]>,
    pub limits: Vec<LimitRuntime>,
    /// Request body size in bytes; larger → 413.
    pub max_body: u64,
    /// The route's `ip_rules`, checked after the global ones, before authentication.
    pub ip_rules: tollgate_config::IpRules,
    /// CORS: the route's own, else `server.http.cors`.
    pub cors: Option<Arc<tollgate_config::Cors>>,
    /// `headers`: the route's header rules.
    pub headers: tollgate_config::HeaderRules,
    /// `client_certificate: required`.
    pub require_client_certificate: bool,
    /// `require_certificate_binding` on the route (a provider may also require it).
    pub require_certificate_binding: bool,
    /// `dpop` on the route (a provider may ask for more).
    pub dpop: tollgate_config::DpopMode,
    /// The `Authorization` schemes taken here (DPoP when the route or one of its providers
    /// takes it), which its 401s challenge for; fixed when the snapshot is compiled.
    pub schemes: crate::request::respond::Schemes,
    /// `upstream_token`: the gateway's minter and what to mint.
    pub upstream_token: Option<crate::identity::mint::RouteTokens>,
    /// `resource`: the protected resource (RFC 9728) whose tokens this route takes.
    pub resource: Option<tollgate_config::Resource>,
    /// `step_up` (RFC 9470), and its `acr` values joined for the challenge.
    pub step_up: Option<tollgate_config::StepUp>,
    pub step_up_acr: Arc<str>,
}

/// The schemes a route with `dpop` and `providers` takes: Bearer alone without DPoP anywhere,
/// DPoP alone where the route or every provider requires it, else both.
fn schemes(dpop: tollgate_config::DpopMode, providers: &[Arc<Provider>]) -> Schemes {
    use tollgate_config::DpopMode;
    let accepts = dpop != DpopMode::Off || providers.iter().any(|p| p.dpop != DpopMode::Off);
    let all_require = dpop == DpopMode::Required
        || (!providers.is_empty() && providers.iter().all(|p| p.dpop == DpopMode::Required));
    match (accepts, all_require) {
        (false, _) => Schemes::Bearer,
        (true, false) => Schemes::BearerAndDpop,
        (true, true) => Schemes::Dpop,
    }
}

/// `sources` without repeats, in their first order.
fn distinct_sources<'a>(sources: impl Iterator<Item = &'a TokenSource>) -> Vec<TokenSource> {
    let mut out: Vec<TokenSource> = Vec::new();
    for s in sources {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

impl RouteRuntime {
    /// Whether `Authorization: DPoP` is read on this route.
    pub fn accepts_dpop(&self) -> bool {
        self.schemes != Schemes::Bearer
    }

    /// Removes the route's `strip_prefix` from the upstream request's path (in any letter
    /// case when the route ignores case), keeping the query; the rest starts with `/`.
    pub fn strip_prefix_from(&self, upstream: &mut RequestHeader) -> Result<(), http::Error> {
        let Some(prefix) = self.strip_prefix.as_deref() else {
            return Ok(());
        };
        let uri = &upstream.uri;
        let path = uri.path();
        let rest = match path.get(..prefix.len()) {
            Some(head) if head == prefix => &path[prefix.len()..],
            Some(head) if self.case_insensitive && head.eq_ignore_ascii_case(prefix) => {
                &path[prefix.len()..]
            }
            _ => path,
        };
        let rest = if rest.starts_with('/') { rest } else { "/" };
        let new = match uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
        };
        let new: http::Uri = new.parse().map_err(http::Error::from)?;
        upstream.set_uri(new);
        Ok(())
    }
}

pub struct RuntimeSnapshot {
    pub router: Router<Arc<RouteRuntime>>,
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    pub auth: Arc<Authenticator>,
    pub access_log: bool,
    /// `logging.access_log_sample` and `logging.subject`.
    pub access_log_sample: f64,
    pub subject_in_log: tollgate_config::SubjectInLog,
    /// `server.http`: normalisation options and client limits.
    pub http: tollgate_config::HttpSettings,
    /// Headers removed from every client request (identity, forwarding, override).
    pub strip: crate::request::edge::StripSet,
    /// `listen.tls`, when the HTTPS listener is configured.
    pub tls: Option<TlsRuntime>,
    /// `auth.signing_keys`, ready to mint.
    pub minter: Option<Arc<crate::identity::mint::Minter>>,
    /// The protected resources' metadata documents (RFC 9728).
    pub resources: crate::request::resource::Resources,
    /// `auth.shared_signals`: the receiver of pushed security events (metrics listener).
    pub signals: Option<Arc<crate::identity::signals::Receiver>>,
    /// What the admin view shows of this snapshot's config, set when it is loaded from its
    /// file (`ops::serve::load`).
    pub source: Option<Arc<Source>>,
}

/// A loaded config as the admin view shows it.
pub struct Source {
    /// Increases with every config loaded by this process (1: the first).
    pub generation: u64,
    pub file: String,
    /// SHA-256 of the file's text, hex.
    pub sha256: String,
    pub loaded_unix: u64,
    /// The file as JSON, secrets removed (`util::redact::config`).
    pub redacted: serde_json::Value,
    pub config: Config,
    /// `metrics.admin.bearer_file`'s token, read at load.
    pub admin_bearer: Option<Vec<u8>>,
}

/// What requests need of `listen.tls`, and the material for the listener's next handshakes.
pub struct TlsRuntime {
    /// Certificates and client CAs, read and checked: the listener swaps them in once this
    /// snapshot is in use.
    pub material: Arc<crate::tls::material::Material>,
    pub client_cert_headers: tollgate_config::ClientCertHeaders,
    /// `Strict-Transport-Security` for answers on the HTTPS listener.
    pub hsts: Option<http::HeaderValue>,
    /// The plain listener's requests are redirected to this port on https.
    pub redirect_to: Option<u16>,
}

impl RuntimeSnapshot {
    /// Compiles a validated config. What only fails here (a backend name that does not
    /// resolve) is reported like a config problem, with its path.
    pub fn compile(config: &Config) -> Result<RuntimeSnapshot, ConfigError> {
        let mut problems = Vec::new();
        let mut clusters = HashMap::new();
        for u in &config.upstreams {
            match Cluster::build(u) {
                Ok(c) => {
                    clusters.insert(c.name.clone(), Arc::new(c));
                }
                Err(problem) => problems.push(problem),
            }
        }
        let auth = match Authenticator::build(&config.auth) {
            Ok(a) => Some(Arc::new(a)),
            Err(errs) => {
                problems.extend(errs);
                None
            }
        };
        let mut ext_authz = HashMap::new();
        for (name, service) in &config.auth.ext_authz {
            match crate::authz::ext::Service::build(name, service) {
                Ok(s) => {
                    ext_authz.insert(name.clone(), Arc::new(s));
                }
                Err(message) => problems.push(tollgate_config::Problem {
                    path: format!("auth.ext_authz.{name}.ca_file"),
                    message,
                }),
            }
        }
        let signals = match &config.auth.shared_signals {
            Some(s) => {
                match crate::identity::signals::Receiver::build(s, config.auth.revocation.as_ref())
                {
                    Ok(r) => Some(Arc::new(r)),
                    Err(errs) => {
                        problems.extend(errs);
                        None
                    }
                }
            }
            None => None,
        };
        let tls = tls_runtime(config, &mut problems);
        let minter = minter(config, &mut problems);
        let Some(auth) = auth.filter(|_| problems.is_empty()) else {
            return Err(ConfigError { problems });
        };
        let identity = identity_headers(&auth, tls.as_ref());
        let shared = Shared {
            config,
            clusters: &clusters,
            auth: &auth,
            minter: minter.as_ref(),
            // A shadow never gets a token from any source a provider reads, whichever route
            // it came in on (an `auth: none` route's caller may carry another route's cookie).
            every_token_source: distinct_sources(
                config.auth.providers.iter().flat_map(|p| &p.token_sources),
            ),
            identity: &identity,
            ext_authz: &ext_authz,
        };
        let mut router = Router::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let route = Arc::new(shared.route(r));
            routes.push(route.clone());
            let methods: Vec<&str> = r.methods.iter().map(String::as_str).collect();
            router
                .insert(
                    RouteSpec::new(r.host.as_deref(), &r.path, r.path_match, &methods)
                        .case_insensitive(r.case_insensitive),
                    route,
                )
                .expect("routes were validated against the same router");
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        // A minted token's header is the gateway's: a client's copy never passes, even
        // where no token is minted (an anonymous caller on an `auth: optional` route).
        // `Authorization` is left to the routes' own rule (`keep_authorization`).
        let minted_headers = config
            .routes
            .iter()
            .filter_map(|r| r.upstream_token.as_ref())
            .map(|t| t.header.clone())
            .filter(|h| *h != http::header::AUTHORIZATION);
        // What an external authorization service sets upstream is the gateway's too: a
        // client's copy never passes, whether the service set it this time or not.
        let authz_headers = config
            .auth
            .ext_authz
            .values()
            .flat_map(|s| s.upstream_headers.iter().cloned());
        let gateway_headers: Vec<http::HeaderName> = identity
            .into_iter()
            .chain(minted_headers)
            .chain(authz_headers)
            .collect();
        let strip = crate::request::edge::strip_set(&gateway_headers, &config.server.http);
        let resources = crate::request::resource::Resources::build(routes.iter().filter_map(|r| {
            Some(crate::request::resource::RouteFacts {
                resource: r.resource.as_ref()?,
                providers: &r.providers,
                policy: r.policy.as_deref(),
                schemes: r.schemes,
                require_certificate_binding: r.require_certificate_binding,
            })
        }));
        Ok(RuntimeSnapshot {
            router,
            clusters,
            auth,
            access_log: config.logging.access_log,
            access_log_sample: config.logging.access_log_sample,
            subject_in_log: config.logging.subject.clone(),
            http: config.server.http.clone(),
            strip,
            tls,
            minter,
            resources,
            signals,
            source: None,
        })
    }

    /// Starts the background work of the snapshot (health checks, key refresh); each loop
    /// ends when the snapshot that owns its subject is dropped.
    pub fn spawn_background(&self) {
        for c in self.clusters.values() {
            c.spawn_background();
        }
        self.auth.spawn_refresh();
        if let Some(signals) = &self.signals {
            signals.spawn_refresh();
        }
    }
}

/// What every route of one snapshot is compiled with.
struct Shared<'a> {
    config: &'a Config,
    clusters: &'a HashMap<Arc<str>, Arc<Cluster>>,
    auth: &'a Authenticator,
    minter: Option<&'a Arc<crate::identity::mint::Minter>>,
    every_token_source: Vec<TokenSource>,
    /// The identity headers the gateway writes ([`identity_headers`]).
    identity: &'a [http::HeaderName],
    ext_authz: &'a HashMap<String, Arc<crate::authz::ext::Service>>,
}

impl Shared<'_> {
    /// A route's mirror: the shadow cluster, and what a copy may carry.
    fn mirror(
        &self,
        r: &tollgate_config::Route,
        m: &tollgate_config::Mirror,
    ) -> crate::upstream::split::Mirror {
        let shadow = crate::upstream::split::ShadowCopy {
            token_sources: self.every_token_source.clone(),
            // What an authorization service set is identity too: a shadow gets it only
            // with `identity: true`.
            identity_headers: self
                .identity
                .iter()
                .cloned()
                .chain(
                    self.config
                        .auth
                        .ext_authz
                        .values()
                        .flat_map(|s| s.upstream_headers.iter().cloned()),
                )
                .collect(),
            minted_header: r.upstream_token.as_ref().map(|t| t.header.clone()),
            identity: m.identity,
            cookies: m.cookies,
            tokens: m.upstream_token.clone().map(|spec| {
                let minter = self
                    .minter
                    .cloned()
                    .expect("validated: upstream_token needs signing_keys");
                crate::identity::mint::RouteTokens::new(&format!("{}.mirror", r.name), minter, spec)
            }),
        };
        crate::upstream::split::Mirror::new(
            &r.name,
            self.clusters[m.upstream.as_str()].clone(),
            m.percent,
            shadow,
        )
    }

    /// One route: its targets and mirror, providers, limits, policy and counters.
    fn route(&self, r: &tollgate_config::Route) -> RouteRuntime {
        let targets = crate::upstream::split::Targets::new(
            r.targets
                .iter()
                .map(|t| crate::upstream::split::Target {
                    cluster: self.clusters[t.upstream.as_str()].clone(),
                    weight: t.weight,
                    when: t.when.clone(),
                })
                .collect(),
        );
        let mirror = r.mirror.as_ref().map(|m| self.mirror(r, m));
        let providers: Vec<Arc<Provider>> = r
            .providers
            .iter()
            .map(|name| {
                self.auth
                    .provider(name)
                    .expect("validated provider name")
                    .clone()
            })
            .collect();
        let schemes = schemes(r.dpop, &providers);
        let token_sources = distinct_sources(providers.iter().flat_map(|p| &p.token_sources));
        let limits = r
            .rate_limits
            .iter()
            .map(|l| LimitRuntime::build(&r.name, l))
            .collect();
        let policy = r.policy.as_ref().map(|p| self.config.policies[p].clone());
        let rbac_counters = r.policy.as_deref().map(|p| {
            ["allow", "deny", "shadow_deny"].map(|decision| {
                METRICS
                    .rbac_decisions
                    .with_label_values(&[&r.name, p, decision])
            })
        });
        RouteRuntime {
            policy,
            ext_authz: r.ext_authz.as_ref().map(|n| self.ext_authz[n].clone()),
            rbac_counters,
            limits,
            name: r.name.as_str().into(),
            targets,
            mirror,
            retry_on: r.retry_on.clone(),
            strip_prefix: (r.strip_prefix && r.path_match == PathMatch::Prefix)
                .then(|| r.path.trim_end_matches('/').into()),
            case_insensitive: r.case_insensitive,
            duration: METRICS.request_duration.with_label_values(&[&r.name]),
            requests: RequestCounters::new(r.name.as_str().into()),
            auth: r.auth,
            providers,
            token_sources,
            keep_authorization: r.keep_authorization,
            max_body: r.max_body,
            ip_rules: r.ip_rules.clone(),
            headers: r.headers.clone(),
            cors: r
                .cors
                .clone()
                .or_else(|| self.config.server.http.cors.clone()),
            require_client_certificate: r.require_client_certificate,
            require_certificate_binding: r.require_certificate_binding,
            dpop: r.dpop,
            schemes,
            upstream_token: r.upstream_token.clone().map(|spec| {
                let minter = self
                    .minter
                    .cloned()
                    .expect("validated: upstream_token needs signing_keys");
                crate::identity::mint::RouteTokens::new(&r.name, minter, spec)
            }),
            resource: r.resource.clone(),
            step_up: r.step_up.clone(),
            step_up_acr: r
                .step_up
                .as_ref()
                .map_or_else(String::new, |s| s.acr.join(" "))
                .into(),
        }
    }
}

/// The HTTPS listener's certificates and settings, when it is on.
fn tls_runtime(
    config: &Config,
    problems: &mut Vec<tollgate_config::Problem>,
) -> Option<TlsRuntime> {
    match (&config.listen.tls, config.listen.https) {
        (Some(tls), Some(https)) => match crate::tls::material::Material::load(tls) {
            Ok(material) => Some(TlsRuntime {
                material: Arc::new(material),
                client_cert_headers: tls.client_cert_headers.clone(),
                hsts: tls
                    .hsts
                    .as_deref()
                    .and_then(|v| http::HeaderValue::from_str(v).ok()),
                redirect_to: tls.redirect_http.then_some(https.port()),
            }),
            Err(errs) => {
                problems.extend(errs);
                None
            }
        },
        _ => None,
    }
}

/// The gateway's signing keys, when `auth.signing_keys` is set.
fn minter(
    config: &Config,
    problems: &mut Vec<tollgate_config::Problem>,
) -> Option<Arc<crate::identity::mint::Minter>> {
    match config
        .auth
        .signing_keys
        .as_ref()
        .map(crate::identity::mint::Minter::build)
    {
        None => None,
        Some(Ok(m)) => Some(Arc::new(m)),
        Some(Err(errs)) => {
            problems.extend(errs);
            None
        }
    }
}

/// The headers the gateway writes for the caller: `forward_claims` and the client
/// certificate's. Removed from every client request, and from a shadow's copy unless
/// `mirror.identity`.
fn identity_headers(auth: &Authenticator, tls: Option<&TlsRuntime>) -> Vec<http::HeaderName> {
    auth.identity_headers
        .iter()
        .cloned()
        .chain(
            tls.iter()
                .flat_map(|t| {
                    [
                        &t.client_cert_headers.subject,
                        &t.client_cert_headers.sha256,
                    ]
                })
                .flatten()
                .cloned(),
        )
        .collect()
}
