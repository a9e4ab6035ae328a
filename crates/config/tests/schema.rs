//! The JSON Schema says what `parse` does: every default it states is the one validation
//! applies, and every enum it lists is exactly what validation accepts.
//!
//! The defaults are written once, in `raw.rs`'s `schemars` attributes, beside validation's
//! own; these tests are what keep the two equal. For each key with a default, the key is
//! written with that value into a config that does not set it, and the parsed `Config` must
//! not change. For each key with an enum, every listed value must be accepted there, and a
//! value not listed refused at that key's path with a problem naming exactly the listed ones.

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use tollgate_config::{parse, schema};

/// Configs in which every object of the schema appears, each parsing without a problem. A
/// key is probed in the first one that has its parent object and does not set it.
const FIXTURES: &[&str] = &[
    r#"
server: { http: { cors: { allow_origins: ["https://app.example"] } } }
listen:
  http: 127.0.0.1:8080
  https: 127.0.0.1:8443
  tls:
    certificates: [{ cert: cert.pem, key: key.pem }]
    client_cert_headers: { subject: X-Client-Subject }
    hsts: { max_age: 365d }
metrics: { listen: 127.0.0.1:9091 }
logging: { tracing: { endpoint: "http://127.0.0.1:4318/v1/traces" } }
auth:
  providers:
    - { name: hmac, issuer: "https://hmac.example", audiences: [api], hmac_secret_env: SECRET }
    - { name: dev, issuer: "https://idp.example", audiences: [api], jwks_file: jwks.json, refresh: {} }
    - name: opaque
      type: introspection
      issuer: "https://idp.example"
      audiences: [api]
      introspection: { endpoint: "https://idp.example/introspect", client_id: gw, client_secret_env: SECRET }
    - { name: keys, type: api_key, issuer: "https://keys.example", api_keys: { file: keys.jsonl } }
  forward_claims: [{ claim: sub, header: X-Auth-Subject }]
  failed_auth_limit: { rate: 5/s }
  revocation: { file: revoked.jsonl }
  signing_keys: { issuer: "https://gw.example", current: a, keys: [{ kid: a, file: a.pem }] }
  dpop: {}
  ext_authz: { opa: { url: "https://opa.example/authz" } }
  shared_signals:
    bearer_env: SSF_TOKEN
    audience: "https://gw.example"
    transmitters: [{ issuer: "https://idp.example/ssf", jwks_file: ssf.json }]
policies:
  p: { allow: [{ roles: [admin] }], deny: [{ claims: { suspended: true } }] }
rate_limiting:
  redis: { url: "redis://127.0.0.1:6379/" }
upstreams:
  u:
    backends: [{ addr: "backend.internal:9000" }]
    protocol: h2
    lb: consistent_hash
    health_check: { type: http }
    outlier_detection: { success_rate: {} }
    circuit_breaker: {}
    retry_budget: {}
    tls: {}
    dns: {}
  shadow: { backends: [{ addr: "127.0.0.1:9001" }] }
routes:
  - name: r
    path: /
    upstreams: [{ name: u }, { name: shadow, when: { header: { x-canary: "1" } } }]
    mirror: { upstream: shadow, upstream_token: { audience: shadow } }
    cors: { allow_origins: ["https://*.example.com"] }
    upstream_token: { audience: api }
    rate_limits:
      - { name: l, rate: 10/s, tiers: { claim: plan, values: { pro: { rate: 20/s } } } }
  - { name: s, path: /s, upstream: u, providers: [dev], step_up: { acr: [phr] } }
"#,
    r#"
listen:
  https: 127.0.0.1:8443
  tls: { certificates: [{ cert: cert.pem, key: key.pem }] }
auth:
  providers: [{ name: dev, issuer: "https://idp.example", audiences: [api], jwks_file: jwks.json }]
  revocation: { redis: { url: "redis://127.0.0.1:6379/" } }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }], health_check: { type: tcp } }
