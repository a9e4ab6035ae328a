//! Which of a route's upstreams takes a request: the first entry whose `when` holds (on
//! the canonical request's headers and cookies, or on the verified token's claims), else a
//! weighted choice among the entries without `when`; and the sampled mirror.
//!
//! Claims are only ever those of a verified token: the pipeline chooses after
//! authentication, from [`crate::request::pipeline::Caller::claims`].

use crate::limits::Claims;
use crate::telemetry::metrics::METRICS;
use crate::upstream::cluster::Cluster;
use crate::util::cookie;
use pingora_http::RequestHeader;
use prometheus::IntCounter;
use std::sync::Arc;
use tollgate_config::Condition;

/// One entry of a route's `upstreams`, compiled.
pub struct Target {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    pub when: Vec<Condition>,
}

/// Why a target was chosen (for `explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The route has one upstream.
    Only,
    /// `upstreams[i].when` held.
    Matched(usize),
    /// The weighted split among the entries without `when` drew `upstreams[i]`.
    Split(usize),
}

/// A route's targets: `upstream: NAME` is one target without `when`.
pub struct Targets {
    list: Vec<Target>,
    /// Sum of the weights of the entries without `when`.
    split_total: u32,
}

impl Targets {
    pub fn new(list: Vec<Target>) -> Targets {
        let split_total = list
            .iter()
            .filter(|t| t.when.is_empty())
            .map(|t| t.weight)
            .sum();
        Targets { list, split_total }
    }

    pub fn list(&self) -> &[Target] {
        &self.list
    }

    /// The target for a request with these headers and verified claims.
    pub fn choose(&self, req: &RequestHeader, claims: Option<&Claims>) -> (&Arc<Cluster>, Why) {
        if self.list.len() == 1 {
            return (&self.list[0].cluster, Why::Only);
        }
        for (i, t) in self.list.iter().enumerate() {
            if !t.when.is_empty() && t.when.iter().all(|c| holds(c, req, claims)) {
                return (&t.cluster, Why::Matched(i));
            }
        }
        let mut draw = fastrand::u32(..self.split_total.max(1));
        let mut last = 0;
        for (i, t) in self.list.iter().enumerate() {
            if !t.when.is_empty() {
                continue;
            }
            last = i;
            if draw < t.weight {
                return (&t.cluster, Why::Split(i));
            }
            draw -= t.weight;
        }
        (&self.list[last].cluster, Why::Split(last))
    }
}

/// Whether one condition of `when` holds.
pub fn holds(c: &Condition, req: &RequestHeader, claims: Option<&Claims>) -> bool {
    match c {
        Condition::Header(name, want) => req
            .headers
            .get_all(name.as_str())
            .iter()
            .any(|v| v.as_bytes() == want.as_bytes()),
        Condition::Cookie(name, want) => {
            // The first cookie of that name in each field.
            req.headers
                .get_all(http::header::COOKIE)
                .iter()
                .any(|v| cookie::values(v.as_bytes(), name).next() == Some(want.as_bytes()))
        }
        Condition::Claim(name, want) => match claims.and_then(|c| c.get(name)) {
            Some(serde_json::Value::Array(items)) => items.iter().any(|v| scalar_is(v, want)),
            Some(v) => scalar_is(v, want),
            None => false,
        },
    }
}

fn scalar_is(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::String(s) => s == want,
        serde_json::Value::Number(n) => n.to_string() == want,
        serde_json::Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
        _ => false,
    }
}

/// `mirror`: the shadow cluster, the share of requests copied to it, and what of the
/// request a copy may carry.
pub struct Mirror {
    pub cluster: Arc<Cluster>,
    pub percent: f64,
    shadow: ShadowCopy,
    /// answered, failed, skipped_body, dropped.
    counters: [IntCounter; 4],
}

/// What a mirrored copy leaves out. A shadow is usually a less-trusted environment: it never
/// gets a credential, and gets the caller's identity and cookies only when the operator
/// named them (`mirror.identity`, `mirror.cookies`).
pub struct ShadowCopy {
    /// The route's token sources: their headers, query parameters and cookies go.
    pub token_sources: Vec<tollgate_config::TokenSource>,
    /// The gateway-added identity headers (`forward_claims`, client certificate).
    pub identity_headers: Vec<http::HeaderName>,
    /// The route's minted token header (`upstream_token.header`): never copied.
    pub minted_header: Option<http::HeaderName>,
    pub identity: bool,
    pub cookies: bool,
    /// `mirror.upstream_token`: a token for the shadow's own audience.
    pub tokens: Option<crate::identity::mint::RouteTokens>,
}

