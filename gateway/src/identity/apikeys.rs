//! API keys (`type: api_key` providers): a key is looked up by its public id, its SHA-256
//! compared in constant time with the digest on file, and its entry's claims then go
//! through the same claims stage, deny list, RBAC, limits, identity headers and minted
//! upstream tokens as a JWT's: the entry is turned into a [`VerifiedToken`] once, when the
//! file is read.
//!
//! A key is `tgk_<id>_<secret>`: `id` is 16 hex digits (8 random bytes, so an entry can be
//! found without scanning and a key can be named in logs and on the deny list as `jti`);
//! `secret` is 32 random bytes, base64url. The file holds only the SHA-256 of the whole
//! key. A fast digest is enough here, unlike for passwords: the secret has 256 bits of
//! entropy, so no dictionary makes a stolen file reversible, and a slow hash (Argon2,
//! bcrypt) would put milliseconds of CPU on every request.
//!
//! The file is JSON Lines, one entry per line, as `tollgate apikey create` prints them:
//! `{"id":…,"sha256":…,"sub":…,"exp":…,"nbf":…,"claims":{…},"note":…}`; blank lines and
//! lines starting with `#` are skipped. A bad file is refused whole at load (a config
//! problem, every bad line reported); when a rewrite is bad, the last good keys stay in
//! force; when the file is removed, no key is accepted. Rotation with overlap: create a second key for the same subject, move the caller
//! to it, then remove the first line (or give it an `exp`).

use crate::telemetry::metrics::METRICS;
use crate::util::digest::{hex, sha256};
use crate::util::watch::Watched;
use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tollgate_jwt::VerifiedToken;

/// Every key starts with this, so that a route taking JWTs and keys tells them apart
/// without a lookup, and secret scanners can find leaked keys.
pub const PREFIX: &str = "tgk_";
const ID_HEX: usize = 16;
const SECRET_BYTES: usize = 32;
/// base64url without padding of [`SECRET_BYTES`].
const SECRET_CHARS: usize = 43;

/// One line of the key file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    /// Lowercase hex SHA-256 of the whole key.
    sha256: String,
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(default)]
    claims: Map<String, Value>,
    /// Free text for people (who the key is for); not a claim.
    #[allow(dead_code, reason = "read so that it is allowed, never used")]
    note: Option<String>,
}

/// What a key vouches for.
struct Entry {
    digest: [u8; 32],
    token: Arc<VerifiedToken>,
}

/// A provider's keys, swapped whole when the file changes.
pub struct ApiKeys {
    provider: Arc<str>,
    issuer: String,
    path: String,
    poll: Duration,
    table: ArcSwap<HashMap<String, Entry>>,
}

/// The id of a key of the right shape, or `None`.
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_HEX)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let secret_ok = secret.len() == SECRET_CHARS
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some(id)
}

/// Whether `token` has the shape of an API key (and so is never parsed as a JWT).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// A new key and its file line for `sub` with `claims`, `exp` and `nbf` (unix seconds).
pub fn create(
    sub: &str,
    claims: Map<String, Value>,
    exp: Option<u64>,
    nbf: Option<u64>,
    note: Option<&str>,
) -> Result<(String, String), String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8 + SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    let id = hex(&bytes[..8]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[8..]);
    let key = format!("{PREFIX}{id}_{secret}");
    let mut line = Map::new();
    line.insert("id".into(), id.into());
    line.insert("sha256".into(), hex(&sha256(&[key.as_bytes()])).into());
    line.insert("sub".into(), sub.into());
    if let Some(exp) = exp {
        line.insert("exp".into(), exp.into());
    }
    if let Some(nbf) = nbf {
        line.insert("nbf".into(), nbf.into());
    }
    if !claims.is_empty() {
        line.insert("claims".into(), claims.into());
    }
    if let Some(note) = note {
        line.insert("note".into(), note.into());
    }
    let line = Value::Object(line).to_string();
    // The line must be one the gateway reads.
    parse("check", "check", &line)?;
    Ok((key, line))
}

/// Parses a key file; every bad line is reported (by line number, never with its text).
fn parse(provider: &str, issuer: &str, text: &str) -> Result<HashMap<String, Entry>, String> {
    let mut table = HashMap::new();
    let mut errors = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match entry(issuer, line) {
            Ok((id, e)) => {
                if table.insert(id.clone(), e).is_some() {
                    errors.push(format!("line {n}: id {id} is listed twice"));
                }
            }
            Err(e) => errors.push(format!("line {n}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(format!("{provider}: {}", errors.join("; ")))
    }
}

fn entry(issuer: &str, line: &str) -> Result<(String, Entry), String> {
    let l: Line = serde_json::from_str(line).map_err(|e| {
        // serde's message can quote the input; keep only its category and column.
        format!(
            "not a key entry ({:?} at column {})",
            e.classify(),
            e.column()
        )
    })?;
    if l.id.len() != ID_HEX || !l.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("id must be {ID_HEX} lowercase hex digits"));
    }
    let digest = decode_hex(&l.sha256).ok_or("sha256 must be 64 lowercase hex digits")?;
    if l.sub.is_empty() {
        return Err("sub must not be empty".into());
    }
    let mut claims = l.claims;
    for reserved in ["sub", "iss", "jti", "exp", "nbf"] {
        if claims.contains_key(reserved) {
            return Err(format!(
                "claims must not set {reserved} (it comes from the entry itself)"
            ));
        }
    }
    claims.insert("sub".into(), l.sub.into());
    claims.insert("iss".into(), issuer.into());
    claims.insert("jti".into(), l.id.clone().into());
    if let Some(exp) = l.exp {
        claims.insert("exp".into(), exp.into());
    }
    if let Some(nbf) = l.nbf {
        claims.insert("nbf".into(), nbf.into());
    }
    let token = tollgate_jwt::claims_token(claims).map_err(|r| r.detail.to_owned())?;
    Ok((
        l.id,
        Entry {
            digest,
            token: Arc::new(token),
        },
    ))
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
fn read_file(provider: &str, issuer: &str, path: &str) -> Result<HashMap<String, Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse(provider, issuer, &text)
}

