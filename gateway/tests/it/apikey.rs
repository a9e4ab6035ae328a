//! API keys (`type: api_key`) through the real proxy: a key's claims meet the same RBAC,
//! rate limits and identity headers as a JWT's (checked at the upstream), unknown keys are
//! braked like forged tokens, keys expire and rotate through the watched file, and no key
//! is kept or logged in clear.

use crate::common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const ISS: &str = "https://issuer.test";
const KEYS_ISS: &str = "https://keys.test";

/// `tollgate apikey create` appending to `file`: the key.
fn create_key(file: &std::path::Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new(BIN)
            .args(["apikey", "create", "--file", file.to_str().unwrap()])
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Setup {
    gw: Gateway,
    echo: Echo,
    jwt: TestKey,
    keys: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A JWT provider and a key provider on the same routes, one policy, one limit per
/// subject, and forwarded claims.
fn setup(preface: &str, create: &[&[&str]]) -> (Setup, Vec<String>) {
    let echo = Echo::start("E");
    let jwt = TestKey::es256("k");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks(&[&jwt])).unwrap();
    let keys = dir.path().join("keys.jsonl");
    std::fs::write(&keys, "# partner keys\n").unwrap();
    let made: Vec<String> = create.iter().map(|a| create_key(&keys, a)).collect();
    let yaml = format!(
        "auth:
{preface}  forward_claims:
    - {{ claim: sub, header: x-auth-subject }}
    - {{ claim: tenant, header: x-tenant }}
    - {{ claim: roles, header: x-auth-roles }}
  providers:
    - {{ name: idp, issuer: \"{ISS}\", audiences: any, jwks_file: \"{}\" }}
    - name: partners
      type: api_key
      issuer: \"{KEYS_ISS}\"
      api_keys: {{ file: \"{}\", poll: 100ms }}
      token_sources: [\"header:x-api-key\", \"query:api_key\"]
policies:
  partners:
    allow:
      - {{ roles: [partner] }}
upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}
routes:
  - name: partner
    path: /partner
    upstream: e
    policy: partners
    rate_limits:
      - {{ name: per-user, key: \"claim:sub\", rate: 1/min, burst: 3 }}
  - {{ name: open, path: /, upstream: e }}
",
        jwks_path.display(),
        keys.display(),
        echo.addr()
    );
    let gw = Gateway::start(&yaml);
    (
        Setup {
            gw,
            echo,
            jwt,
            keys,
            _dir: dir,
        },
        made,
    )
}

fn bearer(key: &TestKey, sub: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({ "iss": ISS, "sub": sub, "exp": 4_000_000_000u64 });
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    format!("Bearer {}", key.sign(claims))
}

#[test]
fn an_api_keys_claims_meet_the_same_policy_as_a_jwts() {
    let (s, keys) = setup(
        "",
        &[&["--sub", "acme", "--role", "partner"], &["--sub", "other"]],
    );
    let r = s.gw.get("/partner", &[("x-api-key", &keys[0])]);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.gw.get("/partner", &[("x-api-key", &keys[1])]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["reason"], "policy");
    assert_eq!(r.json()["policy"], "partners");
    // The same claims in a JWT get the same answers.
    let jwt = bearer(&s.jwt, "acme", json!({ "roles": ["partner"] }));
    assert_eq!(s.gw.get("/partner", &[("authorization", &jwt)]).status, 200);
    let jwt = bearer(&s.jwt, "other", json!({}));
    assert_eq!(s.gw.get("/partner", &[("authorization", &jwt)]).status, 403);
    assert_eq!(
        s.gw.metric(
            "tollgate_auth_decisions_total",
            &[("provider", "partners"), ("result", "allow")]
        ),
        2.0
    );
}

#[test]
fn an_api_keys_subject_is_rate_limited_like_a_jwts_across_its_keys() {
    // Two keys of one subject (a rotation's overlap): one caller, one bucket.
    let (s, keys) = setup(
        "",
        &[
            &["--sub", "acme", "--role", "partner"],
            &["--sub", "acme", "--role", "partner"],
        ],
    );
    for i in 0..2 {
        let r = s.gw.get("/partner", &[("x-api-key", &keys[0])]);
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &keys[1])]).status, 200);
    // The subject's burst of 3 is spent, whichever key spent it.
    let r = s.gw.get(&format!("/partner?api_key={}", keys[1]), &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "per-user");
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &keys[0])]).status, 429);
    // A JWT's `acme` from another issuer is another caller (limits key on iss and sub),
    // limited by the same rule.
    let jwt = bearer(&s.jwt, "acme", json!({ "roles": ["partner"] }));
    let statuses: Vec<u16> = (0..4)
        .map(|_| s.gw.get("/partner", &[("authorization", &jwt)]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn an_api_keys_claims_reach_the_upstream_as_identity_headers_and_the_key_does_not() {
    let (s, keys) = setup(
        "",
        &[&[
            "--sub",
            "acme",
            "--role",
            "partner",
            "--claims",
            r#"{"tenant":"t-42"}"#,
            "--note",
            "Acme Corp",
        ]],
    );
    let r = s.gw.get(
        "/partner/x?api_key=keep-me-not&a=1",
        &[
            ("x-api-key", &keys[0]),
            ("x-tenant", "forged"),
            ("x-auth-subject", "root"),
        ],
    );
    // Two credentials (header and query) are refused as ambiguous, as two tokens are.
    assert_eq!(r.status, 400, "{}", r.body);
    let r = s.gw.get(
        "/partner/x?a=1",
        &[
            ("x-api-key", &keys[0]),
            ("x-tenant", "forged"),
            ("x-auth-subject", "root"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("acme"));
    assert_eq!(r.upstream_header("x-tenant").as_deref(), Some("t-42"));
    assert_eq!(
        r.upstream_header("x-auth-roles").as_deref(),
        Some("\"partner\"")
    );
    assert_eq!(
        r.upstream_header("x-api-key"),
        None,
        "the key is not forwarded"
    );
    // By query: the parameter is removed from what the upstream receives.
    let r =
        s.gw.get(&format!("/partner/y?a=1&api_key={}", keys[0]), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let path = r.json()["path"].as_str().unwrap().to_owned();
    assert!(
        !path.contains("api_key") && !path.contains(&keys[0]),
        "{path}"
    );
    assert!(s.echo.count() >= 2);
}

#[test]
fn unknown_keys_are_refused_and_brake_the_client_like_forged_tokens() {
    let (s, keys) = setup(
        "  failed_auth_limit: { rate: 1/min, burst: 3 }\n",
        &[&["--sub", "acme", "--role", "partner"]],
    );
    // The right id with another secret, a key of the right shape never issued, and junk.
    let id_part = &keys[0][..21];
    let forged = format!("{id_part}{}", "A".repeat(43));
    let unknown = format!("tgk_0123456789abcdef_{}", "B".repeat(43));
    // A burst of 3 lets 4 failures through (the fourth empties it).
    for k in [forged.as_str(), unknown.as_str(), "tgk_nonsense", "tgk_"] {
        let r = s.gw.get("/partner", &[("x-api-key", k)]);
        assert_eq!(r.status, 401, "{k}");
        assert_eq!(r.json()["reason"], "signature");
    }
    let r = s.gw.get("/partner", &[("x-api-key", &forged)]);
    assert_eq!(r.status, 429, "over the failed-attempt limit: {}", r.body);
    assert_eq!(r.json()["reason"], "failed_auth_limit");
    // A valid key still passes, as a cached JWT does.
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &keys[0])]).status, 200);
    assert!(
        s.gw.metric(
            "tollgate_auth_decisions_total",
            &[
                ("provider", "partners"),
                ("result", "deny"),
                ("reason", "signature")
            ]
        ) >= 3.0
    );
}

#[test]
fn keys_expire_and_rotate_with_overlap_without_a_restart() {
    let (s, keys) = setup(
        "",
        &[&["--sub", "acme", "--role", "partner", "--expires-in", "1h"]],
    );
    let old = &keys[0];
    assert_eq!(s.gw.get("/open", &[("x-api-key", old)]).status, 200);
    // Rotation: a second key for the subject is added; both work.
    let new = create_key(&s.keys, &["--sub", "acme", "--role", "partner"]);
    wait_for("the new key", Duration::from_secs(10), || {
        (s.gw.get("/open", &[("x-api-key", &new)]).status == 200).then_some(())
    });
    assert_eq!(s.gw.get("/open", &[("x-api-key", old)]).status, 200);
    // The old line is removed: the old key stops, the new one goes on.
    let old_id = &old[4..20];
    let text = std::fs::read_to_string(&s.keys).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains(old_id))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s.keys, kept).unwrap();
    wait_for("the old key refused", Duration::from_secs(10), || {
        (s.gw.get("/open", &[("x-api-key", old)]).status == 401).then_some(())
    });
    assert_eq!(s.gw.get("/open", &[("x-api-key", &new)]).status, 200);
    // Removing the file revokes every key; putting it back restores them.
    let kept = std::fs::read_to_string(&s.keys).unwrap();
    std::fs::remove_file(&s.keys).unwrap();
    wait_for("no key without the file", Duration::from_secs(10), || {
        (s.gw.get("/open", &[("x-api-key", &new)]).status == 401).then_some(())
    });
    std::fs::write(&s.keys, kept).unwrap();
    wait_for("the keys back", Duration::from_secs(10), || {
        (s.gw.get("/open", &[("x-api-key", &new)]).status == 200).then_some(())
    });
    // A bad rewrite keeps the last good keys.
    std::fs::write(&s.keys, "{not json\n").unwrap();
    wait_for("the failed reload counted", Duration::from_secs(10), || {
        (s.gw.metric(
            "tollgate_api_key_reloads_total",
            &[("provider", "partners"), ("result", "error")],
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(s.gw.get("/open", &[("x-api-key", &new)]).status, 200);
    // An expired key is refused as expired.
    let dir = tempfile::tempdir().unwrap();
    let line_file = dir.path().join("l");
    let expired = create_key(&line_file, &["--sub", "late", "--role", "partner"]);
    let line = std::fs::read_to_string(&line_file).unwrap();
    let line = line
        .trim()
        .replace("\"sub\":\"late\"", "\"sub\":\"late\",\"exp\":1000");
    std::fs::write(
        &s.keys,
        format!("{}\n{line}\n", text.lines().last().unwrap()),
    )
    .unwrap();
    wait_for("the expired key read", Duration::from_secs(10), || {
        let r = s.gw.get("/open", &[("x-api-key", &expired)]);
        (r.status == 401 && r.json()["reason"] == "expired").then_some(())
    });
}

#[test]
fn no_key_is_kept_in_the_file_or_written_to_the_log() {
    let (s, keys) = setup("", &[&["--sub", "acme", "--role", "partner"]]);
    let key = &keys[0];
    let secret = &key[21..];
    assert_eq!(s.gw.get("/partner", &[("x-api-key", key)]).status, 200);
    let forged = format!("{}{}", &key[..21], "C".repeat(43));
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &forged)]).status, 401);
    assert_eq!(
        s.gw.get(&format!("/partner?api_key={forged}"), &[]).status,
        401
    );
    let file = std::fs::read_to_string(&s.keys).unwrap();
    assert!(!file.contains(secret), "the file holds the key: {file}");
    assert!(file.contains(&format!("\"id\":\"{}\"", &key[4..20])));
    // The log writer is asynchronous: wait until both refusals' access lines are written.
    let log = wait_for("the two 401 access lines", Duration::from_secs(10), || {
        let log = s.gw.proc.log_text();
        (log.matches("\"status\":401").count() >= 2).then_some(log)
    });
    for k in [secret, &forged[21..]] {
        assert!(!log.contains(k), "a key reached the log");
    }
}

