//! Validation of the `auth` section: providers, their key sources and refresh timing,
//! token sources, and the claims forwarded as headers.

use crate::model::{
    ApiKeyFile, Audiences, Auth, ClaimHeader, DpopMode, DpopNonce, DpopSettings, Introspection,
    KeySource, Provider, Refresh, Revocation, RevocationSource, SecretSource, SharedSignals,
    SigningKeyFile, SigningKeys, TokenSource,
};
use crate::problems::{duration, fetch_url_problem, header_name, Problems};
use crate::raw::{
    RawAudiences, RawAuth, RawDiscovery, RawProvider, RawRefresh, RawRevocation, RawSharedSignals,
    RawSigningKeys,
};
use std::collections::HashMap;
use std::time::Duration;

/// Headers that a claim may never be forwarded as: they carry the request's own framing
/// or credentials.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "cookie",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
];

const HMAC_ALGS: &[&str] = &["HS256", "HS384", "HS512"];

pub(crate) fn auth(
    raw: &RawAuth,
    providers: &[(usize, RawProvider)],
    problems: &mut Problems,
) -> Auth {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut issuers: HashMap<(&str, &str), usize> = HashMap::new();
    let mut out = Vec::with_capacity(providers.len());
    for (i, p) in providers {
        let base = format!("auth.providers[{i}]");
        if let Some(first) = names.insert(&p.name, *i) {
            problems.add(
                format!("{base}.name"),
                format!(
                    "duplicate provider name {:?}, first used by auth.providers[{first}]",
                    p.name
                ),
            );
        }
        if p.name.is_empty() {
            problems.add(format!("{base}.name"), "must not be empty");
        }
        // One issuer may have one provider for its JWTs (by keys) and one for its opaque
        // tokens (introspection with `tokens: opaque`), as Keycloak, Auth0, Okta and
        // oidc-provider issue both: a JWT goes to the first by its `iss`, a token that is not
        // a JWT (and carries no `iss`) to the second. Any other pair is ambiguous.
        let introspected = p.kind.as_deref() == Some("introspection");
        let all_tokens = p
            .introspection
            .as_ref()
            .is_some_and(|c| c.tokens.as_deref() == Some("all"));
        let kinds: &[&str] = match (introspected, all_tokens) {
            _ if p.kind.as_deref() == Some("api_key") => &["api_key"],
            (true, true) => &["jwt", "opaque"],
            (true, false) => &["opaque"],
            (false, _) => &["jwt"],
        };
        if p.issuer.is_empty() {
            problems.add(format!("{base}.issuer"), "must not be empty");
        } else {
            let mut reported = false;
            for kind in kinds {
                if let Some(first) = issuers.insert((&p.issuer, kind), *i) {
                    if !reported {
                        problems.add(
                            format!("{base}.issuer"),
                            format!(
                                "auth.providers[{first}] has the same issuer for the same tokens \
                                 ({kind}): an issuer may have one provider for its JWTs and one \
                                 (type: introspection, tokens: opaque) for its opaque tokens"
                            ),
                        );
                        reported = true;
                    }
                }
            }
        }
        out.push(provider(&base, p, problems));
    }
    let mut forward_claims = Vec::new();
    let mut headers: HashMap<String, usize> = HashMap::new();
    for (i, c) in raw.forward_claims.iter().flatten().enumerate() {
        let base = format!("auth.forward_claims[{i}]");
        let claim = tollgate_policy::ClaimPath::parse(&c.claim);
        if claim.is_none() {
            problems.add(
                format!("{base}.claim"),
                "must be a dotted path such as sub or realm_access.roles",
            );
        }
        match header_name(&c.header) {
            Some(h) if RESERVED_HEADERS.contains(&h.as_str()) => problems.add(
                format!("{base}.header"),
                format!("{} is reserved", c.header),
            ),
            Some(h) => {
                if let Some(first) = headers.insert(h.clone(), i) {
                    problems.add(
                        format!("{base}.header"),
                        format!("already used by auth.forward_claims[{first}]"),
                    );
                }
                if let (Some(claim), Ok(header)) = (claim, http::HeaderName::try_from(h)) {
                    forward_claims.push(ClaimHeader { claim, header });
                }
            }
            None => problems.add(
                format!("{base}.header"),
                format!("invalid header name {:?}", c.header),
            ),
        }
    }
    let cache_size = raw.cache_size.unwrap_or(100_000);
    let failed_auth_limit = match &raw.failed_auth_limit {
        None => default_failed_limit(),
        Some(l) => {
            let rate = tollgate_ratelimit::Rate::parse(&l.rate).map_err(|e| {
                problems.add("auth.failed_auth_limit.rate", e.to_string());
            });
            let burst = l.burst.unwrap_or(50);
            match rate.map(|r| tollgate_ratelimit::Gcra::new(r, burst)) {
                Ok(Ok(g)) => g,
                Ok(Err(e)) => {
                    problems.add("auth.failed_auth_limit.burst", e.to_string());
                    default_failed_limit()
                }
                Err(()) => default_failed_limit(),
            }
        }
    };
    let max_verifications_in_flight = raw.max_verifications_in_flight.unwrap_or(256);
    if max_verifications_in_flight == 0 {
        problems.add("auth.max_verifications_in_flight", "must be at least 1");
    }
    let max_network_waits_in_flight = raw.max_network_waits_in_flight.unwrap_or(64);
    if max_network_waits_in_flight == 0 {
        problems.add("auth.max_network_waits_in_flight", "must be at least 1");
    }
    let max_network_waits_per_client = raw.max_network_waits_per_client.unwrap_or(4);
    if max_network_waits_per_client == 0 {
        problems.add("auth.max_network_waits_per_client", "must be at least 1");
    }
    let revocation = raw
        .revocation
        .as_ref()
        .and_then(|r| revocation(r, problems));
    let signing_keys = raw.signing_keys.as_ref().map(|s| signing_keys(s, problems));
    let dpop = dpop_settings(raw.dpop.as_ref(), problems);
    let ext_authz = crate::ext_authz::services(raw, &forward_claims, problems);
    let shared_signals = raw
        .shared_signals
        .as_ref()
        .map(|s| shared_signals(s, problems));
    Auth {
        shared_signals,
        ext_authz,
        dpop,
        revocation,
        signing_keys,
        failed_auth_limit,
        max_verifications_in_flight,
        max_network_waits_in_flight,
        max_network_waits_per_client,
        providers: out,
        forward_claims,
        cache_size,
        realm: match &raw.realm {
            Some(r) if r.contains(['"', '\\']) || r.chars().any(char::is_control) => {
                problems.add(
                    "auth.realm",
                    "must not contain quotes, backslashes or control characters",
                );
                "tollgate".to_owned()
            }
            Some(r) => r.clone(),
            None => "tollgate".to_owned(),
        },
    }
}

