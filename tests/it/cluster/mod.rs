//! Several real nodes on one PostgreSQL and one Redis: users anywhere reach users anywhere, each
//! push crosses to another node once per node (not per recipient), what stays on one node never
//! touches Redis, and the cluster rides out a dead node, a Redis restart and a database outage.

mod failover;
mod fanout;
mod faults;
mod nginx;
mod pg_failover;
mod pg_pair;
mod pg_replicas;
mod profiles;
mod redis_cluster;
mod resting;
mod stalls;

use chat_actors::ids::ConversationId;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Backend, Binary, Client, TestDb};

pub fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `n` nodes named `node-0`.. on one fresh database and a fresh Redis prefix, each ready and
/// each seeing all the others.
pub async fn cluster(db: &TestDb, n: usize) -> Vec<Binary> {
    cluster_on(db, n, &redis_url(), &[]).await
}

/// [`cluster`] on the Redis at `redis`, with `extra` settings for every node.
pub async fn cluster_on(db: &TestDb, n: usize, redis: &str, extra: &[(&str, &str)]) -> Vec<Binary> {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    cluster_prefixed(&db.url, n, redis, extra, &prefix).await
}

/// [`cluster_on`] on the database at `db_url`, with the Redis names under `prefix`.
pub async fn cluster_prefixed(
    db_url: &str,
    n: usize,
    redis: &str,
    extra: &[(&str, &str)],
    prefix: &str,
) -> Vec<Binary> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(node(db_url, i, redis, extra, prefix).await);
    }
    nodes
}

/// Node `node-{i}` of the cluster on `db_url` and the Redis names under `prefix`, ready.
pub async fn node(
    db_url: &str,
    i: usize,
    redis: &str,
    extra: &[(&str, &str)],
    prefix: &str,
) -> Binary {
    let id = format!("node-{i}");
    let mut env = vec![
        ("CHAT_DATABASE_URL", db_url),
        ("CHAT_REDIS_URL", redis),
        ("CHAT_REDIS_PREFIX", prefix),
        ("CHAT_NODE_ID", id.as_str()),
        ("CHAT_RATE_MESSAGES", "100000"),
        ("CHAT_RATE_BURST", "100000"),
    ];
    env.extend_from_slice(extra);
    Binary::start(Backend::Postgres, &env).await
}

/// The pushes node `b` has published to other nodes so far.
pub async fn pushes_published(b: &Binary) -> f64 {
    b.metric("chat_bus_publishes_total{kind=\"push\"}").await
}

pub async fn group(c: &mut Client, members: &[Uuid]) -> String {
    let members: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let r = c
        .call("create", json!({"kind": "group", "members": members}))
        .await;
    r["conversation"]["id"].as_str().unwrap().to_owned()
}

/// The node that owns `conv` among `node-0`..`node-{n-1}`, as every node computes it.
pub fn owner(conv: &str, n: usize) -> usize {
    let live: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    owner_among(conv, &live)
}

/// The index in `live` (node ids) of the node that owns `conv`.
pub fn owner_among(conv: &str, live: &[String]) -> usize {
    let conv = ConversationId::parse(conv).unwrap();
    let owner = chat_actors::ownership::owner(conv, live).unwrap();
    live.iter().position(|n| n == owner).unwrap()
}

/// A Redis server of the test's own (the shared one must not be stopped under other tests).
pub struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