impl ShadowCopy {
    /// `primary`, as the upstream gets it, without what the shadow may not have, and with
    /// the shadow's own minted token for a verified `caller`. `None` when that token could
    /// not be minted (the copy is not sent without it).
    fn copy(
        &self,
        primary: &RequestHeader,
        caller: Option<&crate::limits::Claims>,
    ) -> Option<RequestHeader> {
        let mut copy = primary.clone();
        copy.remove_header(&http::header::CONTENT_LENGTH);
        copy.remove_header(&http::header::TRANSFER_ENCODING);
        copy.remove_header(&http::header::PROXY_AUTHORIZATION);
        // `Authorization` and `DPoP` too, whatever `keep_authorization` says.
        crate::identity::credentials::strip(&mut copy, &self.token_sources).ok()?;
        if let Some(minted) = &self.minted_header {
            copy.remove_header(minted);
        }
        if !self.identity {
            for name in &self.identity_headers {
                copy.remove_header(name);
            }
        }
        if !self.cookies {
            copy.remove_header(&http::header::COOKIE);
        }
        if let (Some(tokens), Some(caller)) = (&self.tokens, caller) {
            let value = tokens.value_for(caller)?;
            copy.insert_header(tokens.spec.header.clone(), value).ok()?;
        }
        Some(copy)
    }
}

/// Mirrors in flight across the process; past this, copies are dropped (and counted), so a
/// slow shadow cannot pile up tasks.
const MAX_MIRRORS_IN_FLIGHT: usize = 1024;
static MIRRORS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long a mirrored copy may take in all (connect, send, answer) before it is dropped.
const MIRROR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

static CONNECTOR: once_cell::sync::Lazy<pingora_core::connectors::http::Connector> =
    once_cell::sync::Lazy::new(|| pingora_core::connectors::http::Connector::new(None));

impl Mirror {
    pub fn new(route: &str, cluster: Arc<Cluster>, percent: f64, shadow: ShadowCopy) -> Mirror {
        let counters = ["answered", "failed", "skipped_body", "dropped"].map(|r| {
            METRICS
                .mirror_requests
                .with_label_values(&[route, &cluster.name, r])
        });
        Mirror {
            cluster,
            percent,
            shadow,
            counters,
        }
    }

    /// Whether this request is in the sampled share.
    pub fn sampled(&self) -> bool {
        self.percent >= 100.0 || fastrand::f64() * 100.0 < self.percent
    }