/// `auth.dpop`, with its defaults.
fn dpop_settings(raw: Option<&crate::raw::RawDpop>, problems: &mut Problems) -> DpopSettings {
    let default = DpopSettings::default();
    let Some(raw) = raw else { return default };
    let leeway = match &raw.leeway {
        Some(t) if t.0.trim() == "0" || t.0.trim() == "0s" => Duration::ZERO,
        other => duration(other, "auth.dpop.leeway", default.leeway, problems),
    };
    let replay_cache_size = raw.replay_cache_size.unwrap_or(default.replay_cache_size);
    if replay_cache_size == 0 {
        problems.add("auth.dpop.replay_cache_size", "must be at least 1");
    }
    let mut public_origins = Vec::new();
    for (i, o) in raw.public_origins.iter().flatten().enumerate() {
        match public_origin(o) {
            Ok(origin) => public_origins.push(origin),
            Err(message) => problems.add(format!("auth.dpop.public_origins[{i}]"), message),
        }
    }
    let nonce = match raw.nonce.as_deref() {
        None | Some("off") => {
            if raw.nonce_secret_env.is_some() {
                problems.add("auth.dpop.nonce_secret_env", "only applies with nonce: on");
            }
            None
        }
        Some("on") => {
            let lifetime = duration(
                &raw.nonce_lifetime,
                "auth.dpop.nonce_lifetime",
                Duration::from_secs(300),
                problems,
            );
            match raw.nonce_secret_env.as_deref() {
                Some(var) if !var.is_empty() => Some(DpopNonce {
                    secret: SecretSource::Env(var.to_owned()),
                    lifetime,
                }),
                // A key made up by each process would issue nonces the rest of a fleet
                // refuses, so a client bounced between instances could never pass.
                _ => {
                    problems.add(
                        "auth.dpop.nonce_secret_env",
                        "nonce: on needs the environment variable holding the nonce key, the same on every \
                         instance (e.g. `openssl rand -base64 48`)",
                    );
                    None
                }
            }
        }
        Some(other) => {
            problems.add(
                "auth.dpop.nonce",
                format!("expected off or on, found {other:?}"),
            );
            None
        }
    };
    DpopSettings {
        max_age: duration(&raw.max_age, "auth.dpop.max_age", default.max_age, problems),
        leeway,
        replay_cache_size,
        public_origins,
        nonce,
    }
}

