//! DNS discovery of backends given by name: A/AAAA for `host:port`, SRV for `srv:NAME`
//! (RFC 2782), each answer with the time it holds, on the configured or the system's
//! resolver. The cluster re-asks on the shortest TTL and swaps its members.

use crate::upstream::balance::Resolved;

/// What the DNS task asks for one configured backend.
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// `host:port`: the host's A and AAAA records, on the configured port and weight.
    Name { host: String, port: u16 },
    /// `srv:NAME`: NAME's SRV records of the lowest priority whose targets resolve
    /// (RFC 2782: higher priorities are fallbacks), each target's addresses on the
    /// record's port with the record's weight.
    Srv(String),
}

/// An SRV weight as a backend weight: 0 ("no preference") counts as 1, and weights are
/// capped at a configured backend's maximum.
pub(crate) fn srv_weight(weight: u16) -> u32 {
    u32::from(weight).clamp(1, tollgate_config::MAX_BACKEND_WEIGHT)
}

impl Lookup {
    /// The addresses now, and until when the answer holds (the shortest TTL met).
    pub(crate) async fn run(
        &self,
        resolver: &hickory_resolver::TokioResolver,
        weight: u32,
    ) -> Result<(Resolved, std::time::Instant), String> {
        match self {
            Lookup::Name { host, port } => {
                let answer = resolver
                    .lookup_ip(host.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let found = answer
                    .iter()
                    .map(|ip| (std::net::SocketAddr::new(ip, *port), weight))
                    .collect();
                Ok((found, answer.valid_until()))
            }
            Lookup::Srv(name) => {
                use hickory_resolver::proto::rr::RData;
                let answer = resolver
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut valid_until = answer.valid_until();
                let mut records: Vec<_> = answer
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv),
                        _ => None,
                    })
                    .collect();
                records.sort_by_key(|srv| srv.priority);
                let mut found = Vec::new();
                let mut failures = Vec::new();
                for (n, srv) in records.iter().enumerate() {
                    let lower_priority_done =
                        n > 0 && records[n - 1].priority != srv.priority && !found.is_empty();
                    if lower_priority_done {
                        break;
                    }
                    // A target of "." says the service is not offered at this name; port 0
                    // cannot be connected to.
                    if srv.target.is_root() || srv.port == 0 {
                        continue;
                    }
                    match resolver.lookup_ip(srv.target.clone()).await {
                        Ok(ips) => {
                            valid_until = valid_until.min(ips.valid_until());
                            found.extend(ips.iter().map(|ip| {
                                (
                                    std::net::SocketAddr::new(ip, srv.port),
                                    srv_weight(srv.weight),
                                )
                            }));
                        }
                        Err(e) => failures.push(format!("{}: {e}", srv.target)),
                    }
                }
                if found.is_empty() {
                    return Err(if failures.is_empty() {
                        "no SRV record names a target".to_owned()
                    } else {
                        format!("no SRV target resolved ({})", failures.join("; "))
                    });
                }
                Ok((found, valid_until))
            }
        }
    }
}

/// The resolver of `dns`: its server, else the system's.
pub fn resolver(
    upstream: &str,
    dns: &tollgate_config::Dns,
) -> Option<hickory_resolver::TokioResolver> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let builder = match dns.resolver {
        Some(server) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
            let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
            hickory_resolver::TokioResolver::builder_with_config(
                config,
                TokioRuntimeProvider::default(),
            )
        }
        None => match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(upstream = %upstream, error = %e, "no system DNS configuration");
                return None;
            }
        },
    };
    let mut builder = builder;
    // Answers are re-asked on their TTL here; the resolver's cache would only delay that.
    builder.options_mut().cache_size = 0;
    match builder.build() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(upstream = %upstream, error = %e, "cannot build the DNS resolver");
            None
        }
    }
}
