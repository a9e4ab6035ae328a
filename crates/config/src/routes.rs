//! `routes`: what each route matches and what it asks of a request.

use crate::model::*;
use crate::problems::{header_name, Problems};
use crate::raw::*;

/// One route, checked against the upstreams, providers, policies and limits it names.
pub(crate) fn route(
    index: usize,
    raw: &RawRoute,
    config: &RawConfig,
    auth: &Auth,
    limits: &RateLimiting,
    problems: &mut Problems,
) -> Route {
    let upstreams = &config.upstreams;
    let broken = &config.broken_upstreams;
    let base = format!("routes[{index}]");
    let name_ok = !raw.name.is_empty()
        && raw
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        problems.add(
            format!("{base}.name"),
            "must be non-empty letters, digits, '-', '_' or '.'",
        );
    }
    let known = |name: &str| upstreams.contains_key(name) || broken.contains(name);
    let targets = targets(&base, raw, &known, auth, problems);
    let mirror = raw.mirror.as_ref().map(|m| {
        if !known(&m.upstream) {
            problems.add(
                format!("{base}.mirror.upstream"),
                format!("unknown upstream {:?}", m.upstream),
            );
        }
        let percent = m.percent.unwrap_or(100.0);
        if !(percent > 0.0 && percent <= 100.0) {
            problems.add(
                format!("{base}.mirror.percent"),
                "must be above 0 and at most 100",
            );
        }
        Mirror {
            upstream: m.upstream.clone(),
            percent,
            identity: m.identity.unwrap_or(false),
            cookies: m.cookies.unwrap_or(false),
            upstream_token: None,
        }
    });
    let mut retry_on = RetryOn::default();
    for (i, v) in raw.retry_on.iter().flatten().enumerate() {
        match v {
            serde_yaml::Value::String(s) if s == "reset" => retry_on.reset = true,
            serde_yaml::Value::Number(n)
                if n.as_u64().is_some_and(|n| (500..=599).contains(&n)) =>
            {
                retry_on.statuses.push(n.as_u64().unwrap_or(0) as u16)
            }
            serde_yaml::Value::String(s)
                if s.parse::<u16>().is_ok_and(|n| (500..=599).contains(&n)) =>
            {
                retry_on.statuses.push(s.parse().unwrap_or(0))
            }
            _ => problems.add(
                format!("{base}.retry_on[{i}]"),
                "expected reset or an HTTP status from 500 to 599",
            ),
        }
    }
    let path_match = match raw.path_match.as_deref() {
        None | Some("prefix") => PathMatch::Prefix,
        Some("exact") => PathMatch::Exact,
        Some(other) => {
            problems.add(
                format!("{base}.path_match"),
                format!("expected prefix or exact, found {other:?}"),
            );
            PathMatch::Prefix
        }
    };
    let case_insensitive = match raw.path_case.as_deref() {
        None | Some("sensitive") => false,
        Some("insensitive") => true,
        Some(other) => {
            problems.add(
                format!("{base}.path_case"),
                format!("expected sensitive or insensitive, found {other:?}"),
            );
            false
        }
    };
    let strip_prefix = raw.strip_prefix.unwrap_or(false);
    if strip_prefix && path_match == PathMatch::Exact {
        problems.add(
            format!("{base}.strip_prefix"),
            "only applies with path_match: prefix",
        );
    }
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().flatten().enumerate() {
        match header_name(m) {
            Some(_) => {
                let m = m.to_ascii_uppercase();
                if methods.contains(&m) {
                    problems.add(
                        format!("{base}.methods[{i}]"),
                        format!("{m} is listed twice"),
                    );
                } else {
                    methods.push(m);
                }
            }
            None => problems.add(
                format!("{base}.methods[{i}]"),
                format!("invalid method {m:?}"),
            ),
        }
    }
    let auth_mode = match raw.auth.as_deref() {
        None if auth.providers.is_empty() && config.providers.is_empty() => AuthMode::None,
        None | Some("required") => AuthMode::Required,
        Some("optional") => AuthMode::Optional,
        Some("none") => AuthMode::None,
        Some(other) => {
            problems.add(
                format!("{base}.auth"),
                format!("expected required, optional or none, found {other:?}"),
            );
            AuthMode::None
        }
    };
    let providers = match &raw.providers {
        None => auth.providers.iter().map(|p| p.name.clone()).collect(),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                let known = auth.providers.iter().any(|p| &p.name == name)
                    || config.broken_providers.contains(name);
                if !known {
                    problems.add(
                        format!("{base}.providers[{i}]"),
                        format!("unknown provider {name:?}"),
                    );
                }
            }
            list.clone()
        }
    };
    if auth_mode != AuthMode::None && providers.is_empty() && config.broken_providers.is_empty() {
        problems.add(
            format!("{base}.auth"),
            "needs at least one provider in auth.providers",
        );
    }
    if let Some(service) = &raw.ext_authz {
        let known = config
            .auth
            .ext_authz
            .as_ref()
            .is_some_and(|m| m.contains_key(service));
        if !known {
            problems.add(
                format!("{base}.ext_authz"),
                format!("unknown service {service:?} (not in auth.ext_authz)"),
            );
        }
    }
    if let Some(policy) = &raw.policy {
        if !config.policies.contains_key(policy) && !config.broken_policies.contains(policy) {
            problems.add(
                format!("{base}.policy"),
                format!("unknown policy {policy:?}"),
            );
        }
    }
    let rate_limits = crate::limits::route_limits(
        &base,
        raw.rate_limits.as_deref().unwrap_or(&[]),
        auth_mode != AuthMode::None,
        limits,
        problems,
    );
    let upstream_token = raw
        .upstream_token
        .as_ref()
        .map(|t| upstream_token(&base, t, raw, auth_mode, auth, problems));
    // The shadow's own token: minted for its audience, never for the primary's.
    let mirror = mirror.map(|mut m| {
        if let Some(t) = raw.mirror.as_ref().and_then(|r| r.upstream_token.as_ref()) {
            let mirror_base = format!("{base}.mirror");
            let spec = self::upstream_token(&mirror_base, t, raw, auth_mode, auth, problems);
            if upstream_token
                .as_ref()
                .is_some_and(|primary| primary.audience == spec.audience)
            {
                problems.add(
                    format!("{mirror_base}.upstream_token.audience"),
                    "must differ from the route's upstream_token.audience: a shadow never \
                     gets a credential for the primary's audience",
                );
            }
            m.upstream_token = Some(spec);
        }
        m
    });
    if auth_mode == AuthMode::None && raw.providers.is_some() {
        problems.add(
            format!("{base}.providers"),
            "does not apply with auth: none",
        );
    }
    if auth_mode == AuthMode::None && raw.dpop.is_some() {
        problems.add(format!("{base}.dpop"), "does not apply with auth: none");
    }
    let resource = raw.resource.as_deref().and_then(|id| {
        let path = format!("{base}.resource");
        if auth_mode == AuthMode::None {
            problems.add(&path, "does not apply with auth: none");
        }
        // An API key is not an OAuth access token: it has no audience to hold the
        // resource, and the metadata would name no server that issues it.
        for (at, name) in api_key_providers(&providers, raw, auth, &path) {
            problems.add(
                at,
                format!(
                    "provider {name:?} takes API keys, which are not OAuth access tokens for \
                     a resource: list the route's providers without it"
                ),
            );
        }
        // RFC 8707: the tokens for this resource name it in `aud`; a provider whose own
        // audience list leaves it out would refuse every one of them.
        for name in &providers {
            if let Some(p) = auth.providers.iter().find(|p| &p.name == name) {
                if matches!(&p.audiences, Audiences::List(l) if !l.iter().any(|a| a == id)) {
                    problems.add(
                        &path,
                        format!(
                            "provider {name:?} accepts other audiences only: add {id:?} to its \
                             audiences (tokens for this resource carry it in aud)"
                        ),
                    );
                }
            }
        }
        resource(&path, id, problems)
    });
    let step_up = raw.step_up.as_ref().map(|s| {
        let path = format!("{base}.step_up");
        match auth_mode {
            AuthMode::None => problems.add(&path, "does not apply with auth: none"),
            // A caller without a token would pass where one with a weak login is stopped.
            AuthMode::Optional => problems.add(
                &path,
                "does not apply with auth: optional (a caller without a token would skip it)",
            ),
            AuthMode::Required => {}
        }
        // An API key's acr and auth_time are whatever its file says: no login behind them.
        for (at, name) in api_key_providers(&providers, raw, auth, &path) {
            problems.add(
                at,
                format!(
                    "provider {name:?} takes API keys, which carry no login to step up: list \
                     the route's providers without it"
                ),
            );
        }
        let acr = s.acr.clone().unwrap_or_default();
        for (i, v) in acr.iter().enumerate() {
            // Sent back inside a quoted challenge parameter.
            let token = |b: u8| b.is_ascii_graphic() && b != b'"' && b != b'\\';
            if v.is_empty() || !v.bytes().all(token) {
                problems.add(
                    format!("{path}.acr[{i}]"),
                    "must be non-empty visible ASCII, without spaces, quotes or backslashes",
                );
            }
        }
        if s.acr.as_ref().is_some_and(Vec::is_empty) {
            problems.add(format!("{path}.acr"), "must name at least one value");
        }
        let max_age = s.max_age.as_ref().map(|_| {
            crate::problems::duration(
                &s.max_age,
                &format!("{path}.max_age"),
                std::time::Duration::from_secs(1),
                problems,
            )
        });
        if s.acr.is_none() && s.max_age.is_none() {
            problems.add(&path, "needs acr, max_age or both");
        }
        StepUp { acr, max_age }
    });
    Route {
        name: raw.name.clone(),
        host: raw.host.clone(),
        path: raw.path.clone(),
        path_match,
        case_insensitive,
        methods,
        targets,
        mirror,
        retry_on,
        strip_prefix,
        auth: auth_mode,
        providers,
        keep_authorization: raw.keep_authorization.unwrap_or(false),
        policy: raw.policy.clone(),
        ext_authz: raw.ext_authz.clone(),
        rate_limits,
        // Resolved against `server.http.max_body` by `validate`.
        max_body: crate::http::byte_size(&raw.max_body, &format!("{base}.max_body"), 0, problems),
        headers: {
            let cert_headers = config
                .listen
                .tls
                .as_ref()
                .and_then(|t| t.client_cert_headers.as_ref());
            let identity: Vec<String> = auth
                .forward_claims
                .iter()
                .map(|c| c.header.as_str().to_owned())
                .chain(
                    cert_headers
                        .into_iter()
                        .flat_map(|c| [&c.subject, &c.sha256])
                        .flatten()
                        .filter_map(|h| header_name(h)),
                )
                .chain(raw.upstream_token.iter().filter_map(|t| {
                    t.header
                        .as_deref()
                        .map_or(Some("authorization".to_owned()), header_name)
                }))
                .collect();
            let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
            crate::rewrite::header_rules(
                raw.headers.as_ref(),
                &format!("{base}.headers"),
                &identity,
                problems,
            )
        },
        cors: raw
            .cors
            .as_ref()
            .map(|c| std::sync::Arc::new(crate::http::cors(c, &format!("{base}.cors"), problems))),
        ip_rules: crate::http::ip_rules(
            raw.ip_rules.as_ref(),
            &format!("{base}.ip_rules"),
            problems,
        ),
        require_client_certificate: match raw.client_certificate.as_deref() {
            None | Some("any") => false,
            Some("required") => true,
            Some(other) => {
                problems.add(
                    format!("{base}.client_certificate"),
                    format!("expected any or required, found {other:?}"),
                );
                false
            }
        },
        require_certificate_binding: raw.require_certificate_binding.unwrap_or(false),
        dpop: crate::auth::dpop_mode(&format!("{base}.dpop"), raw.dpop.as_deref(), problems),
        upstream_token,
        resource,
        step_up,
    }
}