/// An origin clients use, as `scheme://host[:port]` in the form `htu` is compared in.
fn public_origin(o: &str) -> Result<String, &'static str> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or("must be an https:// or http:// origin")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err("must be an origin: scheme and host (and port), no path");
    }
    tollgate_jwt::dpop::normalize_htu(&format!("{o}/"))
        .map(|n| n.trim_end_matches('/').to_owned())
        .ok_or("is not a valid origin")
}

/// `dpop: off | optional | required` of a provider or route.
pub(crate) fn dpop_mode(path: &str, raw: Option<&str>, problems: &mut Problems) -> DpopMode {
    match raw {
        None | Some("off") => DpopMode::Off,
        Some("optional") => DpopMode::Optional,
        Some("required") => DpopMode::Required,
        Some(other) => {
            problems.add(
                path,
                format!("expected off, optional or required, found {other:?}"),
            );
            DpopMode::Off
        }
    }
}

/// `auth.signing_keys`: unique, non-empty kids, and `current` among them. The files are
/// read (and their key types checked) when the gateway compiles the config.
fn signing_keys(s: &RawSigningKeys, problems: &mut Problems) -> SigningKeys {
    if s.issuer.is_empty() {
        problems.add("auth.signing_keys.issuer", "must not be empty");
    }
    if s.keys.is_empty() {
        problems.add(
            "auth.signing_keys.keys",
            "must list at least the current key",
        );
    }
    let mut kids: HashMap<&str, usize> = HashMap::new();
    for (i, k) in s.keys.iter().enumerate() {
        let base = format!("auth.signing_keys.keys[{i}]");
        if k.kid.is_empty() {
            problems.add(format!("{base}.kid"), "must not be empty");
        } else if let Some(first) = kids.insert(&k.kid, i) {
            problems.add(
                format!("{base}.kid"),
                format!("already used by auth.signing_keys.keys[{first}]"),
            );
        }
        if k.file.is_empty() {
            problems.add(format!("{base}.file"), "must not be empty");
        }
    }
    if !s.keys.is_empty() && !kids.contains_key(s.current.as_str()) {
        problems.add(
            "auth.signing_keys.current",
            format!(
                "{:?} is not the kid of a key in auth.signing_keys.keys",
                s.current
            ),
        );
    }
    SigningKeys {
        issuer: s.issuer.clone(),
        current: s.current.clone(),
        keys: s
            .keys
            .iter()
            .map(|k| SigningKeyFile {
                kid: k.kid.clone(),
                file: k.file.clone(),
            })
            .collect(),
    }
}

/// The deny list's source: exactly one of a file and Redis.
fn revocation(r: &RawRevocation, problems: &mut Problems) -> Option<Revocation> {
    let poll = duration(
        &r.poll,
        "auth.revocation.poll",
        Duration::from_secs(1),
        problems,
    );
    let source = match (&r.file, &r.redis) {
        (Some(_), Some(_)) => {
            problems.add("auth.revocation", "give file or redis, not both");
            return None;
        }
        (None, None) => {
            problems.add("auth.revocation", "needs file or redis");
            return None;
        }
        (Some(f), None) if f.is_empty() => {
            problems.add("auth.revocation.file", "must not be empty");
            return None;
        }
        (Some(f), None) => RevocationSource::File(f.clone()),
        (None, Some(redis)) => {
            let server = crate::stores::server(
                "auth.revocation.redis",
                &redis.url,
                &redis.cluster,
                &redis.sentinel,
                problems,
            )?;
            let key = redis
                .key
                .clone()
                .unwrap_or_else(|| "tollgate:revoked".to_owned());
            if key.is_empty() {
                problems.add("auth.revocation.redis.key", "must not be empty");
                return None;
            }
            RevocationSource::Redis { server, key }
        }
    };
    Some(Revocation { source, poll })
}

