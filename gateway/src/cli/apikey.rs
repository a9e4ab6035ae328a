//! `tollgate apikey create`: a new API key for a `type: api_key` provider. The key is
//! printed once, on standard output; the line for the key file (its SHA-256, never the key)
//! on standard error, or appended to `--file`.

#![allow(clippy::disallowed_methods, reason = "a command-line tool")]

use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Make a new key: the key on stdout (shown once), its file line on stderr or in --file.
    Create(CreateArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The subject the key authenticates as (`sub`).
    #[arg(long)]
    sub: String,
    /// Role, put in the `roles` array; repeat for several.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Space-separated scopes, put in the `scope` claim.
    #[arg(long)]
    scope: Option<String>,
    /// Further claims as a JSON object (tenant, …), merged last.
    #[arg(long)]
    claims: Option<String>,
    /// The key stops working this long from now (e.g. `90d`); default: never.
    #[arg(long)]
    expires_in: Option<String>,
    /// Who the key is for, kept in the file for people; not a claim.
    #[arg(long)]
    note: Option<String>,
    /// Append the line to this key file (`api_keys.file`; created if absent) instead of
    /// printing it. A running gateway picks it up within `api_keys.poll`.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Make this many keys, one per line; `{n}` in --sub is replaced by 0..count-1 (for
    /// load tests: `--sub 'partner-{n}' --count 1000`).
    #[arg(long, default_value_t = 1)]
    count: u32,
}

pub fn run(cmd: ApiKeyCommand) -> ExitCode {
    let ApiKeyCommand::Create(a) = cmd;
    match create(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate apikey create: {e}");
            ExitCode::from(2)
        }
    }
}

fn create(a: CreateArgs) -> Result<(), String> {
    let mut claims = Map::new();
    if !a.roles.is_empty() {
        claims.insert("roles".into(), a.roles.clone().into());
    }
    if let Some(scope) = &a.scope {
        claims.insert("scope".into(), scope.clone().into());
    }
    if let Some(extra) = &a.claims {
        match serde_json::from_str::<Value>(extra) {
            Ok(Value::Object(m)) => claims.extend(m),
            _ => return Err("--claims must be a JSON object".into()),
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970")?
        .as_secs();
    let exp = match &a.expires_in {
        Some(text) => Some(
            now + humantime::parse_duration(text)
                .map_err(|e| format!("--expires-in {text:?}: {e}"))?
                .as_secs(),
        ),
        None => None,
    };
    let mut keys = Vec::with_capacity(a.count as usize);
    let mut lines = String::new();
    for n in 0..a.count {
        let sub = a.sub.replace("{n}", &n.to_string());
        let (key, line) =
            crate::identity::apikeys::create(&sub, claims.clone(), exp, None, a.note.as_deref())?;
        keys.push(key);
        lines.push_str(&line);
        lines.push('\n');
    }
    match &a.file {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            f.write_all(lines.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!("appended to {}; each key is shown once:", path.display());
        }
        None => eprint!("{lines}"),
    }
    let mut out = std::io::stdout().lock();
    for key in keys {
        writeln!(out, "{key}").map_err(|e| format!("cannot write the key: {e}"))?;
    }
    Ok(())
}
