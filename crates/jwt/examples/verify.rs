//! The conformance runner's `token verify` contract as a standalone program, so the corpus can be
//! run against the library before the gateway binary exists. Arguments are parsed by hand to keep
//! the crate free of CLI dependencies.
//!
//! `verify --jwks FILE [--at UNIX] [--leeway S] [--issuer ISS] [--audience AUD]... [--] TOKEN`
//! prints one JSON object; exit 0 valid, 1 invalid, 2 usage error or unreadable key file.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_jwt::{verdict_json, verify, KeySet, Validation};

const USAGE: &str = "usage: verify --jwks FILE [--at UNIX] [--leeway S] [--issuer ISS] [--audience AUD]... [--] TOKEN";

struct Args {
    jwks: String,
    at: Option<u64>,
    validation: Validation,
    token: String,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut jwks = None;
    let mut at = None;
    let mut validation = Validation::default();
    let mut token = None;
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--jwks" => jwks = Some(value("--jwks")?),
            "--at" => {
                at = Some(
                    value("--at")?
                        .parse()
                        .map_err(|_| "--at needs unix seconds".to_string())?,
                )
            }
            "--leeway" => {
                validation.leeway_s = value("--leeway")?
                    .parse()
                    .map_err(|_| "--leeway needs whole seconds".to_string())?
            }
            "--issuer" => validation.issuer = Some(value("--issuer")?),
            "--audience" => validation.audiences.push(value("--audience")?),
            "--" => {
                token = Some(it.next().ok_or("missing token after --")?);
                break;
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => {
                token = Some(arg);
                break;
            }
        }
    }
    if it.next().is_some() {
        return Err("unexpected argument after the token".into());
    }
    Ok(Args {
        jwks: jwks.ok_or("--jwks is required")?,
        at,
        validation,
        token: token.ok_or("missing token")?,
    })
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("verify: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let keys = match std::fs::read(&args.jwks) {
        Err(e) => Err(e.to_string()),
        Ok(bytes) if bytes.trim_ascii_start().starts_with(b"-----BEGIN") => {
            KeySet::from_pem(&bytes, None, None).map_err(|e| e.to_string())
        }
        Ok(bytes) => KeySet::from_jwks(&bytes).map_err(|e| e.to_string()),
    };
    let keys = match keys {
        Ok(k) => k,
        Err(e) => {
            eprintln!("verify: cannot load keys from {}: {e}", args.jwks);
            return ExitCode::from(2);
        }
    };
    // The library never reads the clock; this program may.
    let now = args.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let result = verify(&args.token, &keys, &args.validation, now);
    println!("{}", verdict_json(&result));
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
