//! Verification in the pipeline's authenticate step: pick the provider by the token's
//! `iss`, serve a repeat from the verified-token cache ([`crate::identity::token_cache`]) or check the
//! signature against the provider's current keys ([`crate::identity::keys`]), check the claims, and
//! turn claims into identity headers for the upstream. Finding the token in the request is
//! [`crate::identity::credentials`]'s.

use crate::identity::keys::Provider;
pub use crate::identity::token_cache::IdentityHeaders;
use crate::identity::token_cache::{CacheEntry, TokenCache};
use crate::telemetry::metrics::METRICS;
use crate::util::digest::sha256;
use http::header::{HeaderName, HeaderValue};
use pingora_core::connectors::http::Connector;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_config::Problem;
use tollgate_jwt::{Reason, Rejection, VerifiedToken};
use tollgate_policy::ClaimPath;

/// The answer to a replayed forgery.
const FORGED: Rejection = Rejection {
    reason: Reason::Signature,
    detail: "signature does not verify",
};

/// The answer to an opaque token its provider says is not active.
const INACTIVE: Rejection = Rejection {
    reason: Reason::Revoked,
    detail: "the token is not active (introspection)",
};

/// The answer to an introspected token whose `iss` is another issuer's.
const ISSUER: Rejection = Rejection {
    reason: Reason::Issuer,
    detail: "the introspection answer names another issuer",
};

/// Whether `token` has the shape of a JWS: three segments, the first a base64url JSON
/// object. Anything else is an opaque token, for an introspection provider.
fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    tollgate_jwt::codec::b64url_decode(header).is_some_and(|h| {
        h.first() == Some(&b'{') && tollgate_jwt::codec::parse_json_object(&h).is_ok()
    })
}

/// The answer to an API key that is not on file (or whose secret does not match).
const UNKNOWN_KEY: Rejection = Rejection {
    reason: Reason::Signature,
    detail: "the API key is not valid",
};

/// The answer to a token on the deny list.
const REVOKED: Rejection = Rejection {
    reason: Reason::Revoked,
    detail: "token has been revoked",
};

/// `typ` `secevent+jwt`, with or without `application/`, in any case.
fn is_security_event(typ: &str) -> bool {
    let t = typ.trim();
    let t = match t.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &t[12..],
        _ => t,
    };
    t.eq_ignore_ascii_case("secevent+jwt")
}

/// The gateway's authentication state for one snapshot.
pub struct Authenticator {
    pub providers: Vec<Arc<Provider>>,
    /// Claim path → upstream header.
    forward: Vec<(ClaimPath, HeaderName)>,
    /// Every forwarded header name: removed from every incoming request.
    pub identity_headers: Vec<HeaderName>,
    cache: TokenCache,
    pub realm: String,
    connector: Arc<Connector>,
    /// `auth.failed_auth_limit` and `auth.max_verifications_in_flight`.
    pub brakes: crate::identity::preauth::Brakes,
    /// `auth.revocation`: checked after verification, cache hits included.
    revocation: Option<Arc<crate::identity::revocation::Revocations>>,
    /// `auth.dpop`: how proofs are checked.
    pub dpop: tollgate_config::DpopSettings,
    /// `auth.dpop.nonce: on`: the nonces proofs must carry.
    pub dpop_nonces: Option<crate::identity::dpop::Nonces>,
}

/// Why `verify` gave no identity.
pub enum VerifyError {
    /// The token was checked and refused (401), by this provider when one was chosen.
    Rejected(Option<Arc<Provider>>, Rejection),
    /// The token was not in the cache and was not checked (429/503): see [`crate::identity::preauth`].
    Refused(crate::identity::preauth::PreAuthRefusal),
}

impl From<(Option<Arc<Provider>>, Rejection)> for VerifyError {
    fn from((p, r): (Option<Arc<Provider>>, Rejection)) -> Self {
        VerifyError::Rejected(p, r)
    }
}

/// A verified caller.
pub struct Identity {
    pub provider: Arc<Provider>,
    pub token: Arc<VerifiedToken>,
    pub headers: IdentityHeaders,
}

