//! `tollgate explain`: what the gateway would decide for a request, and why.
//!
//! It builds the request from the command line and runs the proxy's own
//! [`crate::request::pipeline`] on it in [`Mode::DryRun`]: the same admission and canonical form,
//! router, verifier, policy and limits (looked at, not spent), so explain and the proxy
//! cannot disagree. It then prints each step and, for a policy, every rule with pass/fail.

use crate::limits::Stores;
use crate::request::pipeline::{Mode, Passage, Pipeline};
use crate::request::respond::Refusal;
use crate::request::runtime::RuntimeSnapshot;
use http::header::HeaderValue;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub struct ExplainArgs<'a> {
    pub config: &'a Path,
    pub method: &'a str,
    /// The request target as a client writes it (`/a?b=c`, or absolute-form).
    pub path: &'a str,
    /// The `Host` header; without one, the proxy listener's address (what a client
    /// connecting to it would send).
    pub host: Option<&'a str>,
    /// A JWT, sent as `Authorization: Bearer`.
    pub token: Option<&'a str>,
    /// Claims taken as verified instead of a token.
    pub claims: Option<&'a str>,
    /// More request headers, `Name: value`.
    pub headers: &'a [String],
    /// The client's address (rate-limit keys, trusted proxies).
    pub client: Option<IpAddr>,
}

/// Prints the explanation; exit 0 when the request would be let through, 1 when refused,
/// 2 when the config or arguments are unusable.
pub fn run(a: ExplainArgs<'_>) -> ExitCode {
    let (config, snapshot) = match crate::ops::serve::load(a.config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let stores = match Stores::new(&config.rate_limiting) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rate_limiting.redis.url: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    let listen = config.listen.http.to_string();
    runtime.block_on(async {
        let stores = Arc::new(stores);
        if let Some(redis) = &stores.redis {
            redis.connect_in_background();
            if !redis.wait_connected(Duration::from_secs(2)).await {
                println!("note:    Redis is not reachable; limits with store: redis follow on_store_error");
            }
        }
        match explain(&snapshot, &stores, &a, &listen).await {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(_)) => ExitCode::FAILURE,
            Err(usage) => {
                eprintln!("{usage}");
                ExitCode::from(2)
            }
        }
    })
}

/// The request the arguments describe, as the proxy would have parsed it; `Err(None)` when
/// the proxy could not have parsed it at all (Pingora answers 400 itself).
fn build_request(
    a: &ExplainArgs<'_>,
    listen: &str,
    key_header: &str,
) -> Result<RequestHeader, Option<String>> {
    let mut req = RequestHeader::build(a.method, a.path.as_bytes(), None).map_err(|_| None)?;
    let mut add = |name: &str, value: &str| -> Result<(), Option<String>> {
        let value = HeaderValue::from_str(value).map_err(|_| None)?;
        req.append_header(name.to_owned(), value)
            .map_err(|_| None)?;
        Ok(())
    };
    add("host", a.host.unwrap_or(listen))?;
    match a.token {
        // An API key goes where the key providers read it (`-H` for other sources).
        Some(key) if crate::identity::apikeys::looks_like_key(key) => add(key_header, key)?,
        Some(token) => add("authorization", &format!("Bearer {token}"))?,
        None => {}
    }
    for h in a.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Some(format!("--header {h:?}: expected `Name: value`")))?;
        add(name.trim(), value.trim())?;
    }
    Ok(req)
}

