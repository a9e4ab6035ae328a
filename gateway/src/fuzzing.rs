//! Entry points for the cargo-fuzz targets in `fuzz/` (not an API: hidden from the docs).
//! Each takes arbitrary bytes, runs real gateway code on them and asserts the properties a
//! crash would break; a panic here is a finding.

use crate::limits::{bucket_key as key_of, Caller, KeyPart, Stores};
use crate::request::pipeline::{Mode, Passage, Pipeline};
use crate::request::runtime::RuntimeSnapshot;
use http::header::HeaderValue;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use tollgate_config::{Config, KeySource};
use tollgate_policy::ClaimPath;

/// A config text through validation and, when it validates and needs no outside resource
/// (files, names to resolve), through runtime compilation, twice: what `check` accepts
/// must compile, and compile the same way again.
pub fn config(text: &str) {
    let Ok(config) = tollgate_config::parse(text) else {
        return;
    };
    if needs_outside_world(&config) {
        return;
    }
    let first = RuntimeSnapshot::compile(&config).map(|s| s.router.len());
    let second = RuntimeSnapshot::compile(&config).map(|s| s.router.len());
    assert_eq!(
        first.is_ok(),
        second.is_ok(),
        "compilation is not repeatable"
    );
    assert_eq!(first.ok(), second.ok());
}

/// Files (key files, certificates, a deny list) and backend names would make a fuzz input
/// read `/dev/zero` or wait on DNS; such configs stop at validation.
fn needs_outside_world(config: &Config) -> bool {
    let files = config.auth.providers.iter().any(|p| {
        p.ca_file.is_some() || matches!(p.keys, KeySource::File(_) | KeySource::HmacFile { .. })
    });
    let names = config.upstreams.iter().any(|u| {
        u.tls.is_some()
            || u.backends
                .iter()
                .any(|b| b.addr.parse::<std::net::SocketAddr>().is_err())
    });
    files
        || names
        || config.listen.tls.is_some()
        || config.auth.revocation.is_some()
        || config.auth.signing_keys.is_some()
}

/// A fixed gateway on which requests are decided: routes with host, prefix, exact and
/// method matches, a policy and limits.
pub struct RequestHarness {
    snapshot: RuntimeSnapshot,
    stores: Stores,
    runtime: tokio::runtime::Runtime,
}

const HARNESS_CONFIG: &str = r#"
listen: { http: "127.0.0.1:8080" }
auth:
  providers:
    - name: main
      issuer: "https://issuer.test"
      audiences: any
      jwks: { keys: [] }
policies:
  admin:
    deny: [{ claims: { suspended: true } }]
    allow: [{ roles: [admin] }, { scopes: [read], methods: [GET, HEAD] }]
rate_limiting: { max_local_keys: 10000 }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9" }] }
routes:
  - { name: admin, path: /admin, upstream: u, policy: admin }
  - name: api
    path: /api
    upstream: u
    methods: [GET, POST]
    rate_limits: [{ name: per-sub, key: [claim:sub, route], rate: 100/s, burst: 10 }]
  - { name: exact, path: /exact, path_match: exact, upstream: u, auth: none }
  - { name: host, host: "*.example.com", path: /, upstream: u, auth: optional }
  - { name: public, path: /public, upstream: u, auth: none }
"#;

impl RequestHarness {
    pub fn new() -> RequestHarness {
        let config = tollgate_config::parse(HARNESS_CONFIG).expect("the harness config is valid");
        RequestHarness {
            snapshot: RuntimeSnapshot::compile(&config).expect("the harness config compiles"),
            stores: Stores::new(&config.rate_limiting).expect("local stores"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
        }
    }

    /// `data`: the method, the target, then `Name: value` header lines, separated by
    /// newlines; the last byte picks the claims. The canonical request must be a fixed
    /// point: deciding on the rewritten request gives the same answer and leaves it as is.
    pub fn request(&self, data: &[u8]) {
        let Some((&pick, data)) = data.split_last() else {
            return;
        };
        let mut lines = data.split(|b| *b == b'\n');
        let (Some(method), Some(target)) = (lines.next(), lines.next()) else {
            return;
        };
        let Ok(method) = std::str::from_utf8(method) else {
            return;
        };
        let Ok(mut req) = RequestHeader::build(method, target, None) else {
            return;
        };
        for line in lines {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) else {
                continue;
            };
            let _ = req.append_header(name, value);
        }
        let claims = match pick % 4 {
            0 => None,
            1 => Some(serde_json::json!({"sub": "a", "roles": ["admin"]})),
            2 => Some(serde_json::json!({"sub": "b", "scope": "read", "suspended": true})),
            _ => Some(serde_json::json!({"sub": 7, "scope": "read"})),
        };
        let claims = claims.and_then(|c| c.as_object().cloned()).map(Arc::new);
        let first = self.decide(&mut req, claims.clone());
        if matches!(first, Outcome::Malformed) {
            return;
        }
        let target = req.raw_path().to_vec();
        let host = req.headers.get(http::header::HOST).cloned();
        let again = self.decide(&mut req, claims);
        assert_eq!(first, again, "the canonical request decides differently");
        assert_eq!(
            req.raw_path(),
            target.as_slice(),
            "canonical target changed again"
        );
        assert_eq!(req.headers.get(http::header::HOST), host.as_ref());
    }