/// The route's providers that take API keys, each with the path to report it at: its
/// entry in the route's `providers`, or `feature` when the route takes every provider.
fn api_key_providers<'a>(
    providers: &'a [String],
    raw: &RawRoute,
    auth: &Auth,
    feature: &str,
) -> Vec<(String, &'a str)> {
    let base = feature.rsplit_once('.').map_or(feature, |(b, _)| b);
    providers
        .iter()
        .enumerate()
        .filter(|(_, name)| {
            auth.providers
                .iter()
                .any(|p| &p.name == *name && matches!(p.keys, KeySource::ApiKeys(_)))
        })
        .map(|(i, name)| {
            let at = match raw.providers {
                Some(_) => format!("{base}.providers[{i}]"),
                None => feature.to_owned(),
            };
            (at, name.as_str())
        })
        .collect()
}

/// A resource identifier (RFC 9728 §1.2: a URL without fragment; no query either, since
/// the metadata path is built from it) and where its metadata is served.
fn resource(path: &str, id: &str, problems: &mut Problems) -> Option<Resource> {
    if let Some(problem) = crate::problems::fetch_url_problem(id, false) {
        let problem = match problem.starts_with("must be an https") {
            true => "must be an https:// URL (http:// only on a loopback host)",
            false => problem,
        };
        problems.add(path, problem);
        return None;
    }
    if id.contains(['?', '#']) {
        problems.add(path, "must have no query or fragment (RFC 9728 §1.2)");
        return None;
    }
    // Written into challenges and compared byte for byte with `aud`: plain URL characters.
    let url_char = |b: u8| b.is_ascii_graphic() && !b"\"\\<>`{}|^".contains(&b);
    if !id.bytes().all(url_char) {
        problems.add(
            path,
            "must be written in plain URL characters (no spaces, quotes, control characters or non-ASCII)",
        );
        return None;
    }
    let (scheme, rest) = id.split_once("://")?;
    let (authority, id_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let dot_segment = |s: &str| {
        let s = s.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    };
    if id_path.contains("//") || id_path.split('/').any(dot_segment) {
        problems.add(
            path,
            "must have a normalised path (no empty, . or .. segments)",
        );
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let suffix = if id_path == "/" { "" } else { id_path };
    let metadata_path = format!("/.well-known/oauth-protected-resource{suffix}");
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority.as_str(),
    }
    .to_owned();
    Some(Resource {
        id: id.to_owned(),
        metadata_url: format!("{scheme}://{authority}{metadata_path}"),
        host,
        authority,
        metadata_path,
    })
}

/// Claims the gateway sets in a minted token itself.
const MINTED_CLAIMS: &[&str] = &["iss", "aud", "exp", "iat", "nbf", "jti", "act"];

fn upstream_token(
    base: &str,
    t: &RawUpstreamToken,
    route: &RawRoute,
    auth_mode: AuthMode,
    auth: &Auth,
    problems: &mut Problems,
) -> UpstreamToken {
    let base = format!("{base}.upstream_token");
    if auth.signing_keys.is_none() {
        problems.add(
            &base,
            "needs auth.signing_keys: the gateway signs the token with its own key",
        );
    }
    if auth_mode == AuthMode::None {
        problems.add(
            &base,
            "needs a verified caller: does not apply with auth: none",
        );
    }
    let header = match t
        .header
        .as_deref()
        .map_or(Some("authorization".to_owned()), header_name)
    {
        Some(h) => {
            if h == "authorization" && route.keep_authorization == Some(true) {
                problems.add(
                    format!("{base}.header"),
                    "the route keeps the caller's Authorization (keep_authorization): \
                     give the minted token another header",
                );
            } else if h != "authorization" && crate::auth::RESERVED_HEADERS.contains(&h.as_str()) {
                problems.add(
                    format!("{base}.header"),
                    format!("{h} is reserved: it carries the request's framing or routing"),
                );
            } else if auth.forward_claims.iter().any(|c| c.header.as_str() == h) {
                problems.add(
                    format!("{base}.header"),
                    format!("{h} is already set from a claim by auth.forward_claims"),
                );
            }
            http::HeaderName::try_from(h).unwrap_or(http::header::AUTHORIZATION)
        }
        None => {
            problems.add(
                format!("{base}.header"),
                format!(
                    "invalid header name {:?}",
                    t.header.as_deref().unwrap_or("")
                ),
            );
            http::header::AUTHORIZATION
        }
    };
    if t.audience.is_empty() {
        problems.add(format!("{base}.audience"), "must not be empty");
    }
    let ttl = crate::problems::duration(
        &t.ttl,
        &format!("{base}.ttl"),
        std::time::Duration::from_secs(60),
        problems,
    );
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(86_400)).contains(&ttl)
    {
        problems.add(format!("{base}.ttl"), "must be between 1s and 24h");
    }
    let mut claims = vec!["sub".to_owned()];
    for (i, c) in t.claims.iter().flatten().enumerate() {
        if MINTED_CLAIMS.contains(&c.as_str()) {
            problems.add(
                format!("{base}.claims[{i}]"),
                format!("{c} is set by the gateway in a minted token"),
            );
        } else if c.is_empty() {
            problems.add(format!("{base}.claims[{i}]"), "must not be empty");
        } else if !claims.contains(c) {
            claims.push(c.clone());
        }
    }
    UpstreamToken {
        header,
        audience: t.audience.clone(),
        ttl,
        claims,
    }
}

