//! Nodes started by `scripts/cluster` behind nginx, as an operator runs them: clients that know
//! only the balancer's address chat across nodes and ride out a dead node, a Redis restart and a
//! database outage while traffic flows, and a rolling restart of every node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{PrivateRedis, owner_among, redis_url};
use crate::helpers::{
    Backend, Client, POLL, SECONDS_10, TestDb, assert_kept, eventually, free_port, http_status,
    outage, token,
};

/// N nodes and nginx started by `scripts/cluster` in a directory of the test's own, on ports of
/// their own; stopped by the same script when dropped, so a failed test leaves nothing running.
struct ScriptCluster {
    dir: tempfile::TempDir,
    lb: u16,
    node_ports: Vec<u16>,
    env: Vec<(String, String)>,
}

impl ScriptCluster {
    fn start(n: usize, db: &TestDb, redis: &str, extra: &[(&str, &str)]) -> ScriptCluster {
        let cluster = ScriptCluster::new(n, db, redis, extra);
        assert!(
            cluster.script(&["start", &n.to_string()]),
            "scripts/cluster start failed"
        );
        cluster
    }

    /// The settings and ports of a cluster of `n`, not started.
    fn new(n: usize, db: &TestDb, redis: &str, extra: &[(&str, &str)]) -> ScriptCluster {
        let mut env = vec![
            ("CHAT_DATABASE_URL".to_owned(), db.url.clone()),
            ("CHAT_REDIS_URL".to_owned(), redis.to_owned()),
            (
                "CHAT_REDIS_PREFIX".to_owned(),
                format!("test-{}", Uuid::new_v4().simple()),
            ),
            (
                "CHAT_JWT_SECRET".to_owned(),
                crate::helpers::SECRET.to_owned(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ScriptCluster {
            dir: tempfile::tempdir().unwrap(),
            lb: free_port(),
            node_ports: (0..n).map(|_| free_port()).collect(),
            env,
        }
    }

    /// Runs `scripts/cluster ARGS DIR` with the test's settings; true when it succeeded.
    fn script(&self, args: &[&str]) -> bool {
        self.script_output(args).status.success()
    }

    /// [`ScriptCluster::script`], with what it said.
    fn script_output(&self, args: &[&str]) -> std::process::Output {
        let ports: Vec<String> = self.node_ports.iter().map(u16::to_string).collect();
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(args)
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("CLUSTER_PORT", self.lb.to_string())
            .env("CLUSTER_NODE_PORTS", ports.join(" "))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    }

    /// The balancer's WebSocket URL.
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.lb)
    }

    /// The node ids the script gave (`node-1`..), in the order of their ports.
    fn node_ids(&self) -> Vec<String> {
        (1..=self.node_ports.len())
            .map(|i| format!("node-{i}"))
            .collect()
    }

    /// One node's own WebSocket URL (bypassing nginx).
    fn node_url(&self, index: usize) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.node_ports[index])
    }

    /// `kill -9` of the node `id`.
    fn kill(&self, id: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join(format!("{id}.pid"))).unwrap();
        std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        self.script(&["stop"]);
    }
}

#[tokio::test]
async fn behind_nginx_clients_on_any_node_chat_and_outlive_a_killed_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let cluster = ScriptCluster::start(2, &db, &redis_url(), &[]);
    let url = cluster.url();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = Client::connect(&url, &token(a)).await;
    let mut cb = Client::connect(&url, &token(b)).await;
    let nodes_seen = [ca.hello["node"].clone(), cb.hello["node"].clone()];
    let conv = ca.direct_with(b).await;
    ca.sends_to(&mut cb, &conv, "through nginx").await;
    // least_conn spread the two connections over both nodes.
    assert_ne!(nodes_seen[0], nodes_seen[1], "both clients on one node");
    // The operators' endpoints answer on a node's own address only, not through the balancer.
    for (method, path) in [
        ("GET", "/metrics"),
        ("POST", "/v1/internal/events"),
        (
            "GET",
            "/demo/token?user=6f1c7a52-0b7e-4c55-9d8e-2f4a1b3c5d6e",
        ),
    ] {
        assert_eq!(
            http_status(cluster.lb, method, path, None).await,
            403,
            "{path}"
        );
    }
    assert_eq!(
        http_status(cluster.node_ports[0], "GET", "/metrics", None).await,
        200
    );

    // Kill b's node; b reconnects through nginx (to the survivor) and both go on.
    let killed = cb.hello["node"].as_str().unwrap().to_owned();
    cluster.kill(&killed);
    let died = Instant::now();
    let mut cb = loop {
        // nginx passes a connection the dead node refuses on to the live one.
        let c = Client::connect(&url, &token(b)).await;
        if c.hello["node"] != killed.as_str() {
            break c;
        }
        assert!(died.elapsed() < Duration::from_secs(10));
    };
    let within = SECONDS_10.saturating_sub(died.elapsed());
    eventually(
        within,
        POLL,
        "a send is served after the kill",
        async || {
            let r = ca
                .call("send", json!({"conv": conv, "body": "after"}))
                .await;
            (r["t"] == "sent").then_some(())
        },
    )
    .await;
    let h = cb.call("history", json!({"conv": conv})).await;
    let bodies: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["through nginx", "after"]);
}