/// `providers[].introspection`, with its defaults.
fn introspection(
    base: &str,
    raw: &crate::raw::RawIntrospection,
    insecure_http: bool,
    problems: &mut Problems,
) -> Introspection {
    fetch_url(
        &format!("{base}.endpoint"),
        &raw.endpoint,
        insecure_http,
        problems,
    );
    if raw.client_id.is_empty() || raw.client_id.contains(':') {
        // RFC 7617 §2: the user-id of Basic authentication cannot contain a colon.
        problems.add(
            format!("{base}.client_id"),
            "must not be empty nor contain a colon",
        );
    }
    let client_secret = match (&raw.client_secret_file, &raw.client_secret_env) {
        (Some(f), None) => SecretSource::File(f.clone()),
        (None, Some(v)) => SecretSource::Env(v.clone()),
        _ => {
            problems.add(
                base,
                "needs exactly one of client_secret_file and client_secret_env",
            );
            SecretSource::Env(String::new())
        }
    };
    let all_tokens = match raw.tokens.as_deref() {
        None | Some("opaque") => false,
        Some("all") => true,
        Some(other) => {
            problems.add(
                format!("{base}.tokens"),
                format!("expected opaque or all, found {other:?}"),
            );
            false
        }
    };
    let d =
        |v: &Option<crate::raw::DurationText>, key: &str, secs: u64, problems: &mut Problems| {
            duration(
                v,
                &format!("{base}.{key}"),
                Duration::from_secs(secs),
                problems,
            )
        };
    let cache_size = raw.cache_size.unwrap_or(100_000);
    if cache_size == 0 {
        problems.add(format!("{base}.cache_size"), "must be at least 1");
    }
    let failure_threshold = raw.failure_threshold.unwrap_or(5);
    if failure_threshold == 0 {
        problems.add(format!("{base}.failure_threshold"), "must be at least 1");
    }
    Introspection {
        endpoint: raw.endpoint.clone(),
        client_id: raw.client_id.clone(),
        client_secret,
        all_tokens,
        timeout: d(&raw.timeout, "timeout", 2, problems),
        cache_max_ttl: d(&raw.cache_max_ttl, "cache_max_ttl", 300, problems),
        negative_cache_ttl: d(&raw.negative_cache_ttl, "negative_cache_ttl", 10, problems),
        cache_size,
        failure_threshold,
        open_for: d(&raw.open_for, "open_for", 10, problems),
    }
}

fn default_failed_limit() -> tollgate_ratelimit::Gcra {
    tollgate_ratelimit::Gcra::new(
        tollgate_ratelimit::Rate::parse("5/s").expect("a valid rate"),
        50,
    )
    .expect("a valid limit")
}

fn provider(base: &str, p: &RawProvider, problems: &mut Problems) -> Provider {
    let insecure_http = p.insecure_http.unwrap_or(false);
    let sources = key_sources(base, p, problems);
    let keys = one_key_source(base, p, sources, problems);
    let api_keys = matches!(keys, KeySource::ApiKeys(_));
    let token_sources = token_sources(base, p, api_keys, problems);
    let dpop = dpop_mode(&format!("{base}.dpop"), p.dpop.as_deref(), problems);
    if api_keys {
        // An API key is a bearer credential with no key of its own to bind it to.
        if dpop != DpopMode::Off {
            problems.add(format!("{base}.dpop"), "does not apply to API keys");
        }
        if p.require_certificate_binding == Some(true) {
            problems.add(
                format!("{base}.require_certificate_binding"),
                "does not apply to API keys",
            );
        }
        if p.token_types.is_some() {
            problems.add(format!("{base}.token_types"), "does not apply to API keys");
        }
    }
    if dpop != DpopMode::Off
        && !token_sources.is_empty()
        && !token_sources.contains(&TokenSource::Bearer)
    {
        problems.add(
            format!("{base}.dpop"),
            "DPoP tokens come in the Authorization header: token_sources must include bearer",
        );
    }
    Provider {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        // An API key names no audience: its provider accepts `any` unless a list is given
        // (then checked against the key's `aud` claim).
        audiences: match (&p.audiences, api_keys) {
            (None, true) => Audiences::Any,
            (raw, _) => audiences(base, raw.as_ref(), problems),
        },
        token_types: token_types(base, p.token_types.as_deref(), problems),
        leeway: leeway(&format!("{base}.leeway"), p, problems),
        // A key without `exp` lives until it is removed from the file.
        require_exp: p.require_exp.unwrap_or(!api_keys),
        keys,
        ca_file: p.ca_file.clone(),
        insecure_http,
        refresh: refresh(&format!("{base}.refresh"), p.refresh.as_ref(), problems),
        token_sources,
        require_certificate_binding: p.require_certificate_binding.unwrap_or(false),
        dpop,
    }
}

