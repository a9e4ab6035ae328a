//! The deny list of revoked tokens (`auth.revocation`), kept current from its source: a
//! JSON Lines file re-read when it changes, or a Redis set polled by its version counter.
//! The list itself (`tollgate_jwt::DenyList`) is swapped whole through an `ArcSwap`, so a
//! request's check is one atomic load and at most two hash lookups.
//!
//! One list per source lives for as long as a snapshot uses it: a reload that names the
//! same source keeps the list and its poller (a Redis list does not go back to empty and
//! unready on every reload), and re-reads a file so that `check` and a reload refuse the
//! same broken file.
//!
//! Until the list has been read once (a Redis source that is down at start), tokens are
//! refused with 503 rather than checked against nothing. After that, on a source error the
//! last good list stays in force (a file being rewritten, Redis down): refusing every token
//! because the deny list cannot be read would turn a Redis outage into a full one.
//! `tollgate_revocation_last_success_timestamp_seconds` shows how old the list is, and an
//! alert watches it. Redis losing its data (the version counter gone or lower than seen)
//! does not lift revocations: the entries held are kept and the set's are added to them.

use crate::telemetry::metrics::METRICS;
use crate::util::store::{Conn, Store};
use arc_swap::ArcSwap;
use once_cell::sync::Lazy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tollgate_config::{Problem, RedisServer, Revocation, RevocationSource};
use tollgate_jwt::{DenyList, Revoked};

/// A deny list and where it comes from.
pub struct Revocations {
    source: RevocationSource,
    /// The Redis store of a `redis` source.
    store: Option<Arc<Store>>,
    poll: Duration,
    list: ArcSwap<DenyList>,
    /// The list has been read at least once (a file at load; Redis on its first answer).
    ready: AtomicBool,
    started: AtomicBool,
    /// The last update failed: further failures are counted but not logged again.
    failing: AtomicBool,
}

/// A verified token against the deny list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Passed,
    Revoked,
    /// The list has not been read yet (Redis down since start): nothing can be checked.
    Unavailable,
}

/// Lists by source, for reuse across reloads; the snapshots hold the strong references.
static LISTS: Lazy<Mutex<HashMap<String, Weak<Revocations>>>> = Lazy::new(Default::default);

fn problem(message: String) -> Problem {
    Problem {
        path: "auth.revocation.file".to_owned(),
        message,
    }
}

/// Reads and parses a deny-list file; every bad line is reported.
#[allow(
    clippy::disallowed_methods,
    reason = "snapshot compilation, off the workers"
)]
fn read_file(path: &str) -> Result<DenyList, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse(&text)
}

