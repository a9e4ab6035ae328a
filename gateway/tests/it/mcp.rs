//! RFC 9728 protected-resource metadata, as an MCP client of 2026 meets it: the MCP
//! TypeScript SDK (`tests/it/mcp/client.mjs`, npm `@modelcontextprotocol/sdk` pinned by its
//! lockfile) talks to an MCP server from the same SDK (`tests/it/mcp/server.mjs`) behind
//! the gateway, with panva's `oidc-provider` as the authorization server. The SDK reads the
//! gateway's 401 and its metadata with its own discovery functions, finds the authorization
//! server, gets a token for the resource (client credentials, RFC 8707 `resource`) and
//! lists and calls a tool; without a token it gets the challenge.

use crate::common::*;
use crate::oidc::{OpenIdProvider, CLIENT};
use std::path::PathBuf;
use std::process::{Child, Command};

fn mcp_dir() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/mcp");
    assert!(
        dir.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP SDK is not installed in {}: run `make deps-test` (npm ci there)",
        dir.display()
    );
    dir
}

/// The MCP server, killed on drop.
struct McpServer {
    port: u16,
    child: Child,
}

impl McpServer {
    fn start() -> McpServer {
        let port = free_port();
        let child = spawn_ready(
            Command::new("node")
                .arg("server.mjs")
                .arg(port.to_string())
                .current_dir(mcp_dir()),
        );
        McpServer { port, child }
    }
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway in front of the MCP server at `http://127.0.0.1:PORT/mcp`, a resource whose
/// tokens come from `op`.
fn gateway(
    port: u16,
    op: &OpenIdProvider,
    mcp: &McpServer,
    echo: &Echo,
    resource: &str,
) -> Gateway {
    Gateway::start_at(
        port,
        &[],
        &format!(
            "auth:
  forward_claims: [{{ claim: sub, header: X-Auth-Subject }}]
  providers:
    - {{ name: op, issuer: \"{issuer}\", audiences: [\"{resource}\", \"https://api.example\"], discovery: true }}
upstreams:
  mcp: {{ backends: [{{ addr: \"127.0.0.1:{}\" }}] }}
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: mcp, path: /mcp, upstream: mcp, resource: \"{resource}\" }}
  - {{ name: other, path: /other, upstream: echo }}
",
            mcp.port,
            echo.addr(),
            issuer = op.issuer(),
        ),
    )
}

#[test]
fn the_mcp_sdk_discovers_the_authorization_server_from_the_challenge_and_calls_a_tool() {
    let port = free_port();
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let metadata_url = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    let op = OpenIdProvider::start_for(&[&resource]);
    let mcp = McpServer::start();
    let echo = Echo::start("E");
    let gw = gateway(port, &op, &mcp, &echo, &resource);

    let out = run_ok(
        Command::new("node")
            .arg("client.mjs")
            .arg(&resource)
            .args([CLIENT.0, CLIENT.1])
            .current_dir(mcp_dir()),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let seen: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(seen["error"], serde_json::Value::Null, "{seen:#}");
    // a. The challenge, as the SDK read it: where the metadata is.
    assert_eq!(seen["challenge_status"], 401, "{seen:#}");
    assert_eq!(
        seen["resource_metadata_url"],
        metadata_url.as_str(),
        "{seen:#}"
    );
    // b. The metadata: this resource, the one trusted issuer, tokens in the header.
    assert_eq!(
        seen["prm"],
        serde_json::json!({
            "resource": resource,
            "authorization_servers": [op.issuer()],
            "bearer_methods_supported": ["header"],
        })
    );
    assert_eq!(seen["as_issuer"], op.issuer().as_str());
    assert_eq!(
        seen["as_token_endpoint"],
        format!("{}/token", op.issuer()).as_str()
    );
    // c. The SDK asked for a token for this resource and used it.
    assert_eq!(seen["token_request"]["grant_type"], "client_credentials");
    assert_eq!(seen["token_request"]["resource"], resource.as_str());
    assert_eq!(seen["tools"], serde_json::json!(["whoami"]));
    // What the MCP server received: the gateway's identity header, never the token.
    assert_eq!(
        seen["whoami"],
        serde_json::json!({"subject": CLIENT.0, "authorization": false})
    );
    // d. Without a token: the challenge, which the SDK reports as 401.
    assert_eq!(seen["unauthenticated_error_code"], 401, "{seen:#}");

    // A token the same server issued for another resource is refused here (RFC 8707).
    let other = op.token(Some("https://api.example"));
    let r = gw.get("/mcp", &[("authorization", &format!("Bearer {other}"))]);
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (401, Some("audience"))
    );
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"audience\", resource_metadata=\"{metadata_url}\""
            )
            .as_str()
        )
    );
    // It passes on a route without a resource, whose challenges name none.
    assert_eq!(
        gw.get("/other", &[("authorization", &format!("Bearer {other}"))])
            .status,
        200
    );
    let r = gw.get("/other", &[]);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    // The metadata document is public, readable from any origin, and only at its path.
    let r = gw.get("/.well-known/oauth-protected-resource/mcp", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        gw.get("/.well-known/oauth-protected-resource", &[]).status,
        404
    );
    assert_eq!(
        gw.get("/.well-known/oauth-protected-resource/other", &[])
            .status,
        404
    );
    assert!(mcp.child.id() > 0);
}

#[test]
fn check_refuses_a_resource_its_providers_would_never_accept_and_an_api_key_provider() {
    let (code, _, err) = tollgate_check(
        "auth:
  providers:
    - { name: a, issuer: \"https://a\", audiences: [\"https://other\"], jwks: { keys: [] } }
    - { name: k, issuer: \"tollgate-keys\", type: api_key, api_keys: { file: keys.jsonl } }
    - { name: b, issuer: \"https://b\", audiences: any, jwks: { keys: [] } }
upstreams:
  u: { backends: [{ addr: \"127.0.0.1:1\" }] }
routes:
  - { name: r, path: /mcp, upstream: u, providers: [a, k], resource: \"https://api.example/mcp\" }
  - { name: s, path: /s, upstream: u, providers: [a], resource: \"http://api.example/s?x=1\" }
  - { name: t, path: /t, upstream: u, auth: none, resource: \"https://api.example/t\" }
  - { name: v, path: /v, upstream: u, providers: [b], resource: \"https://API.example/v\" }
  - { name: w, path: /w, upstream: u, providers: [b], resource: \"https://api.example/v\" }
  - { name: x, path: /x, upstream: u, providers: [b], resource: \"https://api.example/x\\\"y\" }
",
    );
    assert_eq!(code, 1, "{err}");
    for expected in [
        "routes[0].resource: provider \"a\" accepts other audiences only: add \"https://api.example/mcp\" to its audiences",
        "routes[0].providers[1]: provider \"k\" takes API keys",
        "routes[1].resource: must be an https:// URL (http:// only on a loopback host)",
        "routes[2].resource: does not apply with auth: none",
        "routes[4].resource: its metadata would be served where routes[3].resource's (\"https://API.example/v\") is",
        "routes[5].resource: must be written in plain URL characters",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn two_resources_at_one_path_are_told_apart_by_host_whatever_the_port() {
    let key = TestKey::es256("k");
    let (_dir, jwks) = jwks_file(&[&key]);
    let echo = Echo::start("E");
    let port = free_port();
    let gw = Gateway::start_at(
        port,
        &[],
        &format!(
            "auth:
  providers:
    - {{ name: a, issuer: \"https://a.test\", audiences: any, jwks_file: \"{}\" }}
    - {{ name: b, issuer: \"https://b.test\", audiences: any, jwks_file: \"{}\" }}
upstreams:
  echo: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - {{ name: one, host: localhost, path: /h, upstream: echo, providers: [a], resource: \"http://localhost:{port}/h\" }}
  - {{ name: two, host: 127.0.0.1, path: /h, upstream: echo, providers: [b], resource: \"http://127.0.0.1:{port}/h\" }}
",
            jwks.display(),
            jwks.display(),
            echo.addr()
        ),
    );
    for (host, issuer) in [
        ("localhost", "https://a.test"),
        ("127.0.0.1", "https://b.test"),
    ] {
        let r = gw.get(
            "/.well-known/oauth-protected-resource/h",
            &[("host", &format!("{host}:{port}"))],
        );
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(
            r.json(),
            serde_json::json!({
                "resource": format!("http://{host}:{port}/h"),
                "authorization_servers": [issuer],
                "bearer_methods_supported": ["header"],
            })
        );
    }
    // Another host has neither document.
    let r = gw.get(
        "/.well-known/oauth-protected-resource/h",
        &[("host", "evil.test")],
    );
    assert_eq!(r.status, 404);
}