/// Every key source the provider names (exactly one is allowed: [`one_key_source`]).
fn key_sources(base: &str, p: &RawProvider, problems: &mut Problems) -> Vec<KeySource> {
    let mut sources: Vec<KeySource> = Vec::new();
    if let Some(doc) = &p.jwks {
        match serde_json::to_string(doc) {
            // Inline keys need no I/O: checked here, so that `check` refuses what `run` would.
            Ok(json) => match tollgate_jwt::KeySet::from_jwks(json.as_bytes()) {
                Ok(_) => sources.push(KeySource::Inline(json)),
                Err(e) => problems.add(format!("{base}.jwks"), e.to_string()),
            },
            Err(e) => problems.add(
                format!("{base}.jwks"),
                format!("not representable as JSON: {e}"),
            ),
        }
    }
    if let Some(path) = &p.jwks_file {
        sources.push(KeySource::File(path.clone()));
    }
    let discovery = match &p.discovery {
        None | Some(RawDiscovery::On(false)) => None,
        // OIDC Discovery §4: a trailing `/` of the issuer is removed before the suffix.
        Some(RawDiscovery::On(true)) => Some(format!(
            "{}/.well-known/openid-configuration",
            p.issuer.trim_end_matches('/')
        )),
        Some(RawDiscovery::Url(url)) => Some(url.clone()),
    };
    let fetched = p.jwks_uri.is_some() || discovery.is_some() || p.introspection.is_some();
    if p.ca_file.is_some() && !fetched {
        problems.add(
            format!("{base}.ca_file"),
            "only applies with jwks_uri, discovery or introspection",
        );
    }
    let insecure_http = p.insecure_http.unwrap_or(false);
    if let Some(uri) = &p.jwks_uri {
        fetch_url(&format!("{base}.jwks_uri"), uri, insecure_http, problems);
        sources.push(KeySource::Uri(uri.clone()));
    }
    if let Some(url) = discovery {
        // With `discovery: true` the URL comes from the issuer: the problem is the issuer's
        // scheme, but it is reported where the choice was made.
        fetch_url(&format!("{base}.discovery"), &url, insecure_http, problems);
        sources.push(KeySource::Discovery(url));
    }
    if !fetched && p.insecure_http.is_some() {
        problems.add(
            format!("{base}.insecure_http"),
            "only applies with an http:// jwks_uri or discovery URL",
        );
    }
    if let Some(path) = &p.hmac_secret_file {
        sources.push(KeySource::HmacFile {
            path: path.clone(),
            alg: String::new(),
        });
    }
    if let Some(var) = &p.hmac_secret_env {
        sources.push(KeySource::HmacEnv {
            var: var.clone(),
            alg: String::new(),
        });
    }
    if let Some(source) = introspection_source(base, p, insecure_http, problems) {
        sources.push(source);
    }
    if let Some(source) = api_key_source(base, p, problems) {
        sources.push(source);
    }
    sources
}