/// A send answered `sent`: the conversation, its mid, and when the answer came.
struct Ack {
    conv: String,
    mid: String,
    at: Instant,
}

type AckLog = Arc<Mutex<Vec<Ack>>>;

/// A user who sends into `convs` in turn every 40 ms through the balancer until `stop`,
/// reconnecting (through the balancer again) whenever its node goes away, and logging each
/// acknowledged send.
async fn keep_sending(
    url: String,
    user: Uuid,
    convs: Vec<String>,
    log: AckLog,
    stop: CancellationToken,
) {
    let mut n = 0usize;
    while !stop.is_cancelled() {
        let Some(mut c) = Client::try_connect(&url, &token(user)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.is_cancelled() {
            n += 1;
            let conv = &convs[n % convs.len()];
            let body = format!("{user} {n}");
            let Some(r) = c
                .try_call("send", json!({"conv": conv, "body": body}))
                .await
            else {
                break; // its node died under it
            };
            // `unavailable` while a fault lasts is expected; anything else is a bug.
            assert!(
                r["t"] == "sent" || r["code"] == "unavailable",
                "unexpected answer {r}"
            );
            if r["t"] == "sent" {
                let mid = r["mid"].as_str().unwrap().to_owned();
                let at = Instant::now();
                let conv = conv.clone();
                log.lock().unwrap().push(Ack { conv, mid, at });
            }
            c.pushes.clear();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

/// Waits until every one of `convs` has had a send acknowledged after `since`, and returns how
/// long after `since` that was; fails past PROTOCOL's 10 s.
async fn all_served_after(log: &AckLog, convs: &[String], since: Instant, what: &str) -> Duration {
    loop {
        let served = {
            let log = log.lock().unwrap();
            convs.iter().all(|c| {
                log.iter()
                    .rev()
                    .take_while(|a| a.at > since)
                    .any(|a| &a.conv == c)
            })
        };
        if served {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "{what}: not every conversation was served again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn under_traffic_three_nodes_behind_nginx_ride_out_a_killed_node_a_redis_restart_and_a_database_outage()
 {
    let redis_port = free_port();
    let mut redis = PrivateRedis::start(redis_port);
    let db = TestDb::new(Backend::Postgres).await;
    let db_name = db.url.rsplit('/').next().unwrap().to_owned();
    let unlimited = [
        ("CHAT_RATE_MESSAGES", "100000"),
        ("CHAT_RATE_BURST", "100000"),
    ];
    let cluster = ScriptCluster::start(3, &db, &redis.url(), &unlimited);
    let (url, live) = (cluster.url(), cluster.node_ids());
    let doomed = 1; // node-2

    // Six users; groups of three of them until at least six, two owned by the doomed node.
    let users: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
    let mut setup = Vec::new();
    for u in &users {
        setup.push(Client::connect(&url, &token(*u)).await);
    }
    let mut rooms: Vec<(String, [usize; 3])> = Vec::new();
    let owned_by_doomed = |rooms: &[(String, [usize; 3])]| {
        rooms
            .iter()
            .filter(|(c, _)| owner_among(c, &live) == doomed)
            .count()
    };
    while rooms.len() < 6 || owned_by_doomed(&rooms) < 2 {
        assert!(rooms.len() < 40, "no group landed on {}", live[doomed]);
        let k = rooms.len();
        let m = [k % 6, (k + 1) % 6, (k + 2) % 6];
        let members = [users[m[1]].to_string(), users[m[2]].to_string()];
        let r = setup[m[0]]
            .call("create", json!({"kind": "group", "members": members}))
            .await;
        rooms.push((r["conversation"]["id"].as_str().unwrap().to_owned(), m));
    }
    drop(setup);
    let convs: Vec<String> = rooms.iter().map(|(c, _)| c.clone()).collect();

    // A user idle on the doomed node, watched from another.
    let idle = Uuid::new_v4();
    let _idle = Client::connect(&cluster.node_url(doomed), &token(idle)).await;
    let mut watcher = Client::connect(&cluster.node_url(0), &token(Uuid::new_v4())).await;
    watcher
        .call("watch", json!({"users": [idle.to_string()]}))
        .await;

    let log: AckLog = Arc::default();
    let stop = CancellationToken::new();
    let senders: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let mine = rooms
                .iter()
                .filter(|(_, m)| m.contains(&i))
                .map(|(c, _)| c.clone())
                .collect();
            tokio::spawn(keep_sending(
                url.clone(),
                *u,
                mine,
                log.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let start = Instant::now();
    all_served_after(&log, &convs, start, "at the start").await;
    // Steady traffic before each fault, so each one strikes sends in flight.
    let steady = Duration::from_secs(1);
    tokio::time::sleep(steady).await;

    // (a) kill -9 one node.
    let offline = tokio::spawn(async move {
        loop {
            let f = watcher.push("presence").await;
            if f["user"] == idle.to_string() && f["status"] == "offline" {
                return Instant::now();
            }
        }
    });
    cluster.kill(&live[doomed]);
    let killed = Instant::now();
    let moved = all_served_after(&log, &convs, killed, "after kill -9").await;
    let gone = offline.await.unwrap().duration_since(killed);
    assert!(
        gone < Duration::from_secs(10),
        "offline only after {gone:?}"
    );
    tokio::time::sleep(steady).await;

    // (b) Redis restarts (empty: no persistence).
    redis.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _redis = PrivateRedis::start(redis_port);
    let redis_back = Instant::now();
    let healed = all_served_after(&log, &convs, redis_back, "after Redis returned").await;
    tokio::time::sleep(steady).await;

    // (c) PostgreSQL refuses the cluster for three seconds.
    outage(&db_name, true).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage(&db_name, false).await;
    let db_back = Instant::now();
    let recovered = all_served_after(&log, &convs, db_back, "after the database returned").await;
    tokio::time::sleep(steady).await;

    stop.cancel();
    for s in senders {
        s.await.unwrap();
    }
    let log = std::mem::take(&mut *log.lock().unwrap());
    println!(
        "{} sends acknowledged; served again {moved:?} after kill -9 (its user offline after \
         {gone:?}), {healed:?} after Redis returned, {recovered:?} after the database returned",
        log.len()
    );
    // Nothing acknowledged is lost and every conversation is still 1..N.
    for (conv, m) in &rooms {
        let acked: Vec<String> = log
            .iter()
            .filter(|a| &a.conv == conv)
            .map(|a| a.mid.clone())
            .collect();
        let mut reader = Client::connect(&url, &token(users[m[0]])).await;
        assert_kept(&mut reader, conv, &acked).await;
    }
}

/// A client that stays connected through the balancer: whenever its connection ends (a node says
/// `bye` and closes) it connects again at once, retrying every 100 ms. Counts itself in
/// `connected` while it holds a connection; returns the longest it was without one.
async fn stay_connected(
    url: String,
    user: Uuid,
    connected: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> Duration {
    let mut longest = Duration::ZERO;
    let mut lost_at: Option<Instant> = None;
    while !stop.is_cancelled() {
        let Some(mut c) = Client::try_connect(&url, &token(user)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if let Some(at) = lost_at.take() {
            longest = longest.max(at.elapsed());
        }
        connected.fetch_add(1, Ordering::SeqCst);
        // Holds the connection until the node closes it (or the test ends).
        loop {
            let frame = tokio::select! {
                _ = stop.cancelled() => break,
                frame = c.try_next_frame() => frame,
            };
            // None is a closed connection, or 10 s without a frame: a ping tells which.
            if frame.is_none()
                && (c.close_code.is_some() || c.try_call("ping", json!({})).await.is_none())
            {
                break;
            }
        }
        connected.fetch_sub(1, Ordering::SeqCst);
        lost_at = Some(Instant::now());
    }
    longest
}

#[tokio::test]
async fn a_rolling_restart_behind_nginx_has_every_client_back_within_seconds() {
    let db = TestDb::new(Backend::Postgres).await;
    let cluster = ScriptCluster::start(3, &db, &redis_url(), &[]);
    let url = cluster.url();
    let users: Vec<Uuid> = (0..36).map(|_| Uuid::new_v4()).collect();
    let connected = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let clients: Vec<_> = users
        .iter()
        .map(|u| {
            tokio::spawn(stay_connected(
                url.clone(),
                *u,
                connected.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let all_connected = async |what: &str| {
        let since = Instant::now();
        while connected.load(Ordering::SeqCst) < users.len() {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "{what}: {} of {} clients connected after 10 s",
                connected.load(Ordering::SeqCst),
                users.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        since.elapsed()
    };
    all_connected("at the start").await;

    // SIGTERM one node, start it again, wait until it is ready, the next one: what
    // `scripts/cluster restart` does.
    let dir = cluster.dir.path().to_owned();
    let restarted = {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster");
        // The nodes start again with the settings `start` kept in the directory.
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(script)
                .arg("restart")
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
        .unwrap()
    };
    assert!(restarted, "scripts/cluster restart failed");
    let back = all_connected("after the rolling restart").await;

    stop.cancel();
    let mut longest = Duration::ZERO;
    for c in clients {
        longest = longest.max(c.await.unwrap());
    }
    println!("every client back {back:?} after the rolling restart; the longest gap {longest:?}");
    assert!(
        longest < Duration::from_secs(5),
        "a client was without a connection for {longest:?}"
    );
    // And they chat across the restarted nodes.
    let mut ca = Client::connect(&url, &token(users[0])).await;
    let mut cb = Client::connect(&url, &token(users[1])).await;
    let conv = ca.direct_with(users[1]).await;
    let r = ca
        .call("send", json!({"conv": conv, "body": "after"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    assert_eq!(cb.push("message").await["body"], "after");
}

/// A start that fails stops what it started and says why: nginx's port taken, or a node that
/// exits at once (its database does not exist), said within seconds with the end of its log.
#[tokio::test]
async fn a_failed_cluster_start_leaves_nothing_running_and_says_why() {
    let db = TestDb::new(Backend::Postgres).await;
    let cluster = ScriptCluster::new(2, &db, &redis_url(), &[]);
    let squatter = std::net::TcpListener::bind(("127.0.0.1", cluster.lb)).unwrap();
    let out = cluster.script_output(&["start", "2"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("taken"), "{said}");
    drop(squatter);
    // The balancer's port was checked before anything started: no node listens.
    for port in &cluster.node_ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", *port)).is_err());
    }

    let missing = format!("{}_missing", db.url);
    let mut doomed = ScriptCluster::new(2, &db, &redis_url(), &[]);
    doomed.env.retain(|(k, _)| k != "CHAT_DATABASE_URL");
    doomed.env.push(("CHAT_DATABASE_URL".to_owned(), missing));
    let started = Instant::now();
    let out = doomed.script_output(&["start", "2"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("node-1 exited at start") && said.contains("does not exist"),
        "{said}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    for entry in std::fs::read_dir(doomed.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            path.extension().is_none_or(|e| e != "pid"),
            "a pid file stayed: {}",
            path.display()
        );
    }
    for port in doomed.node_ports.iter().chain([&doomed.lb]) {
        assert!(std::net::TcpStream::connect(("127.0.0.1", *port)).is_err());
    }
}

/// `scripts/cluster start N --redis-cluster` puts the nodes' bus on a Redis Cluster of their own
/// (six servers, files in the cluster's directory): they see each other, chat across nodes, and
/// `stop` ends the Redis Cluster with them.
#[tokio::test]
async fn a_cluster_on_a_redis_cluster_of_its_own_chats_across_nodes_and_stops_whole() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut cluster = ScriptCluster::new(2, &db, "redis://127.0.0.1:1", &[]);
    let redis_ports: Vec<u16> = (0..6)
        .map(|_| super::redis_cluster::free_port_with_bus())
        .collect();
    let listed: Vec<String> = redis_ports.iter().map(u16::to_string).collect();
    cluster
        .env
        .push(("CLUSTER_REDIS_PORTS".to_owned(), listed.join(" ")));
    let out = cluster.script_output(&["start", "2", "--redis-cluster"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = std::fs::read_to_string(cluster.dir.path().join("redis-cluster/url")).unwrap();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = Client::connect(&cluster.node_url(0), &token(a)).await;
    let mut cb = Client::connect(&cluster.node_url(1), &token(b)).await;
    let conv = ca.direct_with(b).await;
    ca.sends_to(&mut cb, &conv, "over the shards").await;
    // The nodes' channels are sharded channels on the Redis Cluster.
    let subscribed: usize = redis_ports
        .iter()
        .map(|port| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "pubsub", "shardchannels"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(":node:"))
                .count()
        })
        .sum();
    assert_eq!(subscribed, 2);
    drop((ca, cb));
    assert!(cluster.script(&["stop"]));
    for port in redis_ports {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
