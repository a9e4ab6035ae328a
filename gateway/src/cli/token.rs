//! `tollgate token verify|mint|inspect`: the verifier and signer of `tollgate-jwt` on the
//! command line, for the conformance corpus, development and debugging.
//!
//! `verify` is the contract of the shared conformance runner: one JSON object on stdout,
//! exit 0 valid, 1 invalid, 2 usage error or unreadable key file.

#![allow(clippy::disallowed_methods, reason = "a command-line tool")]

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_jwt::{Algorithm, KeySet, SigningKey, Validation};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Verify a token against a key set; prints one JSON verdict.
    Verify(VerifyArgs),
    /// Sign a token from a private key (PKCS#8 PEM) or an HMAC secret file.
    Mint(MintArgs),
    /// Decode a token WITHOUT verifying it.
    Inspect {
        /// The compact JWT.
        token: String,
    },
    /// Add an entry to the deny list that `auth.revocation` reads (a file or Redis).
    Revoke(RevokeArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sub"])))]
#[command(group(clap::ArgGroup::new("where").required(true).args(["file", "redis"])))]
pub struct RevokeArgs {
    /// Revoke the token with this `jti`.
    #[arg(long)]
    jti: Option<String>,
    /// Revoke this subject's tokens issued before --before.
    #[arg(long)]
    sub: Option<String>,
    /// With --sub: unix seconds or RFC 3339 time; tokens whose `iat` is earlier (or that
    /// have none) are revoked. Default: now.
    #[arg(long, requires = "sub")]
    before: Option<String>,
    /// Only this issuer's tokens (default: every issuer's).
    #[arg(long)]
    iss: Option<String>,
    /// Append to this deny-list file (`auth.revocation.file`); created if absent.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Add to the Redis deny list (`auth.revocation.redis.url`).
    #[arg(long)]
    redis: Option<String>,
    /// The Redis key (`auth.revocation.redis.key`).
    #[arg(long, default_value = "tollgate:revoked", requires = "redis")]
    key: String,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// JWKS file (or a single JWK, or a PEM public key / certificate).
    #[arg(long)]
    jwks: PathBuf,
    /// Evaluate at this time (unix seconds) instead of now.
    #[arg(long)]
    at: Option<u64>,
    /// Allowed clock skew in seconds for exp, nbf and iat.
    #[arg(long, default_value_t = 0)]
    leeway: u64,
    /// Required `iss`.
    #[arg(long)]
    issuer: Option<String>,
    /// Accepted audience; repeat for several (the token's `aud` must contain one).
    #[arg(long = "audience")]
    audiences: Vec<String>,
    /// Accepted header `typ` (e.g. `at+jwt`); repeat for several. Default: not checked.
    #[arg(long = "token-type")]
    token_types: Vec<String>,
    /// The compact JWT, or `-` to read it from standard input (trailing whitespace removed;
    /// for tokens too long for a command line, or to keep them out of `ps`).
    token: String,
}

#[derive(Args)]
pub struct MintArgs {
    /// Private key, PKCS#8 PEM (EC P-256/P-384, RSA, Ed25519).
    #[arg(
        long,
        conflicts_with = "hmac_secret_file",
        required_unless_present = "hmac_secret_file"
    )]
    key: Option<PathBuf>,
    /// File holding an HMAC secret (its bytes, trailing newline removed).
    #[arg(long)]
    hmac_secret_file: Option<PathBuf>,
    /// Algorithm (default: the key's natural one; HS256 for secrets).
    #[arg(long)]
    alg: Option<String>,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    iss: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    /// Audience; repeat for several.
    #[arg(long = "aud")]
    audiences: Vec<String>,
    /// Lifetime from now, e.g. `1h`, `15m`.
    #[arg(long, default_value = "1h")]
    expires_in: String,
    /// Space-separated scopes, put in the `scope` claim.
    #[arg(long)]
    scope: Option<String>,
    /// Role, put in the `roles` array; repeat for several.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Further claims as a JSON object, merged last.
    #[arg(long)]
    claims: Option<String>,
    /// Print this many tokens, one per line; `{n}` in --sub is replaced by 0..count-1
    /// (for load tests: e.g. `--sub 'user-{n}' --count 200000`).
    #[arg(long, default_value_t = 1)]
    count: u32,
}

pub fn run(cmd: TokenCommand) -> ExitCode {
    match cmd {
        TokenCommand::Verify(a) => verify(a),
        TokenCommand::Mint(a) => match mint(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => usage_error(&e),
        },
        TokenCommand::Inspect { token } => inspect(&token),
        TokenCommand::Revoke(a) => match revoke(a) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(&e),
        },
    }
}