impl ApiKeys {
    /// Reads the key file now (the compile step runs off the async workers).
    pub fn load(
        provider: &Arc<str>,
        issuer: &str,
        file: &tollgate_config::ApiKeyFile,
    ) -> Result<ApiKeys, String> {
        let table = read_file(provider, issuer, &file.path)?;
        let keys = ApiKeys {
            provider: provider.clone(),
            issuer: issuer.to_owned(),
            path: file.path.clone(),
            poll: file.poll,
            table: ArcSwap::from_pointee(HashMap::new()),
        };
        keys.swap(table);
        Ok(keys)
    }

    fn swap(&self, table: HashMap<String, Entry>) {
        METRICS
            .api_keys
            .with_label_values(&[&self.provider])
            .set(table.len() as i64);
        self.table.store(Arc::new(table));
    }

    /// The claims of `key` when it is one of ours: found by id, then its digest compared
    /// in constant time (the id is public; the secret is what is checked).
    pub fn find(&self, key: &str) -> Option<Arc<VerifiedToken>> {
        use subtle::ConstantTimeEq;
        let id = key_id(key)?;
        let table = self.table.load();
        let entry = table.get(id)?;
        let digest = sha256(&[key.as_bytes()]);
        bool::from(entry.digest.ct_eq(&digest)).then(|| entry.token.clone())
    }

    /// Re-reads the file when it changes, until the provider is dropped.
    pub fn spawn_watch(self: &Arc<Self>) {
        let weak: Weak<ApiKeys> = Arc::downgrade(self);
        let (path, poll) = (self.path.clone(), self.poll);
        tokio::spawn(async move {
            let files = [path.clone()];
            let mut watched = Watched::now(&files).await;
            while watched
                .changed(&files, poll, || weak.strong_count() > 0)
                .await
            {
                let Some(keys) = weak.upgrade() else { return };
                let read = match tokio::fs::read_to_string(&path).await {
                    // The file removed: no key is accepted any more (an operator deleting
                    // it means to revoke them; keeping the last keys would fail open).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        tracing::warn!(provider = %keys.provider, "api key file removed; no key is accepted");
                        Ok(HashMap::new())
                    }
                    Err(e) => Err(format!("cannot read {path}: {e}")),
                    Ok(text) => parse(&keys.provider, &keys.issuer, &text),
                };
                let result = match read {
                    Ok(table) => {
                        let count = table.len();
                        keys.swap(table);
                        tracing::info!(provider = %keys.provider, keys = count, "api key file reloaded");
                        "ok"
                    }
                    Err(error) => {
                        tracing::warn!(provider = %keys.provider, %error, "api key file not reloaded; keeping the last good keys");
                        "error"
                    }
                };
                METRICS
                    .api_key_reloads
                    .with_label_values(&[&keys.provider, result])
                    .inc();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_key_is_found_and_a_changed_one_is_not() {
        let mut claims = Map::new();
        claims.insert("roles".into(), serde_json::json!(["partner"]));
        let (key, line) = create("acme", claims, Some(4_000_000_000), None, Some("acme")).unwrap();
        assert!(key_id(&key).is_some() && looks_like_key(&key));
        assert!(!line.contains(&key[20..]), "the line holds no secret");
        let keys = ApiKeys {
            provider: "p".into(),
            issuer: "https://keys".into(),
            path: String::new(),
            poll: Duration::from_secs(1),
            table: ArcSwap::from_pointee(parse("p", "https://keys", &line).unwrap()),
        };
        let token = keys.find(&key).expect("found");
        assert_eq!(token.sub.as_deref(), Some("acme"));
        assert_eq!(token.iss.as_deref(), Some("https://keys"));
        assert_eq!(token.claims["roles"], serde_json::json!(["partner"]));
        assert_eq!(token.exp, Some(4_000_000_000.0));
        // One secret character changed: same id, other digest.
        let mut forged = key.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(keys.find(std::str::from_utf8(&forged).unwrap()).is_none());
        assert!(keys.find("tgk_0000000000000000_").is_none());
    }

    #[test]
    fn bad_lines_are_reported_by_number_without_their_text() {
        let text =
            "# comment\n\n{\"id\":\"zz\",\"sha256\":\"00\",\"sub\":\"a\"}\nnot json secret-ish\n\
                    {\"id\":\"0123456789abcdef\",\"sha256\":\""
                .to_owned()
                + &"0".repeat(64)
                + "\",\"sub\":\"a\",\"claims\":{\"sub\":\"root\"}}\n";
        let err = parse("p", "i", &text).err().unwrap();
        assert!(err.contains("line 3: id must be"), "{err}");
        assert!(err.contains("line 4: not a key entry"), "{err}");
        assert!(err.contains("line 5: claims must not set sub"), "{err}");
        assert!(!err.contains("secret-ish"), "{err}");
    }
}
