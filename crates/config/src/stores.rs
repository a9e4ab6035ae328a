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
            check_nodes(&format!("{path}.cluster"), nodes, problems);
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

fn check_url(path: &str, url: &str, problems: &mut Problems) {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        problems.add(path, "must be a redis:// or rediss:// URL");
    } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
        problems.add(path, format!("not a usable Redis URL: {e}"));
    }
}