routes:
  - { name: r, path: /, upstream: u, auth: none }
"#,
    r#"
metrics: { admin: {} }
auth: {}
policies:
  q: { deny: [{ claims: { suspended: true } }] }
upstreams:
  u: { backends: [{ addr: "127.0.0.1:9000" }] }
routes:
  - { name: r, path: /, upstream: u, policy: q }
"#,
];

/// A key of the schema: where it is, and its own schema.
struct Key {
    /// Steps from the root: a property name, `[]` (any item of a list) or `*` (any value of a
    /// map).
    path: Vec<String>,
    schema: Json,
    /// Its object requires it.
    required: bool,
}

fn resolve<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    match schema.get("$ref").and_then(Json::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local reference");
            &root["$defs"][name]
        }
        None => schema,
    }
}

/// Every property of every object the schema reaches, depth first.
fn keys(root: &Json) -> Vec<Key> {
    fn walk(root: &Json, schema: &Json, path: &mut Vec<String>, out: &mut Vec<Key>) {
        let schema = resolve(root, schema);
        if let Some(props) = schema.get("properties").and_then(Json::as_object) {
            let required = |name: &str| {
                schema
                    .get("required")
                    .and_then(Json::as_array)
                    .is_some_and(|r| r.iter().any(|n| n == name))
            };
            for (name, prop) in props {
                path.push(name.clone());
                out.push(Key {
                    path: path.clone(),
                    schema: prop.clone(),
                    required: required(name),
                });
                walk(root, prop, path, out);
                path.pop();
            }
        }
        if let Some(items) = schema.get("items") {
            path.push("[]".into());
            walk(root, items, path, out);
            path.pop();
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            path.push("*".into());
            walk(root, values, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut Vec::new(), &mut out);
    out
}

/// One concrete step into a YAML document.
enum Step {
    Index(usize),
    Key(Yaml),
}

/// Where `path` can be written in `node`: the steps to an object that has every parent of
/// the key and does not set the key, trying every item of a list and value of a map.
fn locate(node: &Yaml, path: &[String], replace: bool) -> Option<Vec<Step>> {
    let (first, rest) = path.split_first()?;
    let map_or_list = |steps: Option<Vec<Step>>, step: Step| {
        steps.map(|mut s| {
            s.insert(0, step);
            s
        })
    };
    if rest.is_empty() {
        let map = node.as_mapping()?;
        return (replace || !map.contains_key(first.as_str())).then(Vec::new);
    }
    match first.as_str() {
        "[]" => node
            .as_sequence()?
            .iter()
            .enumerate()
            .find_map(|(i, item)| map_or_list(locate(item, rest, replace), Step::Index(i))),
        "*" => node
            .as_mapping()?
            .iter()
            .find_map(|(k, v)| map_or_list(locate(v, rest, replace), Step::Key(k.clone()))),
        name => {
            let child = node.as_mapping()?.get(name)?;
            map_or_list(locate(child, rest, replace), Step::Key(Yaml::from(name)))
        }
    }
}

/// The first fixture where `key` can be written (see `locate`; `replace`: or where it is
/// set already), with `value` written there; and the path `parse` reports for the key.
fn with_value(key: &Key, value: &Json, replace: bool) -> Option<(String, String, String)> {
    for fixture in FIXTURES {
        let mut doc: Yaml = serde_yaml::from_str(fixture).expect("fixture is YAML");
        let Some(steps) = locate(&doc, &key.path, replace) else {
            continue;
        };
        let mut node = &mut doc;
        let mut shown = String::new();
        for step in steps {
            node = match step {
                Step::Index(i) => {
                    shown.push_str(&format!("[{i}]"));
                    &mut node.as_sequence_mut().expect("located")[i]
                }
                Step::Key(k) => {
                    if !shown.is_empty() {
                        shown.push('.');
                    }
                    shown.push_str(k.as_str().expect("keys are text"));
                    node.as_mapping_mut()
                        .expect("located")
                        .get_mut(&k)
                        .expect("located")
                }
            };
        }
        let name = key.path.last().expect("a key has a name");
        if !shown.is_empty() {
            shown.push('.');
        }
        shown.push_str(name);
        let map = node.as_mapping_mut().expect("located");
        map.insert(
            Yaml::from(name.as_str()),
            serde_yaml::to_value(value).expect("JSON is YAML"),
        );
        let changed = serde_yaml::to_string(&doc).expect("prints");
        return Some((fixture.to_string(), changed, shown));
    }
    None
}

fn debug_of(yaml: &str) -> Result<String, String> {
    parse(yaml)
        .map(|c| format!("{c:?}"))
        .map_err(|e| e.to_string())
}

#[test]
fn the_fixtures_parse_and_parse_the_same_twice() {
    for f in FIXTURES {
        let first = debug_of(f).unwrap_or_else(|e| panic!("fixture refused: {e}\n{f}"));
        assert_eq!(first, debug_of(f).unwrap(), "a parse is not deterministic");
    }
}

#[test]
fn every_default_the_schema_states_is_the_one_parse_applies() {
    let root = schema();
    let mut probed = 0;
    let mut wrong = Vec::new();
    for key in keys(&root) {
        let Some(default) = key.schema.get("default") else {
            continue;
        };
        let (fixture, changed, shown) = with_value(&key, default, false).unwrap_or_else(|| {
            panic!(
                "no fixture has the parent of {} without it: add one to FIXTURES",
                key.path.join(".")
            )
        });
        let before = debug_of(&fixture).expect("fixtures parse");
        match debug_of(&changed) {
            Ok(after) if after == before => probed += 1,
            Ok(_) => wrong.push(format!(
                "{shown}: writing the documented default {default} changes the config"
            )),
            Err(e) => wrong.push(format!(
                "{shown}: writing the documented default {default} is refused: {e}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(probed > 100, "only {probed} defaults probed");
}

/// The values a problem names in its `expected a, b or c, found …`, sorted.
fn expected_values(problem: &str) -> Option<Vec<&str>> {
    let (_, rest) = problem.split_once("expected ")?;
    let (list, _) = rest.split_once(", found")?;
    let list = list.strip_prefix("one of ").unwrap_or(list);
    let mut values: Vec<&str> = list
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .map(str::trim)
        .collect();
    values.sort_unstable();
    Some(values)
}

#[test]
fn every_enum_the_schema_lists_is_what_parse_accepts() {
    let root = schema();
    let mut probed = 0;
    let mut wrong = Vec::new();
    for key in keys(&root) {
        let Some(values) = key.schema.get("enum").and_then(Json::as_array) else {
            continue;
        };
        let bogus = Json::from("not-a-listed-value");
        for value in values.iter().chain([&bogus]) {
            let (_, changed, shown) = with_value(&key, value, key.required)
                .unwrap_or_else(|| panic!("no fixture for {}", key.path.join(".")));
            let at_key = match parse(&changed) {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .problems
                    .into_iter()
                    .filter(|p| p.path == shown)
                    .map(|p| p.to_string())
                    .collect(),
            };
            if value == &bogus {
                if let Some(named) = at_key.iter().find_map(|p| expected_values(p)) {
                    let mut listed: Vec<&str> = values.iter().filter_map(Json::as_str).collect();
                    listed.sort_unstable();
                    if named != listed {
                        wrong.push(format!(
                            "{shown}: the schema lists {listed:?}, parse names {named:?}"
                        ));
                    }
                } else {
                    wrong.push(format!(
                        "{shown}: no `expected …, found` problem in {at_key:?}"
                    ));
                }
            }
            match (value == &bogus, at_key.is_empty()) {
                (false, true) | (true, false) => probed += 1,
                (false, false) => wrong.push(format!("listed {value} refused: {at_key:?}")),
                (true, true) => wrong.push(format!("{shown}: a value not listed is accepted")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(probed > 40, "only {probed} enum values probed");
}
