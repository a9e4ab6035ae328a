//! The connection to a shared store (rate limits, the DPoP replay cache, the deny list): one
//! Redis server, a Redis Cluster, or the master of a Sentinel-watched service.
//!
//! A [`Store`] connects in the background and keeps one connection that every caller clones
//! (a multiplexed handle, not a pool): for one server, the `redis` crate's
//! `ConnectionManager`, which reconnects by itself; for a cluster, its cluster connection,
//! which follows `MOVED` answers and re-reads the slot map when a master fails over; for
//! Sentinel, a connection to the master the Sentinels name, asked again every second, and
//! replaced when they name another one. Callers bound each command with their own timeout.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tollgate_config::RedisServer;

/// How long connecting, and one answer on a background connection, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the Sentinels are asked which server is the master.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

/// A connection to the store, cheap to clone: a handle to one multiplexed connection.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One shared store, connected in the background for as long as someone holds it.
pub struct Store {
    server: RedisServer,
    conn: ArcSwapOption<Conn>,
    /// With Sentinel: the master in use (`host:port`).
    master: ArcSwapOption<String>,
    started: AtomicBool,
}

impl Store {
    /// Checks the URLs (the config's validation read them with the same parser).
    pub fn new(server: &RedisServer) -> Result<Store, String> {
        let urls: Vec<&String> = match server {
            RedisServer::Node(url) => vec![url],
            RedisServer::Cluster(nodes) | RedisServer::Sentinel { nodes, .. } => {
                nodes.iter().collect()
            }
        };
        for url in urls {
            redis::IntoConnectionInfo::into_connection_info(url.as_str())
                .map_err(|e| format!("{}: {e}", crate::util::redact::url(url)))?;
        }
        Ok(Store {
            server: server.clone(),
            conn: ArcSwapOption::empty(),
            master: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
        })
    }

    /// Starts connecting (once): until it succeeds, [`Store::connection`] is `None`.
    pub fn connect_in_background(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        match self.server.clone() {
            RedisServer::Node(url) => {
                tokio::spawn(connect(weak, move || {
                    let url = url.clone();
                    async move { node(url.as_str()).await.map(Conn::Node) }
                }));
            }
            RedisServer::Cluster(nodes) => {
                tokio::spawn(connect(weak, move || {
                    let nodes = nodes.clone();
                    async move {
                        redis::cluster::ClusterClient::builder(nodes)
                            .connection_timeout(CONNECT_TIMEOUT)
                            .response_timeout(CONNECT_TIMEOUT)
                            .retries(2)
                            .min_retry_wait(10)
                            .max_retry_wait(200)
                            .build()?
                            .get_async_connection()
                            .await
                            .map(Conn::Cluster)
                    }
                }));
            }
            RedisServer::Sentinel { master, nodes } => {
                tokio::spawn(follow_sentinel(weak, master, nodes));
            }
        }
    }

    /// The connection, once made.
    pub fn connection(&self) -> Option<Conn> {
        self.conn.load().as_deref().cloned()
    }

    /// Waits until the background connection is up, at most `within`; whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.conn.load().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// Where the store is, without passwords, for the admin view and logs.
    pub fn view(&self) -> serde_json::Value {
        use crate::util::redact::url;
        let connected = self.conn.load().is_some();
        match &self.server {
            RedisServer::Node(u) => serde_json::json!({"url": url(u), "connected": connected}),
            RedisServer::Cluster(nodes) => serde_json::json!({
                "cluster": nodes.iter().map(|n| url(n)).collect::<Vec<_>>(),
                "connected": connected,
            }),
            RedisServer::Sentinel { master, nodes } => serde_json::json!({
                "sentinel": {
                    "master": master,
                    "nodes": nodes.iter().map(|n| url(n)).collect::<Vec<_>>(),
                },
                "master_addr": self.master.load().as_deref(),
                "connected": connected,
            }),
        }
    }
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1)
}