/// `type: api_key` with its `api_keys` section: the credentials are looked up in a file.
fn api_key_source(base: &str, p: &RawProvider, problems: &mut Problems) -> Option<KeySource> {
    let wanted = p.kind.as_deref() == Some("api_key");
    match (&p.api_keys, wanted) {
        (Some(raw), true) => {
            let path = format!("{base}.api_keys");
            if raw.file.is_empty() {
                problems.add(format!("{path}.file"), "must not be empty");
            }
            let poll = duration(
                &raw.poll,
                &format!("{path}.poll"),
                Duration::from_secs(2),
                problems,
            );
            Some(KeySource::ApiKeys(ApiKeyFile {
                path: raw.file.clone(),
                poll,
            }))
        }
        (None, true) => {
            problems.add(
                format!("{base}.api_keys"),
                "is required with type: api_key (the key file)",
            );
            None
        }
        (Some(_), false) => {
            problems.add(
                format!("{base}.type"),
                "must be api_key for a provider with an api_keys section",
            );
            None
        }
        (None, false) => None,
    }
}

/// `type: introspection` with its `introspection` section: the provider asks about each
/// token instead of verifying it with keys.
fn introspection_source(
    base: &str,
    p: &RawProvider,
    insecure_http: bool,
    problems: &mut Problems,
) -> Option<KeySource> {
    let introspecting = match p.kind.as_deref() {
        None | Some("jwt") => false,
        Some("introspection") => true,
        Some("api_key") => false,
        Some(other) => {
            problems.add(
                format!("{base}.type"),
                format!("expected jwt, introspection or api_key, found {other:?}"),
            );
            false
        }
    };
    match (&p.introspection, introspecting) {
        (Some(raw), true) => {
            return Some(KeySource::Introspection(introspection(
                &format!("{base}.introspection"),
                raw,
                insecure_http,
                problems,
            )))
        }
        (None, true) => problems.add(
            format!("{base}.introspection"),
            "is required with type: introspection (endpoint, client_id, client secret)",
        ),
        (Some(_), false) => problems.add(
            format!("{base}.type"),
            "must be introspection for a provider with an introspection section",
        ),
        (None, false) => {}
    }
    None
}

/// The provider's one key source, with its HMAC algorithm where it is a secret.
fn one_key_source(
    base: &str,
    p: &RawProvider,
    mut sources: Vec<KeySource>,
    problems: &mut Problems,
) -> KeySource {
    match sources.len() {
        1 => match sources.pop().expect("one source") {
            KeySource::HmacFile { path, .. } => KeySource::HmacFile {
                path,
                alg: hmac_alg(base, p, problems),
            },
            KeySource::HmacEnv { var, .. } => KeySource::HmacEnv {
                var,
                alg: hmac_alg(base, p, problems),
            },
            other => {
                if p.hmac_alg.is_some() {
                    problems.add(
                        format!("{base}.hmac_alg"),
                        "only applies with an HMAC secret",
                    );
                }
                other
            }
        },
        0 => {
            problems.add(
                base,
                "needs one key source: jwks, jwks_file, jwks_uri, discovery, hmac_secret_file, hmac_secret_env, type: introspection or type: api_key",
            );
            KeySource::Inline(String::new())
        }
        _ => {
            problems.add(base, "has more than one key source; give exactly one");
            sources.swap_remove(0)
        }
    }
}

/// Where tokens are read (`bearer` unless listed), each once.
fn token_sources(
    base: &str,
    p: &RawProvider,
    api_keys: bool,
    problems: &mut Problems,
) -> Vec<TokenSource> {
    let mut token_sources = Vec::new();
    for (i, s) in p.token_sources.iter().flatten().enumerate() {
        let path = format!("{base}.token_sources[{i}]");
        let parsed = match s.split_once(':') {
            None if s == "bearer" => Some(TokenSource::Bearer),
            Some(("header", h)) => header_name(h).map(TokenSource::Header),
            // A cookie name is an RFC 9110 token (RFC 6265 §4.1.1), as `when: cookie` names
            // are: the gateway's one cookie reader finds no other, so none could be stripped.
            Some(("cookie", c)) if !c.is_empty() && header_name(c).is_some() => {
                Some(TokenSource::Cookie(c.to_owned()))
            }
            Some(("query", q)) if !q.is_empty() => Some(TokenSource::Query(q.to_owned())),
            _ => None,
        };
        match parsed {
            Some(t) if token_sources.contains(&t) => problems.add(path, "listed twice"),
            Some(t) => token_sources.push(t),
            None => problems.add(
                path,
                format!("expected bearer, header:NAME, cookie:NAME or query:NAME, found {s:?}"),
            ),
        }
    }
    match &p.token_sources {
        None if api_keys => token_sources.push(TokenSource::Header("x-api-key".to_owned())),
        None => token_sources.push(TokenSource::Bearer),
        Some(list) if list.is_empty() => problems.add(
            format!("{base}.token_sources"),
            "must list at least one source",
        ),
        Some(_) => {}
    }
    token_sources
}