/// A Redis URL for messages: any password replaced by `***`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Writes one deny-list entry; returns it as written.
fn revoke(a: RevokeArgs) -> Result<String, String> {
    if a.jti.is_some() && a.before.is_some() {
        return Err("--before goes with --sub, not --jti".into());
    }
    let revoked_before = match (&a.sub, a.before.as_deref()) {
        (None, _) => None,
        (Some(_), None) => Some(now()),
        (Some(_), Some(t)) if t.bytes().all(|b| b.is_ascii_digit()) => Some(
            t.parse()
                .map_err(|_| format!("--before {t}: out of range"))?,
        ),
        (Some(_), Some(t)) => Some(
            humantime::parse_rfc3339_weak(t)
                .map_err(|e| format!("--before {t}: {e} (give unix seconds or RFC 3339)"))?
                .duration_since(UNIX_EPOCH)
                .map_err(|_| format!("--before {t}: before 1970"))?
                .as_secs(),
        ),
    };
    let entry = tollgate_jwt::DenyEntry {
        jti: a.jti,
        sub: a.sub,
        revoked_before,
        iss: a.iss,
    };
    let line = entry.to_line();
    tollgate_jwt::DenyList::from_entries([line.as_str()])
        .map_err(|e| format!("not a valid entry: {}", e[0].message))?;
    if let Some(path) = &a.file {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // One write of a whole line, starting on a line of its own: a gateway re-reading
        // the file never sees half an entry joined to another.
        let mut last = [0u8; 1];
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let needs_newline = len > 0
            && f.seek(SeekFrom::End(-1)).is_ok()
            && f.read_exact(&mut last).is_ok()
            && last[0] != b'\n';
        let text = format!("{}{line}\n", if needs_newline { "\n" } else { "" });
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        // A list with a bad line is refused whole by the gateway, which keeps its last good
        // list: the entry just written would not take effect. Say so.
        let whole = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read back {}: {e}", path.display()))?;
        if let Err(errors) = tollgate_jwt::DenyList::parse(&whole) {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(format!(
                "the entry was appended, but {} has bad lines ({}): gateways keep their last good list until they are fixed",
                path.display(),
                lines.join("; ")
            ));
        }
    }
    if let Some(url) = &a.redis {
        let shown = without_password(url);
        let client = redis::Client::open(url.as_str()).map_err(|e| format!("{shown}: {e}"))?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
        // The set and its version in one transaction: gateways poll the version.
        redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(&a.key)
            .arg(&line)
            .ignore()
            .cmd("INCR")
            .arg(format!("{}:version", a.key))
            .ignore()
            .query::<()>(&mut conn)
            .map_err(|e| format!("redis: {e}"))?;
    }
    Ok(line)
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("tollgate token: {message}");
    ExitCode::from(2)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn load_key_set(path: &Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    crate::identity::jwks::parse_key_file(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn verify(a: VerifyArgs) -> ExitCode {
    let keys = match load_key_set(&a.jwks) {
        Ok(k) => k,
        Err(e) => return usage_error(&e),
    };
    let token = match read_token(a.token) {
        Ok(t) => t,
        Err(e) => return usage_error(&e),
    };
    let validation = Validation {
        leeway_s: a.leeway,
        issuer: a.issuer,
        audiences: a.audiences,
        token_types: a.token_types,
    };
    let result = tollgate_jwt::verify(&token, &keys, &validation, a.at.unwrap_or_else(now));
    println!("{}", tollgate_jwt::verdict_json(&result));
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The token argument, or standard input for `-`. The verifier refuses anything above
/// `MAX_TOKEN_BYTES` itself; reading stops a little past that so that the verdict is
/// `too_large` rather than an out-of-memory on an endless pipe.
fn read_token(arg: String) -> Result<String, String> {
    use std::io::Read;
    if arg != "-" {
        return Ok(arg);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(tollgate_jwt::MAX_TOKEN_BYTES as u64 * 4)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
    let mut text =
        String::from_utf8(bytes).map_err(|_| "the token on standard input is not UTF-8")?;
    text.truncate(text.trim_end().len());
    Ok(text)
}

fn mint(a: MintArgs) -> Result<(), String> {
    let key = match (&a.key, &a.hmac_secret_file) {
        (Some(path), _) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            SigningKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?
        }
        (None, Some(path)) => {
            let mut secret =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            let alg = parse_alg(a.alg.as_deref().unwrap_or("HS256"))?;
            SigningKey::hmac(&secret, alg).map_err(|e| e.to_string())?
        }
        (None, None) => return Err("give --key or --hmac-secret-file".into()),
    };
    let alg = match &a.alg {
        Some(name) => parse_alg(name)?,
        None => key.default_algorithm(),
    };
    let lifetime = humantime_duration(&a.expires_in)?;
    let now = now();
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + lifetime.as_secs()).into());
    if let Some(iss) = a.iss {
        claims.insert("iss".into(), iss.into());
    }
    match a.audiences.len() {
        0 => {}
        1 => {
            claims.insert("aud".into(), a.audiences[0].clone().into());
        }
        _ => {
            claims.insert("aud".into(), a.audiences.clone().into());
        }
    }
    if let Some(scope) = a.scope {
        claims.insert("scope".into(), scope.into());
    }
    if !a.roles.is_empty() {
        claims.insert("roles".into(), a.roles.into());
    }
    if let Some(extra) = a.claims {
        let Value::Object(extra) =
            serde_json::from_str::<Value>(&extra).map_err(|e| format!("--claims: {e}"))?
        else {
            return Err("--claims must be a JSON object".into());
        };
        claims.extend(extra);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for n in 0..a.count {
        if let Some(sub) = &a.sub {
            claims.insert("sub".into(), sub.replace("{n}", &n.to_string()).into());
        }
        let token = tollgate_jwt::sign(alg, a.kid.as_deref(), &Value::Object(claims.clone()), &key)
            .map_err(|e| e.to_string())?;
        use std::io::Write;
        writeln!(out, "{token}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    name.parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("--expires-in: invalid duration {text:?} ({e})"))
}

fn inspect(token: &str) -> ExitCode {
    match tollgate_jwt::decode_unverified(token) {
        Ok((header, payload)) => {
            let out = json!({
                "verified": false,
                "warning": "decoded only: the signature and claims were NOT verified",
                "header": header,
                "payload": payload,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("JSON serialises")
            );
            ExitCode::SUCCESS
        }
        Err(r) => {
            println!(
                "{}",
                json!({"verified": false, "error": r.reason.as_str(), "detail": r.detail})
            );
            ExitCode::FAILURE
        }
    }
}
