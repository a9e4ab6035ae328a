//! A fleet on shared state it cannot lose: three gateways holding one limit through a real
//! three-master Redis Cluster with replicas, a master killed under load and its replica
//! promoted, and a master followed through Redis Sentinel's failover. Every server is a
//! real `redis-server` on 127.0.0.1, started here.

use crate::common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Failover takes the node timeout plus an election: generous, as a bound, not a goal.
const FAILOVER_WITHIN: Duration = Duration::from_secs(60);

/// One `redis-server` (or Sentinel), killed on drop.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(dir: &std::path::Path, args: &[&str]) -> Node {
        let port = free_port();
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ]
            .map(String::from),
        );
        let child = Command::new("redis-server")
            .args(&all)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (make test installs it)");
        wait_for("redis-server", Duration::from_secs(20), || {
            (cli(port, &["PING"]).trim() == "PONG").then_some(())
        });
        Node {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`: its output, empty when the server is gone.
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Three masters with one replica each, `cluster-node-timeout` 1 s.
struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..6)
            .map(|i| {
                let sub = dir.path().join(i.to_string());
                std::fs::create_dir(&sub).unwrap();
                Node::start(
                    &sub,
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]).args(&addrs).args([
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]);
        run_ok(&mut create);
        let cluster = Cluster { nodes, _dir: dir };
        wait_for("the cluster to be whole", FAILOVER_WITHIN, || {
            cluster
                .nodes
                .iter()
                .all(|n| {
                    let info = cli(n.port, &["CLUSTER", "INFO"]);
                    info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
                })
                .then_some(())
        });
        wait_for("every replica in sync", FAILOVER_WITHIN, || {
            cluster
                .replicas()
                .iter()
                .all(|p| cli(*p, &["INFO", "replication"]).contains("master_link_status:up"))
                .then_some(())
        });
        cluster
    }

    fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    fn role_of(port: u16) -> String {
        cli(port, &["ROLE"]).lines().next().unwrap_or("").to_owned()
    }

    fn masters(&self) -> Vec<u16> {
        self.live()
            .filter(|p| Self::role_of(*p) == "master")
            .collect()
    }

    fn replicas(&self) -> Vec<u16> {
        self.live()
            .filter(|p| Self::role_of(*p) == "slave")
            .collect()
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
            .kill();
    }

    /// The killed master is marked failed and its replica serves its slots.
    fn wait_promoted(&self, killed: u16) {
        wait_for("the replica's promotion", FAILOVER_WITHIN, || {
            let survivor = self.live().next()?;
            let nodes = cli(survivor, &["CLUSTER", "NODES"]);
            let failed = nodes.lines().any(|l| {
                l.contains(&format!(":{killed}@"))
                    && l.split_whitespace()
                        .nth(2)
                        .is_some_and(|flags| flags.split(',').any(|f| f == "fail"))
            });
            let ok = cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
            (failed && ok && self.masters().len() == 3).then_some(())
        });
    }
}

fn fleet_yaml(echo: &Echo, store: &str, on_error: &str, limits: &str) -> String {
    format!(
        "rate_limiting:\n  redis: {{ {store}, timeout: 200ms, on_store_error: {on_error} }}\n\
         upstreams:\n  e: {{ backends: [{{ addr: \"{}\" }}] }}\nroutes:
  - name: warm
    path: /warm
    upstream: e
    rate_limits:
      - {{ name: warm, key: client_ip, rate: 1000/s, burst: 1000, store: redis }}
  - name: api
    path: /api
    upstream: e
    rate_limits:
{limits}",
        echo.addr()
    )
}

/// Every gateway answers through the store: a `warm` request is admitted, which with
/// `on_store_error: deny` needs a Redis answer.
fn wait_connected(gws: &[&Gateway]) {
    for gw in gws {
        wait_for(
            "the gateway's store connection",
            Duration::from_secs(20),
            || (gw.get("/warm", &[]).status == 200).then_some(()),
        );
    }
}

fn store_errors(gws: &[&Gateway]) -> f64 {
    gws.iter()
        .map(|g| {
            g.metric(
                "tollgate_ratelimit_store_errors_total",
                &[("store", "redis")],
            )
        })
        .sum()
}

#[test]
fn three_gateways_hold_one_limit_through_a_redis_cluster() {
    let echo = Echo::start("E");
    let cluster = Cluster::start();
    let yaml = fleet_yaml(
        &echo,
        &format!("cluster: {}", cluster.seeds()),
        "deny",
        "      - { name: fleet, key: route, rate: 300/min, burst: 300, store: redis }\n",
    );
    let gws = [
        Gateway::start(&yaml),
        Gateway::start(&yaml),
        Gateway::start(&yaml),
    ];
    let all: Vec<&Gateway> = gws.iter().collect();
    wait_connected(&all);
    let errors_before = store_errors(&all);

    // 1,200 requests, 400 per gateway, from twelve clients at once.
    let started = Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let url = gws[i % 3].url("/api");
            std::thread::spawn(move || {
                (0..100)
                    .filter(|_| request(&url, "GET", &[]).status == 200)
                    .count()
            })
        })
        .collect();
    let admitted: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let elapsed = started.elapsed();

    assert_eq!(
        store_errors(&all),
        errors_before,
        "every check reached the cluster"
    );
    // What one limiter would admit: the burst, plus 5 a second for as long as the run took.
    let one_limiter = 300.0 + 5.0 * elapsed.as_secs_f64();
    eprintln!(
        "cluster: {admitted} of 1200 admitted in {elapsed:?}; one limiter would admit {one_limiter:.0}"
    );
    assert!(
        (admitted as f64) >= 285.0 && (admitted as f64) <= one_limiter * 1.05,
        "{admitted} admitted in {elapsed:?} against a shared 300/min (one limiter: {one_limiter:.0})"
    );
    if elapsed < Duration::from_secs(3) {
        assert!((285..=315).contains(&admitted), "{admitted} admitted");
    }
    // The allowances came from one bucket in the cluster, and went to all three gateways.
    for gw in &gws {
        assert!(
            gw.metric(
                "tollgate_ratelimit_decisions_total",
                &[("limit", "fleet"), ("decision", "allow")],
            ) > 0.0
        );
    }
}

/// Sixty tenants, each with its bucket exhausted: every later admission is a wrong one.
const TENANTS: usize = 60;

fn tenant_limit() -> &'static str {
    "      - { name: tenant, key: \"header:x-tenant\", rate: 1/h, burst: 3, store: redis }\n"
}

/// One request per tenant, spread over the gateways; how many were admitted, and whether
/// every one was answered (200 or 429) without a stall.
fn round(gws: &[&Gateway], tenant_base: usize) -> usize {
    let mut admitted = 0;
    for t in 0..TENANTS {
        let gw = gws[t % gws.len()];
        let tenant = format!("t{}", tenant_base + t);
        let started = Instant::now();
        let status = gw.get("/api", &[("x-tenant", &tenant)]).status;
        assert!(
            status == 200 || status == 429,
            "tenant {tenant}: answered {status}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "tenant {tenant}: a stall of {:?}",
            started.elapsed()
        );
        admitted += usize::from(status == 200);
    }
    admitted
}

/// Exhausts every tenant's burst of 3, checking that exactly 3 each are admitted.
fn exhaust(gws: &[&Gateway]) {
    let admitted: usize = (0..4).map(|_| round(gws, 0)).sum();
    assert_eq!(admitted, TENANTS * 3, "a burst of 3 per tenant, shared");
}

/// Kills a master under load; reports what got through while its slots had no master, and
/// checks that every request was answered and that the limits hold again after promotion.
#[test]
fn a_cluster_master_killed_under_load_costs_only_its_outage_and_limits_resume() {
    let echo = Echo::start("E");
    let mut cluster = Cluster::start();
    let yaml = fleet_yaml(
        &echo,
        &format!("cluster: {}", cluster.seeds()),
        "allow",
        tenant_limit(),
    );
    let gws = [
        Gateway::start(&yaml),
        Gateway::start(&yaml),
        Gateway::start(&yaml),
    ];
    let all: Vec<&Gateway> = gws.iter().collect();
    wait_connected(&all);
    exhaust(&all);
    // The replicas hold the buckets before the master goes (`WAIT`: acknowledged by one).
    for m in cluster.masters() {
        assert_eq!(cli(m, &["WAIT", "1", "5000"]).trim(), "1");
    }
    let victim = cluster.masters()[0];
    let killed_at = Instant::now();
    cluster.kill(victim);
    // Until the replica is promoted, the victim's tenants follow `on_store_error: allow`;
    // the others stay refused. Every request is answered either way.
    let mut wrongly_admitted = 0;
    let mut rounds = 0;
    while cluster.masters().len() < 3
        || !{
            let s = cluster.live().next().unwrap();
            cli(s, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
        }
    {
        wrongly_admitted += round(&all, 0);
        rounds += 1;
        assert!(killed_at.elapsed() < FAILOVER_WITHIN, "no promotion");
    }
    cluster.wait_promoted(victim);
    let promoted_after = killed_at.elapsed();
    // Limits resume: the promoted replica has the buckets, so every tenant is refused again.
    let resumed = wait_for("limits resume", Duration::from_secs(30), || {
        let admitted = round(&all, 0);
        wrongly_admitted += admitted;
        rounds += 1;
        (admitted == 0).then(|| killed_at.elapsed())
    });
    let errors = store_errors(&all);
    eprintln!(
        "cluster failover: master :{victim} killed; replica promoted after {promoted_after:?}; \
         limits whole again after {resumed:?}; {wrongly_admitted} of {} requests wrongly \
         admitted ({errors} store errors)",
        rounds * TENANTS
    );
    assert!(
        wrongly_admitted > 0 && errors > 0.0,
        "some tenants live on the killed master, and went to on_store_error"
    );
    assert!(
        wrongly_admitted < rounds * TENANTS / 2,
        "only the victim's third of the tenants got through"
    );
    // Two more full rounds: nothing gets through, on the promoted master or the others.
    assert_eq!(round(&all, 0) + round(&all, 0), 0);
    // New tenants still get their burst: the cluster takes writes on every slot again.
    let fresh: usize = (0..4).map(|_| round(&all, 1000)).sum();
    assert_eq!(fresh, TENANTS * 3);
}

/// A master and its replica, watched by three Sentinels (quorum 2).
struct Sentinels {
    master: Node,
    replica: Node,
    sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    fn start() -> Sentinels {
        let dir = tempfile::tempdir().unwrap();
        let master = Node::start(dir.path(), &[]);
        let replica = Node::start(
            dir.path(),
            &["--replicaof", "127.0.0.1", &master.port.to_string()],
        );
        let sentinels = (0..3)
            .map(|i| {
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel monitor fleet 127.0.0.1 {} 2\n\
                         sentinel down-after-milliseconds fleet 1000\n\
                         sentinel failover-timeout fleet 5000\n",
                        master.port
                    ),
                )
                .unwrap();
                Node::start(dir.path(), &[conf.to_str().unwrap(), "--sentinel"])
            })
            .collect();
        let s = Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // A failover needs the Sentinels to know the replica and each other (hello messages).
        wait_for("the sentinels to know each other", FAILOVER_WITHIN, || {
            s.sentinels
                .iter()
                .all(|n| {
                    let others = cli(n.port, &["SENTINEL", "SENTINELS", "fleet"]);
                    let replicas = cli(n.port, &["SENTINEL", "REPLICAS", "fleet"]);
                    others.matches("runid").count() == 2
                        && replicas.contains(&s.replica.port.to_string())
                })
                .then_some(())
        });
        wait_for("the replica in sync", FAILOVER_WITHIN, || {
            cli(s.replica.port, &["INFO", "replication"])
                .contains("master_link_status:up")
                .then_some(())
        });
        s
    }

    fn config(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!(
            "sentinel: {{ master: fleet, nodes: [{}] }}",
            urls.join(", ")
        )
    }

    fn named_master(&self) -> String {
        let s = self.sentinels[0].port;
        cli(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "fleet"])
            .lines()
            .nth(1)
            .unwrap_or("")
            .to_owned()
    }
}

#[test]
fn through_sentinel_the_fleet_follows_a_failover_and_limits_resume() {
    let echo = Echo::start("E");
    let mut redis = Sentinels::start();
    let yaml = fleet_yaml(&echo, &redis.config(), "deny", tenant_limit());
    let gws = [Gateway::start(&yaml), Gateway::start(&yaml)];
    let all: Vec<&Gateway> = gws.iter().collect();
    wait_connected(&all);
    exhaust(&all);
    assert_eq!(cli(redis.master.port, &["WAIT", "1", "5000"]).trim(), "1");
    let before = redis.master.port;
    assert_eq!(redis.named_master(), before.to_string());

    let killed_at = Instant::now();
    redis.master.kill();
    // `on_store_error: deny`: while no master answers, every tenant is refused; nothing is
    // admitted, and nothing stalls.
    let mut refused_in_outage = 0;
    let promoted = wait_for("the sentinels promote the replica", FAILOVER_WITHIN, || {
        refused_in_outage += TENANTS - round(&all, 0);
        (redis.named_master() == redis.replica.port.to_string()).then(|| killed_at.elapsed())
    });
    // The gateways follow: a new tenant gets its burst from the promoted master, and the
    // exhausted tenants stay refused (their buckets were replicated).
    let mut attempt = 0;
    let followed = wait_for(
        "the gateways follow the new master",
        FAILOVER_WITHIN,
        || {
            attempt += 1;
            gws.iter()
                .all(|g| {
                    g.get("/api", &[("x-tenant", &format!("new-{attempt}"))])
                        .status
                        == 200
                })
                .then(|| killed_at.elapsed())
        },
    );
    assert_eq!(round(&all, 0), 0, "the exhausted tenants stay refused");
    let fresh: usize = (0..4).map(|_| round(&all, 1000)).sum();
    assert_eq!(fresh, TENANTS * 3, "new tenants get their burst, once");
    assert!(
        cli(redis.replica.port, &["DBSIZE"])
            .trim()
            .parse::<u64>()
            .unwrap()
            > TENANTS as u64
    );
    eprintln!(
        "sentinel failover: promoted after {promoted:?}, gateways on the new master after \
         {followed:?}; {refused_in_outage} requests refused by on_store_error: deny meanwhile"
    );
}
