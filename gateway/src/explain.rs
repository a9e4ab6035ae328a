//! `tollgate explain`: what the gateway would decide for a request, and why: the route that
//! matches, the authentication result, every RBAC rule with pass/fail, and the verdict.
//!
//! It runs the proxy's own code: the same router, the same `Authenticator::verify`, the same
//! `Policy` (whose `explain` shares its condition checks with `evaluate`).

use crate::runtime::RuntimeSnapshot;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};
use tollgate_config::AuthMode;
use tollgate_router::Match;

pub struct ExplainArgs<'a> {
    pub config: &'a Path,
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub token: Option<&'a str>,
    pub claims: Option<&'a str>,
}

/// Prints the explanation; exit 0 when the request would be let through, 1 when refused,
/// 2 when the config or arguments are unusable.
pub fn run(a: ExplainArgs<'_>) -> ExitCode {
    let (_, snapshot) = match crate::serve::load(a.config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    runtime.block_on(explain(&snapshot, &a))
}

async fn explain(snapshot: &RuntimeSnapshot, a: &ExplainArgs<'_>) -> ExitCode {
    let method = a.method.to_ascii_uppercase();
    println!(
        "request: {method} {}{}",
        a.host.map(|h| format!("//{h}")).unwrap_or_default(),
        a.path
    );
    // The proxy routes the canonical request; so does explain.
    let hosts: Vec<&[u8]> = a.host.iter().map(|h| h.as_bytes()).collect();
    let canonical = match tollgate_canonical::canonicalize(
        method.as_bytes(),
        a.path.as_bytes(),
        &hosts,
        a.host.is_some(),
        &snapshot.http.path,
    ) {
        Ok(c) => c,
        Err(r) => {
            println!("request: refused before routing: {r} ({})", r.reason());
            println!("verdict: refused (400)");
            return ExitCode::FAILURE;
        }
    };
    if canonical.target() != a.path || canonical.host.as_deref() != a.host {
        println!(
            "normalised: {method} {}{}",
            canonical
                .host
                .as_deref()
                .map(|h| format!("//{h}"))
                .unwrap_or_default(),
            canonical.target()
        );
    }
    let route = match snapshot
        .router
        .find(canonical.host.as_deref(), &canonical.path, &method)
    {
        Match::Found(r) => r.clone(),
        Match::MethodNotAllowed(allowed) => {
            println!(
                "route:   none for this method (405; allowed: {})",
                allowed.join(", ")
            );
            println!("verdict: refused (405)");
            return ExitCode::FAILURE;
        }
        Match::NotFound => {
            println!("route:   none (404)");
            println!("verdict: refused (404)");
            return ExitCode::FAILURE;
        }
    };
    println!("route:   {} -> upstream {}", route.name, route.cluster.name);

    let claims: Option<serde_json::Map<String, serde_json::Value>>;
    match (route.auth, a.token, a.claims) {
        (AuthMode::None, _, _) => {
            println!("auth:    none on this route");
            claims = None;
        }
        (_, Some(token), _) => {
            snapshot.spawn_background();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !snapshot.auth.ready() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            match snapshot
                .auth
                .verify(token, &route.providers, SystemTime::now(), None)
                .await
            {
                Ok(identity) => {
                    println!(
                        "auth:    valid token from provider {}",
                        identity.provider.name
                    );
                    claims = Some(identity.token.claims.clone());
                }
                Err(crate::auth::VerifyError::Refused(r)) => {
                    println!("auth:    not checked: {} (pre-auth brake)", r.label());
                    println!("verdict: refused");
                    return ExitCode::FAILURE;
                }
                Err(crate::auth::VerifyError::Rejected(_, r)) => {
                    println!("auth:    refused: {} ({})", r.reason.as_str(), r.detail);
                    println!("verdict: refused (401)");
                    return ExitCode::FAILURE;
                }
            }
        }
        (_, None, Some(json)) => match serde_json::from_str::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(map)) => {
                println!("auth:    claims given on the command line (not verified)");
                claims = Some(map);
            }
            _ => {
                eprintln!("--claims must be a JSON object");
                return ExitCode::from(2);
            }
        },
        (AuthMode::Optional, None, None) => {
            println!("auth:    optional; anonymous caller");
            claims = None;
        }
        (AuthMode::Required, None, None) => {
            println!("auth:    refused: missing (no --token or --claims)");
            println!("verdict: refused (401)");
            return ExitCode::FAILURE;
        }
    }

    let allowed = match &route.policy {
        None => {
            println!("policy:  none (any caller that passed auth)");
            true
        }
        Some(policy) => {
            let facts = tollgate_policy::RequestFacts::new(&method, claims.as_ref());
            let explanation = policy.explain(&facts);
            println!("policy:");
            for line in explanation.to_string().lines() {
                println!("  {line}");
            }
            explanation.decision.effective_allow()
        }
    };
    for l in &route.limits {
        println!(
            "limit:   {} (checked per request; not evaluated here)",
            l.name
        );
    }
    if allowed {
        println!("verdict: allowed");
        ExitCode::SUCCESS
    } else {
        println!("verdict: refused (403)");
        ExitCode::FAILURE
    }
}