impl Authenticator {
    /// Builds the providers (reading key files and secrets: the I/O validation leaves).
    pub fn build(auth: &tollgate_config::Auth) -> Result<Authenticator, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut providers = Vec::new();
        for (i, p) in auth.providers.iter().enumerate() {
            match Provider::build(i, p) {
                Ok(p) => providers.push(Arc::new(p)),
                Err(message) => problems.push(Problem {
                    path: format!("auth.providers[{i}]"),
                    message,
                }),
            }
        }
        let revocation = match &auth.revocation {
            Some(r) => match crate::identity::revocation::Revocations::for_config(r) {
                Ok(r) => Some(r),
                Err(p) => {
                    problems.push(p);
                    None
                }
            },
            None => None,
        };
        let dpop_nonces = match &auth.dpop.nonce {
            Some(n) => match crate::identity::dpop::Nonces::load(n) {
                Ok(n) => Some(n),
                Err(message) => {
                    problems.push(Problem {
                        path: "auth.dpop.nonce_secret_env".into(),
                        message,
                    });
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let forward: Vec<(ClaimPath, HeaderName)> = auth
            .forward_claims
            .iter()
            .map(|c| (c.claim.clone(), c.header.clone()))
            .collect();
        Ok(Authenticator {
            identity_headers: forward.iter().map(|(_, h)| h.clone()).collect(),
            forward,
            providers,
            cache: TokenCache::new(auth.cache_size),
            realm: auth.realm.clone(),
            connector: Arc::new(Connector::new(None)),
            brakes: crate::identity::preauth::Brakes {
                failed_auth_limit: auth.failed_auth_limit,
                max_in_flight: auth.max_verifications_in_flight,
                max_network_waits: auth.max_network_waits_in_flight,
                max_network_waits_per_client: auth.max_network_waits_per_client,
            },
            revocation,
            dpop: auth.dpop.clone(),
            dpop_nonces,
        })
    }

    /// The deny list, when `auth.revocation` is set.
    pub fn revocation(&self) -> Option<&Arc<crate::identity::revocation::Revocations>> {
        self.revocation.as_ref()
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| &*p.name == name)
    }

    pub fn spawn_refresh(&self) {
        for p in &self.providers {
            p.spawn_refresh(self.connector.clone());
        }
        if let Some(r) = &self.revocation {
            r.spawn_watch();
        }
    }

    /// Initial keys of every provider, and the deny list, are in place.
    pub fn ready(&self) -> bool {
        self.providers.iter().all(|p| p.is_ready())
            && self.revocation.as_ref().is_none_or(|r| r.is_ready())
    }

    /// Verifies `token` for one of `providers` (chosen by the token's `iss`) at `now`, for a
    /// caller at `client`. A token not in the verified-token cache passes the pre-auth
    /// brakes first ([`crate::identity::preauth`]).
    pub async fn verify(
        &self,
        token: &str,
        providers: &[Arc<Provider>],
        now: SystemTime,
        client: Option<std::net::IpAddr>,
    ) -> Result<Identity, VerifyError> {
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let introspecting = providers.iter().find(|p| {
            p.introspector
                .as_ref()
                .is_some_and(|i| i.all_tokens || !looks_like_jwt(token))
        });
        let keyed = providers.iter().any(|p| p.api_keys.is_some())
            && (crate::identity::apikeys::looks_like_key(token)
                || providers.iter().all(|p| p.api_keys.is_some()));
        let (provider, verified, headers) = if keyed {
            let (provider, verified) = self.find_api_key(token, providers, client)?;
            let headers: IdentityHeaders = self.identity_headers(&verified.claims).into();
            (provider, verified, headers)
        } else if let Some(provider) = introspecting {
            // Boxed, as the refetch below: the call's future (an HTTP exchange) is several
            // KiB, which every JWT verification would otherwise carry and move.
            let verified = Box::pin(self.introspect(provider, token, now_s, client))
                .await
                .map_err(|e| match e {
                    Ok(r) => VerifyError::Rejected(Some(provider.clone()), r),
                    Err(refused) => VerifyError::Refused(refused),
                })?;
            let headers: IdentityHeaders = self.identity_headers(&verified.claims).into();
            (provider.clone(), verified, headers)
        } else {
            self.verify_jwt(token, providers, client).await?
        };
        if provider.introspector.is_some() {
            // RFC 7662 §2.2: `iss` is optional in an answer; when present it must be ours.
            if verified.iss.as_ref().is_some_and(|i| *i != provider.issuer) {
                return Err((Some(provider), ISSUER).into());
            }
        }
        self.accept(provider, verified, headers, now_s)
    }

    /// An API key, looked up in the route's `type: api_key` providers. A key that is not
    /// found is a failed attempt like a forged JWT: a client over its `failed_auth_limit`
    /// gets 429 before the 401 (a found key passes, as a cached JWT does).
    fn find_api_key(
        &self,
        key: &str,
        providers: &[Arc<Provider>],
        client: Option<std::net::IpAddr>,
    ) -> Result<(Arc<Provider>, Arc<VerifiedToken>), VerifyError> {
        let mut keyed = providers.iter().filter(|p| p.api_keys.is_some());
        if let Some(found) = keyed.clone().find_map(|p| {
            let token = p.api_keys.as_ref()?.find(key)?;
            Some((p.clone(), token))
        }) {
            return Ok(found);
        }
        drop(
            crate::identity::preauth::PREAUTH
                .admit(client, &self.brakes, crate::util::clock::now_ns())
                .map_err(VerifyError::Refused)?,
        );
        let only = match (keyed.next(), keyed.next()) {
            (Some(p), None) => Some(p.clone()),
            _ => None,
        };
        Err((only, UNKNOWN_KEY).into())
    }

    /// An opaque token (or any token, with `tokens: all`) asked about at `provider`'s
    /// introspection endpoint. `Err(Ok(_))`: refused (401); `Err(Err(_))`: not checked (503).
    async fn introspect(
        &self,
        provider: &Arc<Provider>,
        token: &str,
        now_s: u64,
        client: Option<std::net::IpAddr>,
    ) -> Result<Arc<VerifiedToken>, Result<Rejection, crate::identity::preauth::PreAuthRefusal>>
    {
        use crate::identity::introspect::Refused;
        let introspector = provider.introspector.as_ref().expect("chosen for it");
        let key = crate::identity::introspect::token_key(token);
        let answer = match introspector.cached(&key, now_s).await {
            Some(answer) => answer,
            None => {
                // A call waits on the network: it takes a place in the provider's network
                // budget and its client's, never a signature check's (a slow endpoint must
                // not starve local checks). Requests joining a call in flight take none.
                let admit = || {
                    crate::identity::preauth::PREAUTH.admit_network(
                        &provider.network_waits,
                        client,
                        &self.brakes,
                        crate::util::clock::now_ns(),
                    )
                };
                introspector
                    .introspect(&self.connector, token, key, now_s, admit)
                    .await
            }
        };
        answer.map_err(|r| match r {
            Refused::Inactive => Ok(INACTIVE),
            Refused::Malformed(detail) => Ok(Rejection {
                reason: Reason::Malformed,
                detail,
            }),
            Refused::BadRequest => Ok(Rejection {
                reason: Reason::Malformed,
                detail: "the introspection endpoint refused this token as a bad request",
            }),
            Refused::Budget(refusal) => Err(refusal),
            Refused::Unavailable => {
                METRICS
                    .preauth_refusals
                    .with_label_values(&["introspection_unavailable"])
                    .inc();
                Err(crate::identity::preauth::PreAuthRefusal::IntrospectionUnavailable)
            }
        })
    }

    /// A JWT: from the verified-token cache, or verified now.
    async fn verify_jwt(
        &self,
        token: &str,
        providers: &[Arc<Provider>],
        client: Option<std::net::IpAddr>,
    ) -> Result<(Arc<Provider>, Arc<VerifiedToken>, IdentityHeaders), VerifyError> {
        let key = sha256(&[token.as_bytes()]);
        // A hit names the provider that verified these exact bytes (chosen by their `iss`, so
        // the same choice as below); it counts only while that provider's keys are unchanged.
        let hit = self.cache.verified(&key, providers);
        Ok(match hit {
            Some((provider, entry)) => {
                METRICS.token_cache_hit.inc();
                (provider, entry.token.clone(), entry.headers.clone())
            }
            None => {
                let permit = crate::identity::preauth::PREAUTH
                    .admit(client, &self.brakes, crate::util::clock::now_ns())
                    .map_err(VerifyError::Refused)?;
                if let Some(provider) = self.cache.forged_for(&key, providers) {
                    METRICS.token_cache_forged.inc();
                    return Err((Some(provider), FORGED).into());
                }
                METRICS.token_cache_miss.inc();
                // Decoded once: the unverified `iss` chooses the keys, the same decoding is
                // then verified against them.
                let parsed = match tollgate_jwt::parse_token(token) {
                    Ok(parsed) => parsed,
                    Err(r) => {
                        let iss = tollgate_jwt::peek_issuer(token);
                        let provider = choose_provider(iss.as_deref(), providers)?;
                        return Err((Some(provider), r).into());
                    }
                };
                let provider = choose_provider(parsed.issuer(), providers)?;
                let keys = provider.keys();
                let mut generation = keys.generation;
                let mut result = parsed.verify_signature(&keys.set);
                drop(keys);
                if matches!(result, Err(r) if r.reason == Reason::UnknownKid)
                    && provider.refetches_keys()
                {
                    // The refetch waits on the network: it gives up its signature-check place
                    // while it waits. The refetch is one fetch per provider at a time and
                    // at most one per cooldown, however many requests wait on it, so the
                    // waiters add no network work and hold nothing that local checks need.
                    drop(permit);
                    crate::identity::preauth::before_network_wait().await;
                    // Boxed: the fetch's future is several KiB, and every call of `verify`
                    // (cache hits included) would otherwise carry and move it.
                    let changed =
                        Box::pin(provider.refetch_for_unknown_kid(&self.connector, generation))
                            .await;
                    if changed {
                        let _permit = crate::identity::preauth::PREAUTH
                            .admit(client, &self.brakes, crate::util::clock::now_ns())
                            .map_err(VerifyError::Refused)?;
                        let keys = provider.keys();
                        generation = keys.generation;
                        result = parsed.verify_signature(&keys.set);
                    }
                }
                if matches!(result, Err(r) if r.reason == Reason::Signature) {
                    self.cache.insert_forged(key, provider.index, generation);
                }
                result.map_err(|r| (Some(provider.clone()), r))?;
                let token_v = Arc::new(parsed.into_verified());
                let headers: IdentityHeaders = self.identity_headers(&token_v.claims).into();
                self.cache.insert_verified(
                    key,
                    CacheEntry {
                        provider: provider.index,
                        generation,
                        token: token_v.clone(),
                        headers: headers.clone(),
                    },
                );
                (provider, token_v, headers)
            }
        })
    }

    /// The claims stage, `require_exp` and the deny list, on a token verified or
    /// introspected for `provider`.
    fn accept(
        &self,
        provider: Arc<Provider>,
        verified: Arc<VerifiedToken>,
        headers: IdentityHeaders,
        now_s: u64,
    ) -> Result<Identity, VerifyError> {
        if let Err(r) = provider.validation.check_claims(&verified, now_s) {
            return Err((Some(provider), r).into());
        }
        // RFC 8417 §2.3: a Security Event Token is typed so that it is never taken for an
        // access token, whoever signed it (an identity provider may transmit events too).
        if verified.typ.as_deref().is_some_and(is_security_event) {
            return Err((
                Some(provider),
                Rejection {
                    reason: Reason::Type,
                    detail: "a security event token is not an access token",
                },
            )
                .into());
        }
        if provider.require_exp && verified.exp.is_none() {
            return Err((
                Some(provider),
                Rejection {
                    reason: Reason::Malformed,
                    detail: "token has no exp and the provider requires one",
                },
            )
                .into());
        }
        // After the claims, so an expired token is refused as expired; on every request,
        // so a token revoked while it sits in the verified-token cache is refused at once.
        match self.revocation.as_ref().map(|r| r.check(&verified.claims)) {
            None | Some(crate::identity::revocation::Check::Passed) => {}
            Some(crate::identity::revocation::Check::Revoked) => {
                return Err((Some(provider), REVOKED).into());
            }
            Some(crate::identity::revocation::Check::Unavailable) => {
                METRICS
                    .preauth_refusals
                    .with_label_values(&["revocation_unavailable"])
                    .inc();
                return Err(VerifyError::Refused(
                    crate::identity::preauth::PreAuthRefusal::RevocationUnavailable,
                ));
            }
        }
        // Sessions ended by a pushed security event (`auth.shared_signals`).
        if crate::identity::signals::PUSHED.revoked(&verified.claims) {
            METRICS.revocation_hits_sub.inc();
            return Err((Some(provider), REVOKED).into());
        }
        Ok(Identity {
            provider,
            token: verified,
            headers,
        })
    }

    /// The identity headers for a verified token: each configured claim that is present and
    /// can be written unambiguously (see [`claim_header_value`]).
    pub fn identity_headers(
        &self,
        claims: &serde_json::Map<String, Value>,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(self.forward.len());
        for (path, header) in &self.forward {
            let Some(claim) = path.lookup(claims) else {
                continue;
            };
            match claim_header_value(claim) {
                Some(v) => out.push((header.clone(), v)),
                // Counted once per verification: the headers are cached with the verdict.
                None => METRICS
                    .claims_not_forwarded
                    .with_label_values(&[header.as_str()])
                    .inc(),
            }
        }
        out
    }
}

/// A claim as an identity header value. One rule per JSON type, never depending on content:
///
/// - a string, number or boolean is its text (`alice`, `42`, `true`);
/// - an array is an RFC 8941 List of sf-strings, every element quoted (`"reader", "a,b"`),
///   numbers and booleans as their text; elements that are objects, arrays or null are left
///   out. Joining with bare commas would let a role `a,admin` read as two roles upstream;
///   quoting every element, not only the ones that need it, keeps the format one thing to
///   parse;
/// - anything else (object, null), an array with no element left, or text an upstream would
///   not read back exactly gives no header (and is counted): control characters (a tab
///   included), anything outside printable ASCII (`аdmin` with a Cyrillic `а` is not
///   `admin`), and, for a scalar, leading or trailing whitespace (RFC 9110 §5.5 parsers
///   trim it). Upstreams see the claim as absent rather than see a different value.
pub fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    /// A scalar's text; `Some(None)` for what a list leaves out (objects, arrays, null);
    /// `None` for a number that is not an integer of 64 bits: any other is read as a
    /// float, whose text is not the token's (`1E2` is `100.0`, `0.30000000000000001` is
    /// `0.3`, an integer beyond 64 bits `1.2345678901234568e+22`).
    fn scalar_text(v: &Value) -> Option<Option<String>> {
        Some(match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Value::Number(_) => return None,
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
    }
    let text = match value {
        Value::Array(items) => {
            let mut list = String::new();
            for item in items.iter().map(scalar_text) {
                let Some(item) = item? else { continue };
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push('"');
                for c in item.chars() {
                    match c {
                        '"' | '\\' => {
                            list.push('\\');
                            list.push(c);
                        }
                        ' '..='~' => list.push(c),
                        _ => return None,
                    }
                }
                list.push('"');
            }
            if list.is_empty() {
                return None;
            }
            list
        }
        other => {
            let text = scalar_text(other)??;
            let exact = text.bytes().all(|b| (b' '..=b'~').contains(&b))
                && !text.starts_with(' ')
                && !text.ends_with(' ');
            if !exact {
                return None;
            }
            text
        }
    };
    HeaderValue::from_str(&text).ok()
}

/// The provider whose keys verify `token`: the one whose issuer is the token's `iss`.
///
/// The issuer is read unverified only to choose whose keys to verify with; the verifier
/// then checks `iss` against that provider's issuer. A token without a readable `iss`
/// (malformed, or none set) goes to the route's only provider when it has one, whose
/// verifier then gives the precise reason.
fn choose_provider(
    iss: Option<&str>,
    providers: &[Arc<Provider>],
) -> Result<Arc<Provider>, (Option<Arc<Provider>>, Rejection)> {
    // An issuer may have a provider for its JWTs beside one introspecting its opaque
    // tokens: a JWT goes to the one with keys.
    let same_issuer = |p: &&Arc<Provider>| iss == Some(p.issuer.as_str());
    let by_issuer = providers
        .iter()
        .filter(same_issuer)
        .find(|p| p.introspector.is_none())
        .or_else(|| providers.iter().find(same_issuer));
    let chosen = by_issuer.or(match (iss, providers) {
        (None, [only]) => Some(only),
        _ => None,
    });
    chosen.cloned().ok_or((
        None,
        Rejection {
            reason: Reason::Issuer,
            detail: "no accepted provider has this token's issuer",
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    fn header(path: &str, claims: &serde_json::Map<String, Value>) -> Option<String> {
        let v = ClaimPath::parse(path)
            .unwrap()
            .lookup(claims)
            .and_then(claim_header_value)?;
        Some(v.to_str().unwrap().to_owned())
    }

    #[test]
    fn claims_by_dotted_path_and_by_literal_dotted_name() {
        let c = claims(
            r#"{"sub":"a","realm_access":{"roles":["x","y"]},"https://example.com/roles":["z"]}"#,
        );
        assert_eq!(
            header("realm_access.roles", &c).as_deref(),
            Some(r#""x", "y""#)
        );
        assert_eq!(
            header("https://example.com/roles", &c).as_deref(),
            Some(r#""z""#)
        );
        assert_eq!(header("sub", &c).as_deref(), Some("a"));
        assert_eq!(header("nope", &c), None);
    }

    #[test]
    fn array_claims_are_rfc8941_lists_of_strings() {
        let c = claims(
            r#"{"comma":["a,admin","b"],"quote":["say \"hi\"","back\\slash"],
                "mixed":[1,true,null,{"x":1},["y"],"s"],"empty":[],"objects":[{}],
                "utf8":["café"],"control":["a\u0001"],"scalar":"a,b","n":4.5,"obj":{}}"#,
        );
        // A comma inside an element stays inside one quoted string.
        assert_eq!(header("comma", &c).as_deref(), Some(r#""a,admin", "b""#));
        assert_eq!(
            header("quote", &c).as_deref(),
            Some(r#""say \"hi\"", "back\\slash""#)
        );
        assert_eq!(header("mixed", &c).as_deref(), Some(r#""1", "true", "s""#));
        // Scalars are their text; nothing that cannot be written exactly is forwarded.
        assert_eq!(header("scalar", &c).as_deref(), Some("a,b"));
        assert_eq!(header("n", &c), None, "a float is not the token's text");
        for absent in ["empty", "objects", "utf8", "control", "obj"] {
            assert_eq!(header(absent, &c), None, "{absent}");
        }
    }

    #[test]
    fn scalar_claims_an_upstream_would_read_differently_are_not_forwarded() {
        // Issue 22 (5): each of these was forwarded, and an RFC 9110 parser reads another
        // value (trimmed) or bytes that merely look like one.
        let c = claims(
            r#"{"tab":"alice\t","spaces":" admin@corp.example ","cyrillic":"\u0430dmin",
                "latin1":"al\u00efce@x","del":"a\u007f","inner":"Alice Smith","plain":"alice"}"#,
        );
        for absent in ["tab", "spaces", "cyrillic", "latin1", "del"] {
            assert_eq!(header(absent, &c), None, "{absent}");
        }
        assert_eq!(header("inner", &c).as_deref(), Some("Alice Smith"));
        assert_eq!(header("plain", &c).as_deref(), Some("alice"));
    }

    #[test]
    fn numbers_are_forwarded_only_as_the_token_wrote_their_value() {
        // Found by the attacker review: numbers were re-serialised from their f64 reading.
        let c = claims(
            r#"{"big":12345678901234567890123,"exp":1E2,"neg0":-0.0,"tiny":0.000001,
                "int":9007199254740993,"half":4.5,"precise":0.30000000000000001,
                "list":[1,12345678901234567890123],"min":-9223372036854775808}"#,
        );
        for absent in ["big", "exp", "neg0", "tiny", "half", "precise", "list"] {
            assert_eq!(header(absent, &c), None, "{absent}");
        }
        assert_eq!(header("int", &c).as_deref(), Some("9007199254740993"));
        assert_eq!(header("min", &c).as_deref(), Some("-9223372036854775808"));
    }
}