/// `upstream: NAME`, or `upstreams: [{name, weight, when}]`: exactly one of them.
fn targets(
    base: &str,
    raw: &RawRoute,
    known: &dyn Fn(&str) -> bool,
    auth: &Auth,
    problems: &mut Problems,
) -> Vec<RouteTarget> {
    let list = match (&raw.upstream, &raw.upstreams) {
        (Some(name), None) => {
            if !known(name) {
                problems.add(
                    format!("{base}.upstream"),
                    format!("unknown upstream {name:?}"),
                );
            }
            return vec![RouteTarget {
                upstream: name.clone(),
                weight: 1,
                when: Vec::new(),
            }];
        }
        (None, Some(list)) => list,
        (Some(_), Some(_)) => {
            problems.add(
                format!("{base}.upstreams"),
                "give either upstream or upstreams, not both",
            );
            return Vec::new();
        }
        (None, None) => {
            problems.add(
                format!("{base}.upstream"),
                "required (or upstreams: a weighted or conditional list)",
            );
            return Vec::new();
        }
    };
    let mut targets = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let path = format!("{base}.upstreams[{i}]");
        if !known(&t.name) {
            problems.add(
                format!("{path}.name"),
                format!("unknown upstream {:?}", t.name),
            );
        }
        let weight = t.weight.unwrap_or(1);
        if !(1..=10_000).contains(&weight) {
            problems.add(format!("{path}.weight"), "must be between 1 and 10000");
        }
        let when = t
            .when
            .as_ref()
            .map(|w| conditions(&format!("{path}.when"), w, raw, auth, problems))
            .unwrap_or_default();
        if t.when.is_some() && t.weight.is_some() {
            problems.add(
                format!("{path}.weight"),
                "an entry with when takes every request it matches: weight applies to the \
                 entries without when",
            );
        }
        targets.push(RouteTarget {
            upstream: t.name.clone(),
            weight,
            when,
        });
    }
    if !list.is_empty() && list.iter().all(|t| t.when.is_some()) {
        problems.add(
            format!("{base}.upstreams"),
            "needs at least one entry without when, for the requests no condition matches",
        );
    }
    if list.is_empty() {
        problems.add(format!("{base}.upstreams"), "must not be empty");
    }
    targets
}

