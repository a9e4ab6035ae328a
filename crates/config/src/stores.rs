//! Where shared stores live (`rate_limiting.redis`, `auth.revocation.redis`): one Redis
//! server, a Redis Cluster, or a Sentinel-watched master.

use crate::model::RedisServer;
use crate::problems::Problems;
use crate::raw::RawSentinel;

/// Exactly one of `url`, `cluster` and `sentinel`, each URL readable by the parser the
/// gateway connects with (`redis::IntoConnectionInfo`). `path` is the YAML path of the
/// `redis` object.
pub(crate) fn server(
    path: &str,
    url: &Option<String>,
    cluster: &Option<Vec<String>>,
    sentinel: &Option<RawSentinel>,
    problems: &mut Problems,
) -> Option<RedisServer> {
    let before = problems.0.len();
    let server = match (url, cluster, sentinel) {
        (Some(url), None, None) => {
            check_url(&format!("{path}.url"), url, problems);
            RedisServer::Node(url.clone())
        }
        (None, Some(nodes), None) => {
            let at = format!("{path}.cluster");
            check_nodes(&at, nodes, problems);
            if problems.0.len() == before {
                cluster_seeds(&at, nodes, problems);
            }
            RedisServer::Cluster(nodes.clone())
        }
        (None, None, Some(s)) => {
            if s.master.trim().is_empty() {
                problems.add(format!("{path}.sentinel.master"), "must not be empty");
            }
            check_nodes(&format!("{path}.sentinel.nodes"), &s.nodes, problems);
            RedisServer::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            }
        }
        (None, None, None) => {
            problems.add(path, "needs url, cluster or sentinel");
            return None;
        }
        _ => {
            problems.add(path, "give only one of url, cluster and sentinel");
            return None;
        }
    };
    (problems.0.len() == before).then_some(server)
}

fn check_nodes(path: &str, nodes: &[String], problems: &mut Problems) {
    if nodes.is_empty() {
        problems.add(path, "needs at least one redis:// URL");
    }
    for (i, url) in nodes.iter().enumerate() {
        check_url(&format!("{path}[{i}]"), url, problems);
    }
}

/// What the cluster client would refuse only when connecting (and then retry forever): a
/// database other than 0, seeds it cannot build a client from.
fn cluster_seeds(path: &str, nodes: &[String], problems: &mut Problems) {
    for (i, url) in nodes.iter().enumerate() {
        if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            if info.redis_settings().db() != 0 {
                problems.add(
                    format!("{path}[{i}]"),
                    "a Redis Cluster has only database 0",
                );
            }
        }
    }
    if let Err(e) = redis::cluster::ClusterClient::new(nodes.to_vec()) {
        problems.add(path, format!("not a usable set of cluster seeds: {e}"));
    }
}

fn check_url(path: &str, url: &str, problems: &mut Problems) {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        problems.add(path, "must be a redis:// or rediss:// URL");
    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
        problems.add(path, format!("not a usable Redis URL: {e}"));
    }
}