fn parse(text: &str) -> Result<DenyList, String> {
    DenyList::parse(text).map_err(|errors| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

impl Revocations {
    /// The list for `config`: the one already in use for this source, or a new one. A
    /// file is read now (the compile step runs off the async workers).
    pub fn for_config(config: &Revocation) -> Result<Arc<Revocations>, Problem> {
        let (fresh, store) = match &config.source {
            RevocationSource::File(path) => (Some(read_file(path).map_err(problem)?), None),
            RevocationSource::Redis { server, .. } => {
                let store = Store::new(server).map_err(|message| Problem {
                    path: "auth.revocation.redis".to_owned(),
                    message,
                })?;
                (None, Some(Arc::new(store)))
            }
        };
        let key = format!("{:?} {:?}", config.source, config.poll);
        let mut lists = LISTS.lock().unwrap_or_else(|e| e.into_inner());
        lists.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = lists.get(&key).and_then(Weak::upgrade) {
            if let Some(list) = fresh {
                existing.swap(list);
            }
            return Ok(existing);
        }
        let ready = fresh.is_some();
        let r = Arc::new(Revocations {
            source: config.source.clone(),
            store,
            poll: config.poll,
            list: ArcSwap::from_pointee(DenyList::default()),
            ready: AtomicBool::new(ready),
            started: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        });
        if let Some(list) = fresh {
            r.swap(list);
        }
        lists.insert(key, Arc::downgrade(&r));
        Ok(r)
    }

    /// Whether verified claims are on the list; a hit is counted.
    pub fn check(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Check {
        if !self.is_ready() {
            return Check::Unavailable;
        }
        match self.list.load().revoked(claims) {
            Some(kind) => {
                let hits = match kind {
                    Revoked::Jti => &METRICS.revocation_hits_jti,
                    Revoked::Subject => &METRICS.revocation_hits_sub,
                };
                hits.inc();
                Check::Revoked
            }
            None => Check::Passed,
        }
    }

    /// What the admin view shows: where the list comes from (a Redis URL without its
    /// password), whether it was read, and how many entries it holds.
    pub fn view(&self) -> serde_json::Value {
        let (jtis, subjects) = self.list.load().len();
        let source = match &self.source {
            RevocationSource::File(path) => serde_json::json!({"file": path}),
            RevocationSource::Redis { key, .. } => {
                let store = self.store.as_ref().map(|s| s.view());
                serde_json::json!({"redis": store, "key": key})
            }
        };
        serde_json::json!({
            "source": source,
            "poll_s": self.poll.as_secs_f64(),
            "ready": self.is_ready(),
            "jtis": jtis,
            "subjects": subjects,
            "failing": self.failing.load(Ordering::Acquire),
        })
    }

    /// The list has been read once: readiness waits for it.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<DenyList> {
        self.list.load_full()
    }

    fn swap(&self, list: DenyList) {
        let (jtis, subjects) = list.len();
        METRICS
            .revocation_entries
            .with_label_values(&["jti"])
            .set(jtis as i64);
        METRICS
            .revocation_entries
            .with_label_values(&["sub"])
            .set(subjects as i64);
        self.list.store(Arc::new(list));
        self.ready.store(true, Ordering::Release);
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("revocation list source readable again");
        }
        METRICS.revocation_reloads.with_label_values(&["ok"]).inc();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        METRICS.revocation_last_success.set(now);
    }

    fn failed(&self, error: &str) {
        METRICS
            .revocation_reloads
            .with_label_values(&["error"])
            .inc();
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error,
                "revocation list not updated; keeping the last good list"
            );
        }
    }

    /// Keeps the list current until no snapshot uses it; once per list.
    pub fn spawn_watch(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        match self.source.clone() {
            RevocationSource::File(path) => {
                tokio::spawn(watch_file(weak, path, self.poll));
            }
            RevocationSource::Redis { key, server } => {
                let store = self.store.clone().expect("a redis source has its store");
                let version = version_key(&server, &key);
                tokio::spawn(poll_redis(weak, store, key, version, self.poll));
            }
        }
    }
}

/// Re-reads the file when its stamp changes and has then held still for one more poll, so
/// a rewrite in several writes is read once, whole (an editor, `>` in a shell; replacing
/// the file by a rename is atomic anyway). The stamp is taken before reading, so a write
/// that lands during the read is seen on the next poll.
async fn watch_file(weak: Weak<Revocations>, path: String, poll: Duration) {
    let path = std::path::PathBuf::from(path);
    let files = [path.clone()];
    let mut watched = crate::util::watch::Watched::now(&files).await;
    while watched
        .changed(&files, poll, || weak.strong_count() > 0)
        .await
    {
        let Some(r) = weak.upgrade() else { return };
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => match parse(&text) {
                Ok(list) => {
                    let (jtis, subjects) = list.len();
                    r.swap(list);
                    tracing::info!(jtis, subjects, "revocation list reloaded");
                }
                Err(e) => r.failed(&e),
            },
            Err(e) => r.failed(&format!("cannot read {}: {e}", path.display())),
        }
    }
}

