//! Docs that cannot drift. The config's JSON Schema is derived from the serde types that read
//! the file (`tollgate_config::schema`); from it:
//! - `conf/tollgate.schema.json` must be what `tollgate schema` prints;
//! - the configuration reference (`docs/configuration.md`, between its `reference` markers)
//!   must be what this module generates: a key added without a row, or a row left after a
//!   rename, makes it stale;
//! - any Markdown table with a `default` column that names a config key by its full path
//!   must give the schema's default, and name a key that exists;
//! - every YAML file under `conf/`, the ConfigMap's config and every config example in the
//!   Markdown must validate against the schema and pass `tollgate check`;
//! - no relative link or anchor in the Markdown may be dead.
//!
//! `make docs` (`TOLLGATE_BLESS=1`) rewrites the committed schema and the reference instead
//! of comparing them.

use crate::common::BIN;
use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway sits in the workspace")
        .to_path_buf()
}

fn bless() -> bool {
    std::env::var_os("TOLLGATE_BLESS").is_some_and(|v| v != "0")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every file under `dir` whose name ends with one of `exts`, skipping build output,
/// dependencies and hidden folders.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                let skipped = ["target", "node_modules", "artifacts", "corpus", "work"];
                if !name.starts_with('.') && !skipped.contains(&name) {
                    stack.push(path);
                }
            } else if exts.iter().any(|e| name.ends_with(e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn markdown() -> Vec<PathBuf> {
    files(&repo(), &[".md"])
}

// ---------------------------------------------------------------------------------------
// The schema, walked.

fn schema() -> Json {
    tollgate_config::schema()
}

fn resolve<'a>(root: &'a Json, schema: &'a Json) -> &'a Json {
    match ref_name(schema) {
        Some(name) => &root["$defs"][name],
        None => schema,
    }
}

fn ref_name(schema: &Json) -> Option<&str> {
    schema
        .get("$ref")
        .and_then(Json::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
}

fn is_object(schema: &Json) -> bool {
    schema.get("properties").is_some()
}

/// An object of the schema and where the reference describes it.
struct Section {
    /// `listen.tls`, `auth.providers[]`, `upstreams.NAME`.
    path: String,
    /// The `$defs` name, when it has one.
    def: Option<String>,
    schema: Json,
    /// The description of the key that holds it (for a section with no type of its own).
    intro: Option<String>,
    /// One of the file's sections (`routes[]`), not an object inside one.
    top: bool,
}

/// The schema's objects in reference order: the sections in the order `parse` reads them,
/// each object followed by the objects under it, each `$defs` type once (where it first
/// appears).
fn sections(root: &Json) -> Vec<Section> {
    fn object_under<'a>(root: &'a Json, schema: &'a Json, path: &mut String) -> Option<&'a Json> {
        let s = resolve(root, schema);
        if is_object(s) {
            return Some(schema);
        }
        if let Some(items) = s.get("items") {
            path.push_str("[]");
            return object_under(root, items, path);
        }
        if let Some(values) = s.get("additionalProperties").filter(|v| v.is_object()) {
            path.push_str(".NAME");
            return object_under(root, values, path);
        }
        None
    }
    fn walk(
        root: &Json,
        schema: &Json,
        path: String,
        intro: Option<String>,
        top: bool,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<Section>,
    ) {
        let def = ref_name(schema).map(str::to_owned);
        if let Some(d) = &def {
            if !seen.insert(d.clone()) {
                return;
            }
        }
        let object = resolve(root, schema);
        out.push(Section {
            path: path.clone(),
            def,
            schema: object.clone(),
            intro,
            top,
        });
        for (key, prop) in object["properties"].as_object().expect("an object") {
            let mut child = format!("{path}.{key}");
            if let Some(s) = object_under(root, prop, &mut child) {
                walk(root, s, child, description(prop), false, seen, out);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let props = root["properties"].as_object().expect("sections");
    for section in tollgate_config::SECTIONS {
        let prop = &props[*section];
        let mut path = section.to_string();
        let object = object_under(root, prop, &mut path).expect("every section holds objects");
        walk(
            root,
            object,
            path,
            description(prop),
            true,
            &mut seen,
            &mut out,
        );
    }
    out
}

fn description(schema: &Json) -> Option<String> {
    schema
        .get("description")
        .and_then(Json::as_str)
        .map(one_line)
}

/// A doc comment's lines, joined as the paragraph they are.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` removed,
/// spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A default or enum value as the docs write it.
fn value_text(v: &Json) -> String {
    match v {
        Json::String(s) => format!("`{s}`"),
        Json::Array(items) => {
            let inner: Vec<String> = items
                .iter()
                .map(|i| match i {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            format!("`[{}]`", inner.join(", "))
        }
        other => format!("`{other}`"),
    }
}

fn range_text(s: &Json) -> String {
    match (s.get("minimum"), s.get("maximum")) {
        (Some(lo), Some(hi)) => format!(", {lo} to {hi}"),
        (Some(lo), None) if lo != 0 => format!(", at least {lo}"),
        _ => String::new(),
    }
}

/// What a key holds, for the reference's `type` column; object types link to their section.
fn type_text(root: &Json, schema: &Json, anchors: &BTreeMap<String, String>) -> String {
    if let Some(name) = ref_name(schema) {
        if let Some(anchor) = anchors.get(name) {
            return format!("[object](#{anchor})");
        }
        return match name {
            "Duration" => "duration".into(),
            "ByteSize" => "size".into(),
            _ => type_text(root, resolve(root, schema), anchors),
        };
    }
    if let Some(values) = schema.get("enum").and_then(Json::as_array) {
        let v: Vec<String> = values.iter().map(value_text).collect();
        return format!("one of {}", v.join(", "));
    }
    if let Some(c) = schema.get("const") {
        return value_text(c);
    }
    if let Some(any) = schema.get("anyOf").and_then(Json::as_array) {
        let branches: Vec<String> = any.iter().map(|b| type_text(root, b, anchors)).collect();
        return branches.join(", or ");
    }
    match schema.get("type") {
        Some(Json::String(t)) => match t.as_str() {
            "array" => format!(
                "list of {}",
                plural(&type_text(root, &schema["items"], anchors))
            ),
            "object" => match schema.get("additionalProperties").filter(|v| v.is_object()) {
                Some(values) => format!("map of name to {}", type_text(root, values, anchors)),
                None => "object".into(),
            },
            "integer" => format!("integer{}", range_text(schema)),
            "number" => format!("number{}", range_text(schema)),
            other => other.to_owned(),
        },
        Some(Json::Array(types)) => {
            let t: Vec<&str> = types.iter().filter_map(Json::as_str).collect();
            t.join(" or ")
        }
        _ => "any".into(),
    }
}

fn plural(t: &str) -> String {
    match t {
        "string" => "strings".into(),
        t if t.starts_with("[object]") => t.replacen("[object]", "[objects]", 1),
        t => t.to_owned(),
    }
}

/// Markdown table cell text.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

const BEGIN: &str = "<!-- reference:begin: generated from the schema by `make docs`; edit the doc comments in crates/config/src/raw.rs instead -->";
const END: &str = "<!-- reference:end -->";

/// The configuration reference: one section per object of the schema, a row per key.
fn reference(root: &Json) -> String {
    let sections = sections(root);
    let anchors: BTreeMap<String, String> = sections
        .iter()
        .filter_map(|s| Some((s.def.clone()?, slug(&s.path))))
        .collect();
    let mut out = String::new();
    for s in &sections {
        let depth = if s.top { "##" } else { "###" };
        out.push_str(&format!("\n{depth} `{}`\n\n", s.path));
        let own = description(&s.schema);
        if let Some(text) = own.as_ref().or(s.intro.as_ref()) {
            // A type's comment starts with its path (`` `listen.tls`: ``); the heading says it.
            let text = match text.strip_prefix(&format!("`{}`: ", s.path)) {
                Some(rest) => capitalise(rest),
                None => text.clone(),
            };
            out.push_str(&text);
            out.push_str("\n\n");
        }
        out.push_str("| key | type | default | meaning |\n|---|---|---|---|\n");
        let required: BTreeSet<&str> = s
            .schema
            .get("required")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        for (key, prop) in s.schema["properties"].as_object().expect("an object") {
            let default = match prop.get("default") {
                _ if required.contains(key.as_str()) => "required".to_owned(),
                Some(v) => value_text(v),
                None => "—".to_owned(),
            };
            out.push_str(&format!(
                "| `{key}` | {} | {} | {} |\n",
                cell(&type_text(root, prop, &anchors)),
                cell(&default),
                cell(&description(prop).unwrap_or_default()),
            ));
        }
    }
    out
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Every key path of the schema (`server.http.max_body`, `auth.providers[].leeway`,
/// `upstreams.NAME.tls.verify`) with its schema.
fn key_paths(root: &Json) -> BTreeMap<String, Json> {
    fn walk(root: &Json, schema: &Json, path: &str, out: &mut BTreeMap<String, Json>) {
        let s = resolve(root, schema);
        if let Some(props) = s.get("properties").and_then(Json::as_object) {
            for (key, prop) in props {
                let child = format!("{path}.{key}");
                out.insert(child.clone(), prop.clone());
                walk(root, prop, &child, out);
            }
        }
        if let Some(items) = s.get("items") {
            walk(root, items, &format!("{path}[]"), out);
        }
        if let Some(values) = s.get("additionalProperties").filter(|v| v.is_object()) {
            walk(root, values, &format!("{path}.NAME"), out);
        }
    }
    let mut out = BTreeMap::new();
    for section in tollgate_config::SECTIONS {
        walk(root, &root["properties"][*section], section, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Markdown, read.

/// The anchors a Markdown file defines: its headings' slugs (repeats numbered as GitHub
/// numbers them) and any `id="…"` or `name="…"` of inline HTML.
fn anchors_of(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(text, Options::all()) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = counts.entry(base.clone()).or_insert(0);
                out.insert(if *n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                });
                *n += 1;
            }
            Event::Html(h) | Event::InlineHtml(h) => {
                for attr in ["id=\"", "name=\""] {
                    for part in h.split(attr).skip(1) {
                        if let Some(end) = part.find('"') {
                            out.insert(part[..end].to_owned());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn links_of(text: &str) -> Vec<String> {
    Parser::new_ext(text, Options::all())
        .filter_map(|e| match e {
            Event::Start(Tag::Link { dest_url, .. })
            | Event::Start(Tag::Image { dest_url, .. }) => Some(dest_url.to_string()),
            _ => None,
        })
        .collect()
}

/// The fenced code blocks of one language, with the line each starts on.
fn code_blocks(text: &str, langs: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (event, range) in Parser::new_ext(text, Options::all()).into_offset_iter() {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(lang)))
                if langs.contains(&lang.split_whitespace().next().unwrap_or("")) =>
            {
                let line = text[..range.start].matches('\n').count() + 1;
                current = Some((line, String::new()));
            }
            Event::Text(t) => {
                if let Some((_, body)) = current.as_mut() {
                    body.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => out.extend(current.take()),
            _ => {}
        }
    }
    out
}

/// The rows of every table with a `default` column: (first cell, default cell, line).
fn default_rows(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut column: Option<usize> = None;
    let mut in_head = false;
    let mut row: Vec<String> = Vec::new();
    let mut cell_text: Option<String> = None;
    let mut row_line = 0;
    for (event, range) in Parser::new_ext(text, Options::all()).into_offset_iter() {
        match event {
            Event::Start(Tag::Table(_)) => column = None,
            Event::Start(Tag::TableHead) => {
                in_head = true;
                row.clear();
            }
            Event::Start(Tag::TableRow) => {
                row.clear();
                row_line = text[..range.start].matches('\n').count() + 1;
            }
            Event::Start(Tag::TableCell) => cell_text = Some(String::new()),
            Event::Text(t) => {
                if let Some(c) = cell_text.as_mut() {
                    c.push_str(&t);
                }
            }
            Event::Code(t) => {
                if let Some(c) = cell_text.as_mut() {
                    c.push('`');
                    c.push_str(&t);
                    c.push('`');
                }
            }
            Event::End(TagEnd::TableCell) => row.extend(cell_text.take()),
            Event::End(TagEnd::TableHead) => {
                in_head = false;
                column = row.iter().position(|c| c.trim() == "default");
            }
            Event::End(TagEnd::TableRow) if !in_head => {
                if let Some(c) = column {
                    if let (Some(first), Some(default)) = (row.first(), row.get(c)) {
                        out.push((first.trim().to_owned(), default.trim().to_owned(), row_line));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Config examples, checked.

/// The config an example fragment is laid over: one upstream and one route, so that a
/// fragment of any section makes a whole config. Maps merge key by key; anything else in
/// the fragment replaces the base's (a fragment's `routes` are the routes).
const BASE: &str = r#"
upstreams:
  echo: { backends: [{ addr: "127.0.0.1:9001" }] }
routes:
  - { name: base, path: /base, upstream: echo, auth: none }
"#;

fn merge(base: &mut Yaml, over: Yaml) {
    match (base, over) {
        (Yaml::Mapping(b), Yaml::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Whether a YAML document is a tollgate config (every top-level key a section); `Err` when
/// it mixes sections and other keys.
fn is_config(doc: &Yaml) -> Result<bool, String> {
    let Some(map) = doc.as_mapping() else {
        return Ok(false);
    };
    let keys: Vec<&str> = map.keys().filter_map(Yaml::as_str).collect();
    let sections = keys
        .iter()
        .filter(|k| tollgate_config::SECTIONS.contains(k))
        .count();
    match sections {
        0 => Ok(false),
        n if n == keys.len() => Ok(true),
        _ => Err(format!("mixes config sections with other keys: {keys:?}")),
    }
}

/// Checks a config given as text, written where `dev/` is `conf/dev` (the examples' key
/// files and certificates).
fn check_config(name: &str, yaml: &str, validator: &jsonschema::Validator) -> Vec<String> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::os::unix::fs::symlink(repo().join("conf/dev"), dir.path().join("dev")).expect("a symlink");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, yaml).expect("write");
    check_file(name, &file, yaml, validator)
}

/// Checks one config file against the schema and through `tollgate check`, where it lies
/// (its relative paths are its own).
fn check_file(
    name: &str,
    file: &Path,
    text: &str,
    validator: &jsonschema::Validator,
) -> Vec<String> {
    let mut problems = Vec::new();
    let doc: Json = match serde_yaml::from_str(text) {
        Ok(d) => d,
        Err(e) => return vec![format!("{name}: not YAML: {e}")],
    };
    for error in validator.iter_errors(&doc) {
        problems.push(format!(
            "{name}: schema: {error} at {}",
            error.instance_path()
        ));
    }
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(file)
        .env("INTROSPECTION_SECRET", "example-secret")
        .env("HMAC_SECRET", "an example secret of thirty-two bytes")
        .env(
            "DPOP_NONCE_KEY",
            "an example nonce key of thirty-two bytes or more",
        )
        .env(
            "SSF_PUSH_TOKEN",
            "an example push token of thirty-two bytes or more",
        )
        .output()
        .expect("tollgate runs");
    if !out.status.success() {
        problems.push(format!(
            "{name}: tollgate check: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    problems
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema compiles")
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn the_committed_schema_is_what_tollgate_schema_prints() {
    let out = Command::new(BIN)
        .arg("schema")
        .output()
        .expect("tollgate runs");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let file = repo().join("conf/tollgate.schema.json");
    if bless() {
        std::fs::write(&file, &printed).expect("write the schema");
    }
    assert!(
        read(&file) == printed,
        "conf/tollgate.schema.json is not what `tollgate schema` prints: run `make docs`"
    );
    let parsed: Json = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(parsed, schema());
    jsonschema::meta::validate(&parsed).expect("a valid JSON Schema");
}

#[test]
fn the_configuration_reference_is_generated_from_the_schema() {
    let path = repo().join("docs/configuration.md");
    let text = read(&path);
    let (head, rest) = text
        .split_once(BEGIN)
        .expect("docs/configuration.md has the reference:begin marker");
    let (_, tail) = rest
        .split_once(END)
        .expect("docs/configuration.md has the reference:end marker");
    let generated = format!("{head}{BEGIN}\n{}\n{END}{tail}", reference(&schema()));
    if bless() {
        std::fs::write(&path, &generated).expect("write the reference");
        return;
    }
    if text != generated {
        let stale: Vec<String> = generated
            .lines()
            .filter(|l| !text.lines().any(|t| t == *l))
            .take(5)
            .map(str::to_owned)
            .collect();
        panic!(
            "docs/configuration.md's reference is stale: run `make docs`. Lines it lacks:\n{}",
            stale.join("\n")
        );
    }
}

#[test]
fn every_config_key_has_a_row_and_a_meaning_in_the_reference() {
    let root = schema();
    let reference = reference(&root);
    for s in sections(&root) {
        let heading = format!("# `{}`\n", s.path);
        let body = reference
            .split(&heading)
            .nth(1)
            .unwrap_or_else(|| panic!("no section for {heading}"));
        let body = body.split("\n#").next().unwrap_or(body);
        for (key, prop) in s.schema["properties"].as_object().expect("object") {
            assert!(
                body.contains(&format!("\n| `{key}` |")),
                "{}.{key} has no row",
                s.path
            );
            assert!(
                description(prop).is_some_and(|d| !d.is_empty()),
                "{}.{key} has no meaning: give its field a doc comment in crates/config/src/raw.rs",
                s.path
            );
        }
    }
}

#[test]
fn defaults_in_the_docs_tables_are_the_schemas() {
    let root = schema();
    let keys = key_paths(&root);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in markdown() {
        let text = read(&file);
        for (key, default, line) in default_rows(&text) {
            // Only rows naming one key by its full path: `server.http.max_body`.
            let Some(path) = key
                .strip_prefix('`')
                .and_then(|k| k.strip_suffix('`'))
                .filter(|k| !k.contains('`') && k.contains(['.', '[']))
            else {
                continue;
            };
            let path = path.replace(".*.", ".NAME.").replace(".*", ".NAME");
            let at = format!("{}:{line}", rel(&file));
            match keys.get(&path) {
                None => wrong.push(format!("{at}: `{path}` is not a config key")),
                Some(s) => {
                    if let Some(d) = s.get("default") {
                        checked += 1;
                        if default != value_text(d) {
                            wrong.push(format!(
                                "{at}: `{path}` defaults to {}, the table says {default}",
                                value_text(d)
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 20, "only {checked} defaults in tables checked");
}

#[test]
fn every_config_file_and_config_example_validates_and_passes_tollgate_check() {
    let validator = validator();
    let mut problems = Vec::new();
    let mut checked = 0;
    // The files: conf/ (each starting with the line that gives editors the schema).
    for file in files(&repo().join("conf"), &[".yaml", ".yml"]) {
        let text = read(&file);
        let depth = file
            .strip_prefix(repo().join("conf"))
            .expect("under conf")
            .components()
            .count()
            - 1;
        let modeline = format!(
            "# yaml-language-server: $schema={}tollgate.schema.json",
            "../".repeat(depth)
        );
        if text.lines().next() != Some(modeline.as_str()) {
            problems.push(format!(
                "{}: the first line is not {modeline:?}",
                rel(&file)
            ));
        }
        problems.extend(check_file(&rel(&file), &file, &text, &validator));
        checked += 1;
    }
    // The ConfigMap's config, with its mounted files taken from conf/dev.
    let configmap: Yaml =
        serde_yaml::from_str(&read(&repo().join("deploy/kubernetes/configmap.yaml")))
            .expect("YAML");
    let embedded = configmap["data"]["gateway.yaml"]
        .as_str()
        .expect("the ConfigMap holds gateway.yaml");
    // The Secret's files, mounted under /etc/tollgate, are conf/dev's here.
    let local = embedded
        .replace("/etc/tollgate/tls/tls.crt", "dev/localhost.crt")
        .replace("/etc/tollgate/tls/tls.key", "dev/localhost.key")
        .replace("/etc/tollgate/keys/jwks.json", "dev/jwks.json");
    problems.extend(check_config(
        "deploy/kubernetes/configmap.yaml (gateway.yaml)",
        &local,
        &validator,
    ));
    checked += 1;
    // The Markdown's examples: each `yaml` block whose keys are config sections.
    for file in markdown() {
        let text = read(&file);
        for (line, block) in code_blocks(&text, &["yaml", "yml"]) {
            let name = format!("{}:{line}", rel(&file));
            let doc: Yaml = match serde_yaml::from_str(&block) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{name}: not YAML: {e}"));
                    continue;
                }
            };
            match is_config(&doc) {
                Ok(false) => continue,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
                Ok(true) => {}
            }
            let mut whole: Yaml = serde_yaml::from_str(BASE).expect("BASE is YAML");
            merge(&mut whole, doc);
            let yaml = serde_yaml::to_string(&whole).expect("prints");
            problems.extend(check_config(&name, &yaml, &validator));
            checked += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 10, "only {checked} configs checked");
}

#[test]
fn the_schema_refuses_what_parse_refuses_in_shape() {
    // The validator is only worth running if it catches mistakes an editor should show.
    let validator = validator();
    for (yaml, why) in [
        (
            "routes: [{ name: r, path: /, upstream: u, stip_prefix: true }]",
            "a misspelt key",
        ),
        (
            "upstreams: { u: { backends: [{ addr: a:1 }], lb: random } }",
            "a value not in the enum",
        ),
        ("server: { grace_period: 5 }", "a duration without its unit"),
        (
            "server: { http: { max_body: lots } }",
            "a size that is not one",
        ),
        ("routes: [{ path: / }]", "a missing required key"),
        ("tracing: {}", "an unknown section"),
    ] {
        let doc: Json = serde_yaml::from_str(yaml).expect("YAML");
        assert!(
            !validator.is_valid(&doc),
            "the schema accepts {why}: {yaml}"
        );
        assert!(
            tollgate_config::parse(yaml).is_err(),
            "parse accepts {why}: {yaml}"
        );
    }
}

#[test]
fn no_relative_link_or_anchor_in_the_markdown_is_dead() {
    let mut dead = Vec::new();
    let mut checked = 0;
    let mut anchor_cache: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    for file in markdown() {
        let text = read(&file);
        for link in links_of(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (target, anchor) = match link.split_once('#') {
                Some((t, a)) => (t, Some(a)),
                None => (link.as_str(), None),
            };
            let target_path = if target.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a folder").join(target)
            };
            checked += 1;
            if !target_path.exists() {
                dead.push(format!("{}: {link}: no such file", rel(&file)));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target_path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let anchors = anchor_cache
                .entry(target_path.clone())
                .or_insert_with(|| anchors_of(&read(&target_path)));
            if !anchors.contains(anchor) {
                dead.push(format!("{}: {link}: no such anchor", rel(&file)));
            }
        }
    }
    assert!(dead.is_empty(), "{}", dead.join("\n"));
    assert!(checked > 20, "only {checked} links checked");
}

#[test]
fn the_link_checker_finds_a_dead_link_and_a_dead_anchor() {
    let text =
        "# Title\n\n## A `code` heading\n\n[ok](#title) [ok](#a-code-heading) [bad](#nowhere)\n";
    let anchors = anchors_of(text);
    assert!(anchors.contains("title") && anchors.contains("a-code-heading"));
    let links = links_of(text);
    assert_eq!(links, ["#title", "#a-code-heading", "#nowhere"]);
    assert!(!anchors.contains("nowhere"));
    assert_eq!(slug("DPoP (RFC 9449)"), "dpop-rfc-9449");
    assert_eq!(slug("`listen.tls`"), "listentls");
}
