//! One issuer, two kinds of token, against a real OpenID provider: panva's `oidc-provider`
//! (`tests/it/oidc/server.mjs`, installed from npm with its lockfile by `make deps-test`) on
//! 127.0.0.1 issues JWT access tokens for a resource and opaque ones otherwise, under one
//! issuer, as Keycloak, Auth0 and Okta do. The gateway verifies the JWTs by the provider's
//! discovered keys and introspects the opaque tokens, on one route.

use crate::common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const RESOURCE: &str = "https://api.example";
pub const CLIENT: (&str, &str) = ("tollgate-test", "tollgate-test-secret");

/// `node server.mjs PORT [RESOURCE…]`, killed on drop.
pub struct OpenIdProvider {
    port: u16,
    child: Child,
}

impl OpenIdProvider {
    fn start() -> OpenIdProvider {
        Self::start_for(&[])
    }

    /// With JWT access tokens for `resources` too (audience: the resource).
    pub fn start_for(resources: &[&str]) -> OpenIdProvider {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run `make deps-test` (npm ci there)",
            dir.display()
        );
        let port = free_port();
        let mut child = Command::new("node")
            .arg("server.mjs")
            .arg(port.to_string())
            .args(resources)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (see make deps-test)");
        let issuer = format!("http://127.0.0.1:{port}");
        wait_for(
            "oidc-provider's discovery document",
            Duration::from_secs(30),
            || {
                assert!(child.try_wait().unwrap().is_none(), "oidc-provider exited");
                let r = ureq::get(&format!("{issuer}/.well-known/openid-configuration"))
                    .timeout(Duration::from_secs(2))
                    .call()
                    .ok()?;
                (r.status() == 200).then_some(())
            },
        );
        OpenIdProvider { port, child }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client-credentials access token; for `resource`, a JWT, else an opaque one.
    pub fn token(&self, resource: Option<&str>) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", "read")];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let basic = base64_basic(CLIENT.0, CLIENT.1);
        let r = ureq::post(&format!("{}/token", self.issuer()))
            .set("authorization", &basic)
            .send_form(&form)
            .expect("a token from oidc-provider");
        let body: serde_json::Value = r.into_json().unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[test]
fn one_issuer_s_jwts_are_verified_by_its_keys_and_its_opaque_tokens_introspected() {
    // Issue 22 (7): `check` refused a JWT provider and an introspection provider with the
    // same issuer, so a gateway could not take both kinds of one issuer's tokens.
    let op = OpenIdProvider::start();
    let echo = Echo::start("E");
    let issuer = op.issuer();
    let gw = Gateway::start_with_env(
        &[("TEST_OP_SECRET", CLIENT.1)],
        &format!(
            "auth:
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}, {{ claim: scope, header: X-Auth-Scope }}]
  providers:
    - {{ name: op-jwt, issuer: \"{issuer}\", audiences: [\"{RESOURCE}\"], discovery: true }}
    - name: op-opaque
      issuer: \"{issuer}\"
      audiences: any
      type: introspection
      introspection: {{ endpoint: \"{issuer}/token/introspection\", client_id: {}, client_secret_env: TEST_OP_SECRET }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: api, path: /api, upstream: echo, providers: [op-jwt, op-opaque] }}
",
            CLIENT.0,
            echo.addr()
        ),
    );
    let jwt = op.token(Some(RESOURCE));
    assert_eq!(jwt.split('.').count(), 3, "a JWT for the resource");
    let opaque = op.token(None);
    assert!(!opaque.contains('.'), "an opaque token without one");
    for (token, kind) in [(&jwt, "jwt"), (&opaque, "opaque")] {
        let r = gw.get("/api", &[("authorization", &format!("Bearer {token}"))]);
        assert_eq!(r.status, 200, "{kind}: {}", r.body);
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            Some(CLIENT.0),
            "{kind}"
        );
        assert_eq!(
            r.upstream_header("x-auth-scope").as_deref(),
            Some("read"),
            "{kind}"
        );
        assert_eq!(r.upstream_header("authorization"), None, "{kind}");
    }
    assert_eq!(
        gw.metric(
            "tollgate_auth_decisions_total",
            &[("provider", "op-jwt"), ("result", "allow")]
        ),
        1.0
    );
    assert_eq!(
        gw.metric(
            "tollgate_introspection_requests_total",
            &[("provider", "op-opaque"), ("result", "active")]
        ),
        1.0
    );
    // Each kind is still checked: a JWT with a changed signature, an opaque token the
    // provider never issued.
    let (head, sig) = jwt.rsplit_once('.').unwrap();
    let flipped = format!(
        "{head}.{}{}",
        if sig.starts_with('A') { "B" } else { "A" },
        &sig[1..]
    );
    let r = gw.get("/api", &[("authorization", &format!("Bearer {flipped}"))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("signature"))
    );
    let r = gw.get(
        "/api",
        &[("authorization", "Bearer never-issued-by-the-provider")],
    );
    assert_eq!(r.status, 401, "{}", r.body);
}
