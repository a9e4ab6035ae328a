//! The differential property on the JWT conformance corpus: every token the corpus accepts,
//! mutated at random (a byte replaced or a bit flipped, two segments swapped, another token's
//! signature put in, base64 padding added, a character cut or added), must never verify.
//!
//! Every mutation changes the token's text, and each part of that text is either signed (the
//! header and payload, as ASCII) or the signature itself, decoded strictly (no padding, no
//! stray trailing bits), so no mutated token can carry a signature that still matches.
//!
//! `mutated_corpus DIR [--per-case N] [--seed S]`: DIR holds `cases.jsonl` and `keys/`
//! (`make conformance` passes `../shared/conformance/jwt`). Prints the count per mutation and
//! exits 1 naming any mutated token that verified.

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::ExitCode;
use tollgate_jwt::{verify, KeySet, Validation};

struct Case {
    id: String,
    token: String,
    keys: KeySet,
    validation: Validation,
    now: u64,
}

const MUTATIONS: [&str; 7] = [
    "byte_replaced",
    "bit_flipped",
    "segments_swapped",
    "signature_from_another_token",
    "padding_added",
    "character_cut",
    "character_added",
];

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn mutate(rng: &mut fastrand::Rng, kind: usize, token: &str, others: &[Case]) -> Option<String> {
    let mut bytes = token.as_bytes().to_vec();
    let parts: Vec<&str> = token.split('.').collect();
    match MUTATIONS[kind] {
        "byte_replaced" => {
            let i = rng.usize(..bytes.len());
            let choices = [B64URL, b".=+/ "].concat();
            bytes[i] = choices[rng.usize(..choices.len())];
        }
        "bit_flipped" => {
            let i = rng.usize(..bytes.len());
            bytes[i] ^= 1 << rng.u8(..8);
        }
        "segments_swapped" => {
            let (a, b) = [(0, 1), (1, 2), (0, 2)][rng.usize(..3)];
            let mut p = parts.clone();
            p.swap(a, b);
            return Some(p.join("."));
        }
        "signature_from_another_token" => {
            let other = &others[rng.usize(..others.len())];
            // The same signing input signed again (ECDSA and PSS are randomised) would be a
            // matching signature, not a forged one.
            if other.token.rsplit_once('.')?.0 == token.rsplit_once('.')?.0 {
                return None;
            }
            let sig = other.token.rsplit('.').next()?;
            return Some(format!("{}.{}.{sig}", parts[0], parts[1]));
        }
        "padding_added" => {
            let seg = rng.usize(..parts.len());
            let pad = ["=", "==", "==="][rng.usize(..3)];
            let p: Vec<String> = parts
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i == seg {
                        format!("{s}{pad}")
                    } else {
                        (*s).to_owned()
                    }
                })
                .collect();
            return Some(p.join("."));
        }
        "character_cut" => {
            bytes.remove(rng.usize(..bytes.len()));
        }
        _ => {
            let at = rng.usize(..=bytes.len());
            bytes.insert(at, B64URL[rng.usize(..B64URL.len())]);
        }
    }
    // A flipped bit can leave UTF-8: such bytes are no token a client could send as text.
    String::from_utf8(bytes).ok()
}

fn load(dir: &str) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(format!("{dir}/cases.jsonl"))
        .map_err(|e| format!("{dir}/cases.jsonl: {e}"))?;
    let mut cases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let c: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        if c["expect"] != "accept" {
            continue;
        }
        let jwks = c["jwks"].as_str().ok_or("case without jwks")?;
        let bytes = std::fs::read(format!("{dir}/keys/{jwks}")).map_err(|e| e.to_string())?;
        let keys = KeySet::from_jwks(&bytes).map_err(|e| format!("{jwks}: {e}"))?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        cases.push(Case {
            id: c["id"].as_str().unwrap_or("?").to_owned(),
            token: c["token"].as_str().ok_or("case without token")?.to_owned(),
            keys,
            validation: Validation {
                leeway_s: c["leeway_s"].as_u64().unwrap_or(0),
                issuer: c["expected_issuer"].as_str().map(str::to_owned),
                audiences: strings(&c["expected_audiences"]),
                token_types: Vec::new(),
            },
            now: c["now"].as_u64().ok_or("case without now")?,
        });
    }
    Ok(cases)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: mutated_corpus DIR [--per-case N] [--seed S]");
        return ExitCode::from(2);
    };
    let flag = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let per_case = flag("--per-case", 700);
    let mut rng = fastrand::Rng::with_seed(flag("--seed", 0x7011_6a7e));
    let cases = match load(dir) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mutated_corpus: {e}");
            return ExitCode::from(2);
        }
    };
    let mut tried: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures = 0u64;
    for case in &cases {
        // The property is about mutations of tokens that verify.
        if verify(&case.token, &case.keys, &case.validation, case.now).is_err() {
            eprintln!("{}: the corpus says accept but it does not verify", case.id);
            return ExitCode::FAILURE;
        }
        for n in 0..per_case {
            let kind = (n % MUTATIONS.len() as u64) as usize;
            let Some(mutated) = mutate(&mut rng, kind, &case.token, &cases) else {
                continue;
            };
            if mutated == case.token {
                continue;
            }
            *tried.entry(MUTATIONS[kind]).or_default() += 1;
            if verify(&mutated, &case.keys, &case.validation, case.now).is_ok() {
                failures += 1;
                eprintln!(
                    "VERIFIED after {}: {} -> {mutated}",
                    MUTATIONS[kind], case.id
                );
            }
        }
    }
    let total: u64 = tried.values().sum();
    println!(
        "mutated corpus: {total} mutations of {} accepted tokens, {failures} verified",
        cases.len()
    );
    for (kind, n) in &tried {
        println!("  {kind}: {n}");
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