async fn node(info: impl redis::IntoConnectionInfo) -> redis::RedisResult<ConnectionManager> {
    ConnectionManager::new_with_config(redis::Client::open(info)?, manager_config()).await
}

/// Tries `make` until it succeeds, backing off from 100 ms to 5 s; the connection then
/// reconnects by itself.
async fn connect<F, Fut>(weak: Weak<Store>, make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<Conn>>,
{
    let mut wait = Duration::from_millis(100);
    while weak.strong_count() > 0 {
        match make().await {
            Ok(conn) => {
                if let Some(s) = weak.upgrade() {
                    s.conn.store(Some(Arc::new(conn)));
                    tracing::info!(store = %s.view(), "connected to redis");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect to redis yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Asks a Sentinel for the master's address every [`SENTINEL_POLL`] (`SENTINEL
/// get-master-addr-by-name`, on one kept connection, moving to the next Sentinel when it
/// fails), and connects to the master only when the address changes. Until the first
/// answer, and while no Sentinel answers, the last master stays in use (its connection's
/// errors go to the callers' `on_store_error`). The first Sentinel URL's credentials and
/// database are used for the master.
async fn follow_sentinel(weak: Weak<Store>, master: String, nodes: Vec<String>) {
    let sentinels: Vec<redis::ConnectionInfo> = nodes
        .iter()
        .filter_map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()).ok())
        .collect();
    let Some(first) = sentinels.first().cloned() else {
        tracing::error!("redis sentinel: no usable Sentinel URL");
        return;
    };
    let mut asked: Option<(usize, redis::aio::MultiplexedConnection)> = None;
    let mut next = 0usize;
    while weak.strong_count() > 0 {
        match ask_sentinel(&mut asked, &mut next, &sentinels, &master).await {
            Some((host, port)) => {
                let addr = format!("{host}:{port}");
                let known = weak
                    .upgrade()
                    .and_then(|s| s.master.load_full())
                    .is_some_and(|m| *m == addr);
                if !known {
                    let info = first
                        .clone()
                        .set_addr(redis::ConnectionAddr::Tcp(host, port));
                    match node(info).await {
                        Ok(conn) => {
                            let Some(s) = weak.upgrade() else { return };
                            s.conn.store(Some(Arc::new(Conn::Node(conn))));
                            s.master.store(Some(Arc::new(addr.clone())));
                            tracing::info!(%master, %addr, "redis sentinel: using this master");
                        }
                        Err(e) => {
                            tracing::warn!(%master, %addr, error = %e, "redis sentinel: cannot connect to the master");
                        }
                    }
                }
            }
            None => tracing::warn!(%master, "redis sentinel: no Sentinel named a master"),
        }
        tokio::time::sleep(SENTINEL_POLL).await;
    }
}

/// The master's address as a Sentinel names it: on the kept connection, else on each
/// Sentinel in turn (from `next`), once around.
async fn ask_sentinel(
    asked: &mut Option<(usize, redis::aio::MultiplexedConnection)>,
    next: &mut usize,
    sentinels: &[redis::ConnectionInfo],
    master: &str,
) -> Option<(String, u16)> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    for _ in 0..=sentinels.len() {
        if asked.is_none() {
            let i = *next % sentinels.len();
            *next = i + 1;
            let connected = async {
                redis::Client::open(sentinels[i].clone())?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, connected).await {
                Ok(Ok(c)) => *asked = Some((i, c)),
                _ => continue,
            }
        }
        let (_, conn) = asked.as_mut()?;
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(master);
        let reply = ask.query_async::<Option<(String, u16)>>(conn);
        match tokio::time::timeout(CONNECT_TIMEOUT * 2, reply).await {
            Ok(Ok(Some(addr))) => return Some(addr),
            // This Sentinel does not know the master, or failed: ask the next.
            _ => *asked = None,
        }
    }
    None
}