fn fetch_url(path: &str, uri: &str, insecure_http: bool, problems: &mut Problems) {
    if let Some(problem) = fetch_url_problem(uri, insecure_http) {
        problems.add(path, problem);
    }
}

fn audiences(base: &str, raw: Option<&RawAudiences>, problems: &mut Problems) -> Audiences {
    let path = format!("{base}.audiences");
    match raw {
        None => {
            problems.add(
                path,
                "required; list the accepted audiences, or write `audiences: any` to accept every audience",
            );
            Audiences::Any
        }
        Some(RawAudiences::Word(w)) if w == "any" => Audiences::Any,
        Some(RawAudiences::Word(w)) => {
            problems.add(
                path,
                format!("expected a list of audiences or `any`, found {w:?} (write [{w}] for one audience)"),
            );
            Audiences::Any
        }
        Some(RawAudiences::List(list)) => {
            if list.is_empty() {
                problems.add(
                    &path,
                    "must list at least one audience, or be `any` to accept every audience",
                );
            }
            for (i, a) in list.iter().enumerate() {
                if a.is_empty() {
                    problems.add(format!("{path}[{i}]"), "must not be empty");
                }
            }
            Audiences::List(list.clone())
        }
    }
}

/// `typ` values as written, e.g. `at+jwt` or `application/at+jwt`; compared by the verifier.
fn token_types(base: &str, raw: Option<&[String]>, problems: &mut Problems) -> Vec<String> {
    let Some(list) = raw else {
        return Vec::new();
    };
    if list.is_empty() {
        problems.add(
            format!("{base}.token_types"),
            "must list at least one type (leave it out to accept any typ)",
        );
    }
    for (i, t) in list.iter().enumerate() {
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == ',';
        if t.is_empty() || t.contains(bad) {
            problems.add(
                format!("{base}.token_types[{i}]"),
                format!("expected a media type such as at+jwt, found {t:?}"),
            );
        }
    }
    list.to_vec()
}

fn hmac_alg(base: &str, p: &RawProvider, problems: &mut Problems) -> String {
    let alg = p.hmac_alg.clone().unwrap_or_else(|| "HS256".to_owned());
    if !HMAC_ALGS.contains(&alg.as_str()) {
        problems.add(
            format!("{base}.hmac_alg"),
            format!("expected one of {}, found {alg:?}", HMAC_ALGS.join(", ")),
        );
    }
    alg
}

fn leeway(path: &str, p: &RawProvider, problems: &mut Problems) -> Duration {
    match &p.leeway {
        // Zero leeway is legitimate; `duration` refuses zero, so it is special-cased.
        Some(t) if t.0.trim() == "0" || t.0.trim() == "0s" => Duration::ZERO,
        other => duration(other, path, Duration::from_secs(30), problems),
    }
}

fn refresh(base: &str, raw: Option<&RawRefresh>, problems: &mut Problems) -> Refresh {
    let default = RawRefresh::default();
    let r = raw.unwrap_or(&default);
    let mut d = |v, key: &str, secs: u64| {
        duration(
            v,
            &format!("{base}.{key}"),
            Duration::from_secs(secs),
            problems,
        )
    };
    let refresh = Refresh {
        interval: d(&r.interval, "interval", 300),
        min_interval: d(&r.min_interval, "min_interval", 60),
        max_interval: d(&r.max_interval, "max_interval", 3600),
        unknown_kid_cooldown: d(&r.unknown_kid_cooldown, "unknown_kid_cooldown", 30),
        max_stale: d(&r.max_stale, "max_stale", 86_400),
        timeout: d(&r.timeout, "timeout", 5),
        file_poll: d(&r.file_poll, "file_poll", 2),
    };
    if refresh.min_interval > refresh.max_interval {
        problems.add(
            format!("{base}.min_interval"),
            "must not exceed max_interval",
        );
    }
    refresh
}