fn conditions(
    base: &str,
    raw: &RawWhen,
    route: &RawRoute,
    auth: &Auth,
    problems: &mut Problems,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let mut value = |path: String, v: &serde_yaml::Value| -> Option<String> {
        match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            // An integer is compared in decimal (`0x10` is 16). A float would be compared
            // as YAML reads it, not as written (`1.50` is 1.5, `1e3` is 1000.0): refused.
            serde_yaml::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            serde_yaml::Value::Number(_) => {
                problems.add(
                    path,
                    "a decimal number is read as YAML rewrites it (1.50 as 1.5): quote it",
                );
                None
            }
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => {
                problems.add(path, "expected a string, integer or boolean");
                None
            }
        }
    };
    let mut names_ok = Vec::new();
    for (name, v) in raw.header.iter().flatten() {
        let path = format!("{base}.header.{name}");
        let lower = header_name(name);
        if let (Some(v), Some(lower)) = (value(path.clone(), v), lower.clone()) {
            out.push(Condition::Header(lower, v));
        }
        names_ok.push((path, lower.is_some()));
    }
    for (name, v) in raw.cookie.iter().flatten() {
        let path = format!("{base}.cookie.{name}");
        let ok = !name.is_empty() && header_name(name).is_some();
        if let (Some(v), true) = (value(path.clone(), v), ok) {
            out.push(Condition::Cookie(name.clone(), v));
        }
        names_ok.push((path, ok));
    }
    for (name, v) in raw.claim.iter().flatten() {
        let path = format!("{base}.claim.{name}");
        if let Some(v) = value(path.clone(), v) {
            out.push(Condition::Claim(name.clone(), v));
        }
        names_ok.push((path, !name.is_empty()));
    }
    for (path, ok) in names_ok {
        if !ok {
            problems.add(path, "not a valid name");
        }
    }
    let on_claims = out.iter().any(|c| matches!(c, Condition::Claim(..)));
    let no_auth = route.auth.as_deref() == Some("none")
        || (route.auth.is_none() && auth.providers.is_empty());
    if on_claims && no_auth {
        problems.add(
            format!("{base}.claim"),
            "matches claims of a verified token, and this route has auth: none",
        );
    }
    if out.is_empty() && !problems_at(base, problems) {
        problems.add(
            base.to_owned(),
            "must name at least one header, cookie or claim",
        );
    }
    out
}

fn problems_at(base: &str, problems: &Problems) -> bool {
    problems.0.iter().any(|p| p.path.starts_with(base))
}