    /// Sends a copy of `req` (the request as the upstream gets it, less what
    /// [`ShadowCopy`] leaves out) to the shadow cluster in the background; its answer is
    /// read and dropped. Requests with a body are not copied (the body streams to the
    /// upstream and is not kept), and are counted as skipped.
    pub fn send(
        &self,
        req: &RequestHeader,
        has_body: bool,
        caller: Option<&crate::limits::Claims>,
    ) {
        if has_body {
            self.counters[2].inc();
            return;
        }
        use std::sync::atomic::Ordering;
        if MIRRORS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_MIRRORS_IN_FLIGHT {
            MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            self.counters[3].inc();
            return;
        }
        let [answered, failed, ..] = self.counters.clone();
        let copy = match self.shadow.copy(req, caller) {
            Some(copy) => Box::new(copy),
            None => {
                MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
                failed.inc();
                return;
            }
        };
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let ok = tokio::time::timeout(MIRROR_TIMEOUT, mirror_once(&cluster, copy))
                .await
                .is_ok_and(|r| r.is_ok());
            if ok {
                answered.inc()
            } else {
                failed.inc()
            };
            MIRRORS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn mirror_once(cluster: &Cluster, req: Box<RequestHeader>) -> pingora_core::Result<()> {
    use pingora_core::upstreams::peer::Peer;
    let backend = cluster.select(b"", &[]).ok_or_else(|| {
        pingora_core::Error::explain(pingora_core::ErrorType::ConnectNoRoute, "no shadow backend")
    })?;
    let peer = cluster.peer(&backend);
    let (mut session, _reused) = CONNECTOR.get_http_session(&*peer).await?;
    session.write_request_header(req).await?;
    session.finish_request_body().await?;
    session.read_response_header().await?;
    while session.read_response_body().await?.is_some() {}
    CONNECTOR
        .release_http_session(session, &*peer, peer.idle_timeout())
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn cookies_are_found_by_exact_name_in_any_cookie_header() {
        let cookie = |h: &'static str, n: &'static str| cookie::values(h.as_bytes(), n).next();
        assert_eq!(cookie("a=1; canary=yes; b=2", "canary"), Some(&b"yes"[..]));
        assert_eq!(cookie("xcanary=yes", "canary"), None);
        assert_eq!(cookie("canary=\"yes\"", "canary"), Some(&b"yes"[..]));
        assert_eq!(cookie("canary", "canary"), None);
        let r = req(&[("cookie", "a=1"), ("cookie", "canary=yes")]);
        assert!(holds(
            &Condition::Cookie("canary".into(), "yes".into()),
            &r,
            None
        ));
    }

    /// One header, read by a `cookie:` token source, by the strip before the upstream and
    /// by a `when: cookie` condition: each finds the cookie exactly when the others do.
    #[test]
    fn token_sources_strips_and_split_conditions_read_cookies_alike() {
        use crate::identity::credentials::{find_token, strip};
        use tollgate_config::TokenSource;
        let headers = [
            "tok=v",
            "a=1; tok=v; b=2",
            "tok =v",
            " tok= v ",
            "tok=\"v\"",
            "xtok=v",
            "tok",
            "t ok=v",
            "to\"k=v",
            "Tok=v",
            "a=1;tok=v",
            "a=\u{e9}; tok=v",
        ];
        for h in headers {
            let r = req(&[("cookie", h)]);
            let token = find_token(&r, &[TokenSource::Cookie("tok".into())]).unwrap();
            let split = holds(&Condition::Cookie("tok".into(), "v".into()), &r, None);
            assert_eq!(
                token.is_some(),
                split,
                "{h:?}: token {token:?}, split {split}"
            );
            assert_eq!(token.is_some_and(|t| t == "v"), split, "{h:?}");
            let mut stripped = r.clone();
            strip(&mut stripped, &[TokenSource::Cookie("tok".into())]).unwrap();
            let after = find_token(&stripped, &[TokenSource::Cookie("tok".into())]).unwrap();
            assert_eq!(after, None, "{h:?}: the strip leaves no token cookie");
            let kept = stripped
                .headers
                .get("cookie")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            assert_eq!(
                kept.is_some_and(|k| k.contains("a=")),
                h.contains("a="),
                "{h:?}"
            );
        }
    }

    #[test]
    fn claims_match_strings_numbers_booleans_and_array_members_only_when_present() {
        let claims: Claims = serde_json::from_str(
            r#"{"plan":"beta","tier":2,"staff":true,"groups":["a","beta"],"obj":{"x":1}}"#,
        )
        .unwrap();
        let r = req(&[]);
        let c = |k: &str, v: &str| Condition::Claim(k.into(), v.into());
        assert!(holds(&c("plan", "beta"), &r, Some(&claims)));
        assert!(holds(&c("tier", "2"), &r, Some(&claims)));
        assert!(holds(&c("staff", "true"), &r, Some(&claims)));
        assert!(holds(&c("groups", "beta"), &r, Some(&claims)));
        assert!(!holds(&c("plan", "Beta"), &r, Some(&claims)));
        assert!(!holds(&c("obj", "{\"x\":1}"), &r, Some(&claims)));
        assert!(!holds(&c("plan", "beta"), &r, None), "no verified token");
    }

    #[test]
    fn headers_match_any_of_their_values_exactly() {
        let r = req(&[("x-canary", "0"), ("x-canary", "1")]);
        assert!(holds(
            &Condition::Header("x-canary".into(), "1".into()),
            &r,
            None
        ));
        assert!(!holds(
            &Condition::Header("x-canary".into(), "2".into()),
            &r,
            None
        ));
    }
}
