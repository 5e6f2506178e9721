//! Reads from a standby (`CHAT_DATABASE_REPLICA_URLS`) over two nodes: they go to the standby
//! while it is current, a reader always sees what it was told of (its own `sent`, a push), on
//! the other node, whether the standby keeps up, lags (replay paused) or dies.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::pg_pair::PgPair;
use super::{cluster_prefixed, redis_url};
use crate::helpers::{Binary, Client, eventually};

/// The two users' connections: `a` sends on node 0; `a_elsewhere` (a's second device) and `b`
/// read on node 1.
struct Readers {
    a: Client,
    a_elsewhere: Client,
    b: Client,
    conv: String,
    sent: usize,
    /// The newest message sent.
    last: String,
}

impl Readers {
    /// One round: `a` sends; at once a's other device reads the newest page and its list on
    /// the other node; `b`, told by the push, reads its list there: each sees the message.
    async fn round(&mut self) {
        let mid = Uuid::now_v7().to_string();
        let r = self
            .a
            .call("send", json!({"conv": self.conv, "body": mid, "mid": mid}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        self.sent += 1;
        self.last = mid.clone();
        self.read_after_send().await;

        tokio::time::timeout(Duration::from_secs(5), async {
            while self.b.push("message").await["mid"] != mid.as_str() {}
        })
        .await
        .expect("b was pushed the message");
        self.b_reads().await;
    }

    /// a's other device reads the newest page and its list: the newest message is there.
    async fn read_after_send(&mut self) {
        let mid = self.last.as_str();
        let page = self
            .a_elsewhere
            .call("history", json!({"conv": self.conv, "limit": 1}))
            .await;
        assert_eq!(page["messages"][0]["mid"], mid, "history: {page}");
        let list = self.a_elsewhere.call("conversations", json!({})).await;
        assert_eq!(newest(&list)["mid"], mid, "a's list: {list}");
    }

    /// b, told by the push, reads its list: the message is there, and counted unread.
    async fn b_reads(&mut self) {
        let list = self.b.call("conversations", json!({})).await;
        assert_eq!(newest(&list)["mid"], self.last.as_str(), "b's list: {list}");
        assert_eq!(list["items"][0]["unread"], self.sent, "b's unread: {list}");
    }

    async fn rounds_for(&mut self, how_long: Duration) -> usize {
        let until = Instant::now() + how_long;
        let mut n = 0;
        while Instant::now() < until {
            self.round().await;
            n += 1;
        }
        n
    }
}

fn newest(list: &Value) -> &Value {
    &list["items"][0]["last_message"]
}

/// The reads served on `target` by all the nodes (a history page is read where its
/// conversation's owner is).
async fn reads(nodes: &[Binary], target: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += node
            .metric(&format!("chat_db_reads_total{{target=\"{target}\"}}"))
            .await;
    }
    sum
}

async fn usable(node: &Binary, standby: &str) -> f64 {
    node.metric(&format!("chat_db_replica_usable{{replica=\"{standby}\"}}"))
        .await
}

#[tokio::test]
async fn reads_go_to_a_current_standby_and_a_reader_never_sees_less_than_it_was_told() {
    let pair = PgPair::start();
    let [primary, standby] = pair.ports;
    let standby_url = PgPair::url_of(standby);
    let standby_name = format!("127.0.0.1:{standby}");
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let nodes = cluster_prefixed(
        &PgPair::url_of(primary),
        2,
        &redis_url(),
        &[
            ("CHAT_DATABASE_REPLICA_URLS", &standby_url),
            ("CHAT_RATE_REQUESTS", "100000"),
            ("CHAT_RATE_REQUESTS_BURST", "100000"),
        ],
        &prefix,
    )
    .await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let conv = ca.direct_with(b).await;
    let mut readers = Readers {
        a: ca,
        a_elsewhere: nodes[1].client(a).await,
        b: nodes[1].client(b).await,
        conv,
        sent: 0,
        last: String::new(),
    };
    let reader = &nodes[1];

    // The standby keeps up: the reads are its.
    let (on_replica, on_primary) = (
        reads(&nodes, "replica").await,
        reads(&nodes, "primary").await,
    );
    for _ in 0..50 {
        readers.round().await;
    }
    let served = reads(&nodes, "replica").await - on_replica;
    let fell_back = reads(&nodes, "primary").await - on_primary;
    eprintln!("standby current: {served} reads on it, {fell_back} on the primary");
    assert!(
        served >= 100.0,
        "150 reads, {served} on the standby, {fell_back} on the primary"
    );
    assert_eq!(usable(reader, &standby_name).await, 1.0);

    // Its replay stops: every read still sees what it was told (from the primary), and after
    // the bound (1 s) the standby is skipped.
    pair.sql(standby, "SELECT pg_wal_replay_pause()");
    let on_primary = reads(&nodes, "primary").await;
    let n = readers.rounds_for(Duration::from_millis(2500)).await;
    let fell_back = reads(&nodes, "primary").await - on_primary;
    eprintln!("standby paused: {n} rounds, {fell_back} reads on the primary");
    assert!(
        fell_back >= 3.0 * n as f64 - 1.0,
        "{fell_back} of {n} rounds"
    );
    assert_eq!(usable(reader, &standby_name).await, 0.0);
    let lag = reader
        .metric(&format!(
            "chat_db_replica_lag_milliseconds{{replica=\"{standby_name}\"}}"
        ))
        .await;
    assert!(lag > 1000.0, "lag shown as {lag} ms");

    // It replays again: it is current again, and the reads come back to it.
    pair.sql(standby, "SELECT pg_wal_replay_resume()");
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        "the standby usable again",
        async || (usable(reader, &standby_name).await == 1.0).then_some(()),
    )
    .await;
    let on_replica = reads(&nodes, "replica").await;
    readers.rounds_for(Duration::from_secs(1)).await;
    assert!(reads(&nodes, "replica").await > on_replica);

    // It dies: no read fails, they go to the primary. (Only reads: the primary's commits wait
    // for its synchronous standby, by PostgreSQL's design.)
    pair.run("crash", "standby");
    let on_primary = reads(&nodes, "primary").await;
    for _ in 0..50 {
        readers.read_after_send().await;
        readers.b_reads().await;
    }
    assert!(reads(&nodes, "primary").await - on_primary >= 149.0);
    assert_eq!(usable(reader, &standby_name).await, 0.0);
}