#[test]
fn check_refuses_bad_api_key_providers_at_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\":\"0123456789abcdef\",\"sha256\":\"00\",\"sub\":\"a\"}\n",
    )
    .unwrap();
    let tail = "upstreams:\n  e: { backends: [{ addr: \"127.0.0.1:1\" }] }\nroutes:\n  - { name: r, path: /, upstream: e }\n";
    let (code, _, err) = tollgate_check(&format!(
        "auth:
  providers:
    - {{ name: a, type: api_key, issuer: k }}
    - {{ name: b, type: api_key, issuer: k2, api_keys: {{ file: \"{}\" }}, dpop: required }}
    - {{ name: c, issuer: k3, audiences: any, api_keys: {{ file: x }} }}
{tail}",
        bad.display()
    ));
    assert_eq!(code, 1);
    for expected in [
        "auth.providers[0].api_keys: is required with type: api_key",
        "auth.providers[1].dpop: does not apply to API keys",
        "auth.providers[2].type: must be api_key",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // The file is read once the file's problems are gone.
    let (code, _, err) = tollgate_check(&format!(
        "auth:\n  providers:\n    - {{ name: b, type: api_key, issuer: k2, api_keys: {{ file: \"{}\" }} }}\n{tail}",
        bad.display()
    ));
    assert_eq!(code, 1);
    assert!(
        err.contains("auth.providers[0]: b: line 1: sha256 must be 64 lowercase hex digits"),
        "{err}"
    );
}

#[test]
fn explain_takes_an_api_key_and_shows_the_same_decision_as_the_proxy() {
    let (s, keys) = setup(
        "",
        &[&["--sub", "acme", "--role", "partner"], &["--sub", "other"]],
    );
    let explain = |key: &str| {
        let out = Command::new(BIN)
            .args([
                "explain",
                "-c",
                s.gw.conf_path().to_str().unwrap(),
                "--path",
                "/partner",
                "--token",
                key,
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = explain(&keys[0]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("auth:    valid token from provider partners"),
        "{out}"
    );
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &keys[0])]).status, 200);
    let (code, out) = explain(&keys[1]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("verdict: refused (403 forbidden/policy/partners)"),
        "{out}"
    );
    assert_eq!(s.gw.get("/partner", &[("x-api-key", &keys[1])]).status, 403);
}