/// What the poller remembers between reads of the Redis set.
#[derive(Default)]
struct RedisView {
    /// The version last read (`None`: the counter did not exist).
    seen: Option<Option<i64>>,
    /// The highest version ever read.
    highest: Option<i64>,
    /// Once Redis lost data (the counter vanished or went down): the entries held then,
    /// kept under every later read until the process restarts.
    kept: Option<Arc<DenyList>>,
}

/// The deny list's version counter: `KEY:version`; in a Redis Cluster `{KEY}:version`, a
/// hash tag that puts it in the set's own slot (a key without braces hashes whole), so both
/// live on one master and its replica receives them in order: a failover never keeps a
/// counter bump whose entries it lost. A key that already has a hash tag keeps `KEY:version`,
/// which shares that tag.
pub fn version_key(server: &RedisServer, key: &str) -> String {
    match server {
        RedisServer::Cluster(_) if !key.contains('{') => format!("{{{key}}}:version"),
        _ => format!("{key}:version"),
    }
}

/// Polls the version counter and reads the set at `key` when it changed. A member that is
/// not a valid entry (or not UTF-8) is left out and counted; the others apply (one bad write
/// must not stop every later revocation from taking effect).
async fn poll_redis(
    weak: Weak<Revocations>,
    store: Arc<Store>,
    key: String,
    version_key: String,
    poll: Duration,
) {
    store.connect_in_background();
    store.wait_connected(Duration::from_secs(2)).await;
    let mut view = RedisView::default();
    loop {
        if weak.strong_count() == 0 {
            return;
        }
        let outcome = match store.connection() {
            Some(mut c) => read_redis(&mut c, &weak, &key, &version_key, &mut view).await,
            None => Err("cannot connect to redis yet".to_owned()),
        };
        if let (Err(e), Some(r)) = (outcome, weak.upgrade()) {
            r.failed(&e);
        }
        tokio::time::sleep(poll).await;
    }
}

async fn read_redis(
    c: &mut Conn,
    weak: &Weak<Revocations>,
    key: &str,
    version_key: &str,
    view: &mut RedisView,
) -> Result<(), String> {
    let version: Option<i64> = redis::cmd("GET")
        .arg(version_key)
        .query_async(c)
        .await
        .map_err(|e| format!("redis GET: {e}"))?;
    if view.seen == Some(version) {
        return Ok(());
    }
    let members: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(c)
        .await
        .map_err(|e| format!("redis SMEMBERS: {e}"))?;
    let Some(r) = weak.upgrade() else {
        return Ok(());
    };
    let mut list = DenyList::default();
    let mut bad = 0usize;
    for m in &members {
        match std::str::from_utf8(m) {
            Ok(line) if list.add_line(line).is_ok() => {}
            _ => bad += 1,
        }
    }
    let regressed = match (view.highest, version) {
        (Some(high), None) => Some(high),
        (Some(high), Some(v)) if v < high => Some(high),
        _ => None,
    };
    if let Some(high) = regressed {
        if view.kept.is_none() {
            tracing::warn!(
                version = ?version,
                highest = high,
                "revocation list version went back (Redis lost data?): keeping every entry held and adding the set's"
            );
            view.kept = Some(r.current());
        }
    }
    if let Some(kept) = &view.kept {
        list.extend(kept);
    }
    r.swap(list);
    view.seen = Some(version);
    view.highest = view.highest.max(version);
    if bad > 0 {
        r.failed(&format!(
            "{bad} set members are not valid entries and were left out"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_cluster_the_version_counter_shares_the_sets_slot() {
        let one = RedisServer::Node("redis://r/".into());
        let cluster = RedisServer::Cluster(vec!["redis://r/".into()]);
        assert_eq!(
            version_key(&one, "tollgate:revoked"),
            "tollgate:revoked:version"
        );
        assert_eq!(
            version_key(&cluster, "tollgate:revoked"),
            "{tollgate:revoked}:version"
        );
        assert_eq!(version_key(&cluster, "{t}:revoked"), "{t}:revoked:version");
    }
}