    fn decide(
        &self,
        req: &mut RequestHeader,
        claims: Option<Arc<crate::limits::Claims>>,
    ) -> Outcome {
        let request_id = HeaderValue::from_static("fuzz");
        let pipeline = Pipeline {
            snapshot: &self.snapshot,
            stores: &self.stores,
            mode: Mode::DryRun { claims },
            request_id: &request_id,
        };
        let mut passage = Passage::default();
        let peer: Option<IpAddr> = Some([192, 0, 2, 1].into());
        let decided = self
            .runtime
            .block_on(pipeline.decide(req, peer, &mut passage));
        let route = passage.route.as_ref().map(|r| r.name.to_string());
        match decided {
            Ok(()) => Outcome::Passed(route),
            Err(crate::request::respond::Refusal::Malformed { .. }) => Outcome::Malformed,
            Err(refusal) => Outcome::Refused(route, refusal.answer("").status),
        }
    }
}

impl Default for RequestHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Malformed,
    Passed(Option<String>),
    Refused(Option<String>, u16),
}

/// The rate-limit key builder: the first byte picks the key parts, the rest is split into
/// two values used as a header and as a claim. Two different values never share a bucket.
pub fn bucket_key(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = rest.split_at(rest.len() / 2);
    let header = http::HeaderName::from_static("x-api-key");
    let claim = ClaimPath::parse("tenant").expect("a claim path");
    let mut parts = Vec::new();
    if flags & 1 != 0 {
        parts.push(KeyPart::ClientIp);
    }
    if flags & 2 != 0 {
        parts.push(KeyPart::Route);
    }
    if flags & 4 != 0 {
        parts.push(KeyPart::Header(header.clone()));
    }
    if flags & 8 != 0 {
        parts.push(KeyPart::Claim(claim));
    }
    let v6 = flags & 16 != 0;
    let ip: IpAddr = if v6 {
        std::net::Ipv6Addr::from(u128::from_be_bytes([flags; 16])).into()
    } else {
        std::net::Ipv4Addr::from([flags; 4]).into()
    };
    let build = |value: &[u8]| {
        let mut req = RequestHeader::build("GET", b"/", None).expect("a request");
        let header_ok = HeaderValue::from_bytes(value)
            .ok()
            .map(|v| req.insert_header(header.clone(), v).is_ok())
            .unwrap_or(false);
        let text = std::str::from_utf8(value).ok();
        let mut claims = crate::limits::Claims::new();
        if let Some(t) = text {
            claims.insert("tenant".into(), t.into());
        }
        let caller = Caller {
            provider: "main",
            claims: &claims,
        };
        let key = key_of("route", "limit", &parts, 64, &req, Some(ip), Some(caller));
        (key, header_ok, text.is_some())
    };
    let (ka, ha, ta) = build(a);
    let (kb, hb, tb) = build(b);
    assert_eq!(build(a).0, ka, "the key is not deterministic");
    assert!(ka.starts_with(b"route\0limit"));
    let header_differs = flags & 4 != 0 && ha && hb && a != b;
    let claim_differs = flags & 8 != 0 && ta && tb && a != b;
    if header_differs || claim_differs {
        assert_ne!(ka, kb, "two values share one bucket");
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests set up files")]
mod tests {
    use super::*;

    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(target);
        let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(!out.is_empty(), "no seeds in {}", dir.display());
        out.sort();
        out
    }

    /// The gateway's fuzz entry points hold on their committed seeds under `cargo test`
    /// too, so a harness that breaks is seen without nightly.
    #[test]
    fn the_fuzz_harnesses_pass_on_their_seeds() {
        for text in seeds("config") {
            config(std::str::from_utf8(&text).unwrap());
        }
        let harness = RequestHarness::new();
        for data in seeds("request") {
            harness.request(&data);
        }
        for data in seeds("ratelimit_key") {
            bucket_key(&data);
        }
    }

    #[test]
    fn the_request_harness_sees_normalisation_as_a_fixed_point() {
        let harness = RequestHarness::new();
        // Rewritten on the first pass (dot segments, case, encoded unreserved characters);
        // the second pass must leave the result alone.
        for data in [
            &b"GET\n/api/./x/../%61dmin\nhost: GW.test\x01"[..],
            b"GET\nhttp://a.example.com//public\n\x00",
        ] {
            harness.request(data);
        }
    }
}