/// Runs the pipeline and prints what it decided: `Ok(Ok)` allowed, `Ok(Err)` refused,
/// `Err` unusable arguments.
pub async fn explain(
    snapshot: &RuntimeSnapshot,
    stores: &Stores,
    a: &ExplainArgs<'_>,
    listen: &str,
) -> Result<Result<(), Refusal>, String> {
    let claims = match a.claims {
        None => None,
        Some(json) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(map)) => Some(Arc::new(map)),
            _ => return Err("--claims must be a JSON object".into()),
        },
    };
    println!(
        "request: {} {} (host {})",
        a.method,
        a.path,
        a.host.unwrap_or(listen)
    );
    let key_header = snapshot
        .auth
        .providers
        .iter()
        .filter(|p| p.api_keys.is_some())
        .flat_map(|p| &p.token_sources)
        .find_map(|s| match s {
            tollgate_config::TokenSource::Header(name) => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or("x-api-key");
    let mut req = match build_request(a, listen, key_header) {
        Ok(req) => req,
        Err(Some(usage)) => return Err(usage),
        Err(None) => {
            let refusal = Refusal::Malformed {
                status: 400,
                reason: "unparseable",
                message: "the request could not be parsed",
            };
            return Ok(Err(verdict(refusal, snapshot)));
        }
    };
    if a.token.is_some() {
        // Keys from a jwks_uri are fetched before the proxy reports ready; so here.
        snapshot.spawn_background();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !snapshot.auth.ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let request_id = HeaderValue::from_static("explain");
    let pipeline = Pipeline {
        snapshot,
        stores,
        mode: Mode::DryRun { claims },
        request_id: &request_id,
    };
    let original_target = req.raw_path().to_vec();
    let mut passage = Passage::default();
    let decided = pipeline.decide(&mut req, a.client, &mut passage).await;
    let admitted = !matches!(decided, Err(Refusal::Malformed { .. }));
    if admitted && req.raw_path() != original_target.as_slice() {
        println!(
            "normalised: {} {}",
            req.method,
            String::from_utf8_lossy(req.raw_path())
        );
    }
    if let Err(Refusal::Malformed { reason, .. }) = &decided {
        println!("request: refused before routing: {reason}");
    }
    if admitted {
        print_ip_rules(snapshot, passage.route.as_deref(), passage.edge.client_ip);
    }
    match &passage.route {
        None => {}
        Some(route) => {
            print_target(route, &passage);
            if let Some(resource) = &route.resource {
                println!(
                    "resource: {} (metadata {}; tokens must carry it in aud)",
                    resource.id, resource.metadata_url
                );
            }
            if let Some(step_up) = &route.step_up {
                let mut needs = Vec::new();
                if !step_up.acr.is_empty() {
                    needs.push(format!("acr one of [{}]", step_up.acr.join(", ")));
                }
                if let Some(age) = step_up.max_age {
                    needs.push(format!("auth_time within {}s", age.as_secs()));
                }
                println!("step_up: {}", needs.join(", "));
            }
            if route.accepts_dpop() {
                let dpop = &snapshot.auth.dpop;
                let origins = match dpop.public_origins.is_empty() {
                    true => {
                        "the request's own scheme and Host (no auth.dpop.public_origins)".to_owned()
                    }
                    false => dpop.public_origins.join(", "),
                };
                let nonce = match snapshot.auth.dpop_nonces.is_some() {
                    true => "required (a use_dpop_nonce answer gives one)",
                    false => "off",
                };
                println!("dpop:    proofs name {origins}; nonce {nonce}");
            }
            if snapshot.signals.is_some() && route.auth != tollgate_config::AuthMode::None {
                println!(
                    "revocation: also subjects revoked by events pushed to auth.shared_signals \
                     (held by the running gateway; not seen by explain)"
                );
            }
            print_auth(route, &passage, &decided);
            match &route.policy {
                None => println!("policy:  none (any caller that passed auth)"),
                Some(policy) if passage.caller.is_some() || decided.is_ok() || is_403(&decided) => {
                    let facts = tollgate_policy::RequestFacts::new(
                        req.method.as_str(),
                        passage.caller.as_ref().map(|c| c.claims()),
                    );
                    println!("policy:");
                    for line in policy.explain(&facts).to_string().lines() {
                        println!("  {line}");
                    }
                }
                Some(_) => println!("policy:  not reached"),
            }
            if let Some(service) = &route.ext_authz {
                // Asked for real (a check is a question, not a change); not cached.
                match passage.ext_authz {
                    Some(outcome) => println!("ext_authz: {}: {outcome}", service.name),
                    None => println!("ext_authz: {}: not reached", service.name),
                }
            }
            for (name, v) in &passage.limits_seen {
                println!(
                    "limit:   {name}: {} ({} of {} left; dry run, nothing spent)",
                    if v.allowed { "allows" } else { "refuses" },
                    v.remaining,
                    v.limit
                );
            }
            if !passage.limits_seen.is_empty() {
                println!(
                    "         (store: redis limits read the fleet's state; store: local ones this process's, not a running proxy's{})",
                    if a.client.is_none() {
                        "; without --client, address-keyed buckets are the unknown-address one"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    match decided {
        Ok(()) => {
            println!("verdict: allowed");
            Ok(Ok(()))
        }
        Err(Refusal::CorsPreflight { headers }) => {
            for (name, value) in &headers {
                println!("cors:    {name}: {value}");
            }
            println!("verdict: preflight answered by the gateway (204), not forwarded");
            Ok(Ok(()))
        }
        Err(Refusal::ResourceMetadata { body }) => {
            println!("metadata: {}", String::from_utf8_lossy(&body));
            println!(
                "verdict: protected resource metadata answered by the gateway (200), not forwarded"
            );
            Ok(Ok(()))
        }
        Err(refusal) => {
            let metadata = passage
                .route
                .as_ref()
                .and_then(|r| r.resource.as_ref())
                .map(|r| r.metadata_url.as_str());
            Ok(Err(verdict_with(refusal, snapshot, metadata)))
        }
    }
}

/// `ip_rules`, global and the route's, for the client address (`--client`).
fn print_ip_rules(
    snapshot: &RuntimeSnapshot,
    route: Option<&crate::request::runtime::RouteRuntime>,
    client: Option<std::net::IpAddr>,
) {
    let who = client.map_or("an unknown address (no --client)".to_owned(), |ip| {
        ip.to_string()
    });
    let rules = [
        ("global", Some(&snapshot.http.ip_rules)),
        ("route", route.map(|r| &r.ip_rules)),
    ];
    for (scope, rules) in rules {
        if let Some(rules) = rules.filter(|r| !r.is_empty()) {
            let verdict = if rules.admits(client) {
                "lets in"
            } else {
                "refuses"
            };
            println!("ip:      {scope} ip_rules {verdict} {who}");
        }
    }
}

/// The route and the upstream the request reaches, with why when the route has several.
fn print_target(route: &crate::request::runtime::RouteRuntime, passage: &Passage) {
    use crate::upstream::split::Why;
    let list = route.targets.list();
    let name = |i: usize| &*list[i].cluster.name;
    match passage.target.as_ref().map(|(_, why)| *why) {
        Some(Why::Only) => println!("route:   {} -> upstream {}", route.name, name(0)),
        Some(Why::Matched(i)) => println!(
            "route:   {} -> upstream {} (upstreams[{i}].when holds)",
            route.name,
            name(i)
        ),
        Some(Why::Split(i)) => {
            let total: u32 = list
                .iter()
                .filter(|t| t.when.is_empty())
                .map(|t| t.weight)
                .sum();
            println!(
                "route:   {} -> upstream {} (no when holds; weighted split, {} of {total}: this run drew it)",
                route.name,
                name(i),
                list[i].weight
            )
        }
        None if list.len() == 1 => println!("route:   {} -> upstream {}", route.name, name(0)),
        None => println!(
            "route:   {} -> upstreams {} (chosen after authorization, not reached)",
            route.name,
            list.iter()
                .map(|t| &*t.cluster.name)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn is_403(decided: &Result<(), Refusal>) -> bool {
    matches!(decided, Err(Refusal::Forbidden { .. }))
}

fn print_auth(
    route: &crate::request::runtime::RouteRuntime,
    passage: &Passage,
    decided: &Result<(), Refusal>,
) {
    use tollgate_config::AuthMode;
    match (&passage.caller, route.auth, decided) {
        (_, AuthMode::None, _) => println!("auth:    none on this route"),
        (Some(c), _, _) if !c.verified() => {
            println!("auth:    claims given on the command line (not verified)")
        }
        (Some(c), _, _) => println!("auth:    valid token from provider {}", c.provider),
        (None, _, Err(Refusal::Unauthorized { reason, detail, .. })) => {
            println!("auth:    refused: {} ({detail})", reason.as_str())
        }
        (None, _, Err(Refusal::StepUpRequired { detail, .. })) => {
            println!("auth:    valid token, but step_up refuses it: {detail}")
        }
        (None, _, Err(Refusal::MultipleTokens)) => {
            println!("auth:    refused: more than one token in the request")
        }
        (
            None,
            _,
            Err(
                Refusal::TooManyFailedAttempts { .. }
                | Refusal::TooManyWaiting
                | Refusal::Overloaded { .. },
            ),
        ) => {
            println!("auth:    not checked (pre-auth brake)")
        }
        (None, AuthMode::Optional, Ok(()) | Err(_)) => {
            println!("auth:    optional; anonymous caller")
        }
        (None, _, _) => println!("auth:    not reached"),
    }
}

/// Prints the verdict line: `verdict: refused (STATUS error/reason[/policy or limit])`.
fn verdict(refusal: Refusal, snapshot: &RuntimeSnapshot) -> Refusal {
    verdict_with(refusal, snapshot, None)
}

/// As `verdict`, with the challenges the client gets (`WWW-Authenticate`, pointing to the
/// route's resource metadata when it has one) and a DPoP nonce.
fn verdict_with(refusal: Refusal, snapshot: &RuntimeSnapshot, metadata: Option<&str>) -> Refusal {
    {
        let mut answer = refusal.answer(&snapshot.auth.realm);
        if let Some(url) = metadata {
            answer.point_to_metadata(url);
        }
        for (name, value) in &answer.headers {
            if *name == http::header::WWW_AUTHENTICATE
                || *name == crate::request::respond::DPOP_NONCE
            {
                println!("{name}: {value}");
            }
        }
        let detail = match answer.policy.or(answer.limit) {
            Some(name) => format!("/{}/{name}", answer.reason),
            None => format!("/{}", answer.reason),
        };
        println!(
            "verdict: refused ({} {}{detail})",
            answer.status, answer.error
        );
    }
    refusal
}