/// `auth.shared_signals`: each transmitter becomes a provider of keys that only ever checks
/// events: the receiver's audience, `typ` `secevent+jwt` (RFC 8417 §2.3), no `exp`.
fn shared_signals(raw: &RawSharedSignals, problems: &mut Problems) -> SharedSignals {
    let base = "auth.shared_signals";
    let path = raw.path.clone().unwrap_or_else(|| "/ssf/events".to_owned());
    let reserved = ["/metrics", "/healthz", "/readyz", "/.well-known/jwks.json"];
    if !path.starts_with('/') || path.contains(['?', '#']) || reserved.contains(&path.as_str()) {
        problems.add(
            format!("{base}.path"),
            "must be a path starting with / and not one the metrics listener already serves",
        );
    }
    if raw.bearer_env.is_empty() {
        problems.add(format!("{base}.bearer_env"), "must not be empty");
    }
    if raw.audience.is_empty() {
        problems.add(format!("{base}.audience"), "must not be empty");
    }
    if raw.transmitters.is_empty() {
        problems.add(
            format!("{base}.transmitters"),
            "needs at least one transmitter",
        );
    }
    let subjects_of = raw
        .transmitters
        .iter()
        .enumerate()
        .map(|(i, t)| match &t.subjects_of {
            None => vec![t.issuer.clone()],
            Some(list) => {
                if list.is_empty() || list.iter().any(String::is_empty) {
                    problems.add(
                        format!("{base}.transmitters[{i}].subjects_of"),
                        "must name at least one issuer, none empty",
                    );
                }
                list.clone()
            }
        })
        .collect();
    let mut issuers: HashMap<&str, usize> = HashMap::new();
    let transmitters = raw
        .transmitters
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let tbase = format!("{base}.transmitters[{i}]");
            if let Some(first) = issuers.insert(&t.issuer, i) {
                problems.add(
                    format!("{tbase}.issuer"),
                    format!("already the issuer of {base}.transmitters[{first}]"),
                );
            }
            if t.issuer.is_empty() {
                problems.add(format!("{tbase}.issuer"), "must not be empty");
            }
            let as_provider = RawProvider {
                name: format!("ssf:{}", t.issuer),
                issuer: t.issuer.clone(),
                jwks: t.jwks.clone(),
                jwks_file: t.jwks_file.clone(),
                jwks_uri: t.jwks_uri.clone(),
                insecure_http: t.insecure_http,
                ca_file: t.ca_file.clone(),
                ..RawProvider::default()
            };
            let sources = key_sources(&tbase, &as_provider, problems);
            let keys = match sources.len() {
                1 => sources.into_iter().next().expect("one source"),
                0 => {
                    problems.add(&tbase, "needs one key source: jwks, jwks_file or jwks_uri");
                    KeySource::Inline(String::new())
                }
                _ => {
                    problems.add(&tbase, "has more than one key source; give exactly one");
                    KeySource::Inline(String::new())
                }
            };
            Provider {
                name: as_provider.name,
                issuer: t.issuer.clone(),
                audiences: Audiences::List(vec![raw.audience.clone()]),
                token_types: vec!["secevent+jwt".to_owned()],
                leeway: Duration::from_secs(30),
                require_exp: false,
                keys,
                ca_file: t.ca_file.clone(),
                insecure_http: t.insecure_http.unwrap_or(false),
                refresh: refresh(&format!("{tbase}.refresh"), None, problems),
                token_sources: Vec::new(),
                require_certificate_binding: false,
                dpop: DpopMode::Off,
            }
        })
        .collect();
    let jti_cache_size = raw.jti_cache_size.unwrap_or(100_000);
    if jti_cache_size == 0 {
        problems.add(format!("{base}.jti_cache_size"), "must be at least 1");
    }
    SharedSignals {
        path,
        bearer: SecretSource::Env(raw.bearer_env.clone()),
        audience: raw.audience.clone(),
        transmitters,
        subjects_of,
        jti_cache_size,
    }
}
