//! The nodes on a Redis Cluster of their own: a shard's master killed under steady cross-node
//! traffic fails over to its replica and the nodes follow by themselves (what needs no other
//! node goes on meanwhile); a replica killed, and the old master back as a replica, are not seen
//! by clients at all.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::redis_cluster::PrivateRedisCluster;
use super::{cluster_on, group, owner};
use crate::helpers::{Backend, Binary, Client, SECONDS_10, TestDb, assert_kept, eventually};

/// One conversation of the traffic: who sends, who should get the pushes (indexes into the
/// users), and every `mid` answered `sent`.
struct Chat {
    conv: String,
    sender: usize,
    receivers: Vec<usize>,
    acked: Vec<String>,
    /// A send that failed, retried with its `mid` next round (safe: the same message once).
    unsent: Option<String>,
}

/// Six users, two on each of three nodes, in chats that all cross nodes.
struct Traffic {
    users: Vec<Uuid>,
    clients: Vec<Client>,
    chats: Vec<Chat>,
}

impl Traffic {
    async fn start(nodes: &[Binary]) -> Traffic {
        let users: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        let mut clients = Vec::new();
        for (i, user) in users.iter().enumerate() {
            clients.push(nodes[i % 3].client(*user).await);
        }
        // Users i and i+3 share node i % 3.
        let plan: [(usize, &[usize]); 4] = [(0, &[1]), (5, &[3]), (4, &[2]), (1, &[0, 2])];
        let mut chats = Vec::new();
        for (sender, receivers) in plan {
            let others: Vec<Uuid> = receivers.iter().map(|r| users[*r]).collect();
            let conv = match others.as_slice() {
                [one] => clients[sender].direct_with(*one).await,
                many => group(&mut clients[sender], many).await,
            };
            chats.push(Chat {
                conv,
                sender,
                receivers: receivers.to_vec(),
                acked: Vec::new(),
                unsent: None,
            });
        }
        Traffic {
            users,
            clients,
            chats,
        }
    }

    /// One message in every chat. `strict`: each must be answered `sent` and pushed to every
    /// receiver; otherwise a failed send is kept for a retry and pushes are not waited for.
    async fn round(&mut self, strict: bool) {
        for chat in &mut self.chats {
            let mid = chat
                .unsent
                .take()
                .unwrap_or_else(|| Uuid::now_v7().to_string());
            let r = self.clients[chat.sender]
                .call("send", json!({"conv": chat.conv, "body": mid, "mid": mid}))
                .await;
            if r["t"] != "sent" {
                assert!(!strict, "a send failed: {r}");
                assert_eq!(r["code"], "unavailable", "{r}");
                chat.unsent = Some(mid);
                continue;
            }
            chat.acked.push(mid.clone());
            if strict {
                for receiver in &chat.receivers {
                    let c = &mut self.clients[*receiver];
                    assert!(
                        pushed(c, &mid, Duration::from_secs(5)).await,
                        "user {receiver} did not get {mid}"
                    );
                }
            }
        }
    }

    /// Rounds of `strict` traffic for `how_long`.
    async fn for_a_while(&mut self, how_long: Duration, strict: bool) {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            self.round(strict).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether `c` gets the `message` push with body `body` within `within` (earlier ones skipped).
async fn pushed(c: &mut Client, body: &str, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        while c.push("message").await["body"] != body {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_shard_failover_heals_by_itself_and_nothing_acknowledged_is_lost() {
    let redis = PrivateRedisCluster::start();
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster_on(&db, 3, redis.url(), &[]).await;
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    let mut traffic = Traffic::start(&nodes).await;
    // Users 0 and 3 are both on node 0: a group of theirs that node 0 owns needs no other node.
    let mut local = group(&mut traffic.clients[0], &[traffic.users[3]]).await;
    while owner(&local, 3) != 0 {
        local = group(&mut traffic.clients[0], &[traffic.users[3]]).await;
    }
    let mut local_acked = Vec::new();
    traffic.for_a_while(Duration::from_secs(2), true).await;

    // Publishes are counted by the shard (master) that took them, masters only.
    let (masters, _) = redis.roles(redis.ports[0]);
    let mut counted = 0.0;
    for node in &nodes {
        let (_, metrics) = node.get("/metrics").await;
        for line in metrics.lines() {
            if let Some(rest) =
                line.strip_prefix("chat_bus_shard_publishes_total{shard=\"127.0.0.1:")
            {
                let (port, value) = rest.split_once("\"} ").unwrap();
                assert!(masters.contains(&port.parse().unwrap()), "{line}");
                counted += value.parse::<f64>().unwrap();
            }
        }
    }
    assert!(counted > 0.0, "no publish counted by shard");

    // The master that carries the most node channels goes, mid-traffic.
    let doomed = *masters
        .iter()
        .max_by_key(|m| redis.shard_channels(**m, "*:node:*"))
        .unwrap();
    assert!(redis.shard_channels(doomed, "*:node:*") > 0);
    let survivor = *masters.iter().find(|m| **m != doomed).unwrap();
    redis.kill(doomed);
    let killed = Instant::now();
    let promoted = loop {
        traffic.round(false).await;
        // What needs no other node goes on through the failover, every time.
        let mid = Uuid::now_v7().to_string();
        let r = traffic.clients[0]
            .call("send", json!({"conv": local, "body": mid, "mid": mid}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        assert!(pushed(&mut traffic.clients[3], &mid, Duration::from_secs(5)).await);
        local_acked.push(mid);
        let (now, _) = redis.roles(survivor);
        if now.len() == 3 && !now.contains(&doomed) {
            break Instant::now();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica took over from {doomed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Within 10 s of the promotion, messages cross between every pair of nodes again, by
    // themselves.
    let healing = "cross-node delivery after the failover";
    eventually(
        SECONDS_10,
        Duration::from_millis(200),
        healing,
        async || {
            // The group of users 0, 1 and 2: one on each node.
            let conv = traffic.chats[3].conv.clone();
            for from in 0..3 {
                let body = Uuid::now_v7().to_string();
                let r = traffic.clients[from]
                    .call("send", json!({"conv": conv, "body": body, "mid": body}))
                    .await;
                if r["t"] != "sent" {
                    return None;
                }
                traffic.chats[3].acked.push(body.clone());
                for to in [0, 1, 2].into_iter().filter(|to| *to != from) {
                    if !pushed(&mut traffic.clients[to], &body, Duration::from_secs(2)).await {
                        return None;
                    }
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!(
        "master on {doomed} killed; replica promoted after {:?}; cross-node delivery whole {:?} later",
        promoted - killed,
        promoted.elapsed()
    );
    traffic.for_a_while(Duration::from_secs(1), false).await;
    // Everything still unsent goes now (its retry).
    traffic.round(true).await;

    // A replica killed, then the old master back (as a replica): nothing a client can see.
    let (_, replicas) = redis.roles(survivor);
    redis.kill(replicas[0]);
    traffic.for_a_while(Duration::from_secs(3), true).await;
    redis.restart(doomed);
    let rejoined = "the old master rejoins as a replica";
    eventually(
        SECONDS_10,
        Duration::from_millis(200),
        rejoined,
        async || redis.roles(survivor).1.contains(&doomed).then_some(()),
    )
    .await;
    traffic.for_a_while(Duration::from_secs(3), true).await;

    // Every acknowledged message is kept once, in dense order; no node restarted.
    for i in 0..traffic.chats.len() {
        let (conv, acked, sender) = {
            let chat = &traffic.chats[i];
            (chat.conv.clone(), chat.acked.clone(), chat.sender)
        };
        assert!(!acked.is_empty());
        assert_kept(&mut traffic.clients[sender], &conv, &acked).await;
    }
    assert_kept(&mut traffic.clients[0], &local, &local_acked).await;
    for (node, pid) in nodes.iter().zip(pids) {
        assert_eq!(node.child.id(), pid);
        assert_eq!(node.get("/readyz").await.0, 200);
    }
    // Presence across nodes is right: everyone online, and a user who leaves node 2 is seen
    // offline from node 0.
    let everyone: Vec<String> = traffic.users.iter().map(Uuid::to_string).collect();
    let r = traffic.clients[0]
        .call("presence", json!({"users": everyone}))
        .await;
    for item in r["items"].as_array().unwrap() {
        assert_eq!(item["status"], "online", "{r}");
    }
    drop(traffic.clients.remove(5));
    let gone = traffic.users[5].to_string();
    let offline = "a user who left node 2 is offline on node 0";
    eventually(
        SECONDS_10,
        Duration::from_millis(200),
        offline,
        async || {
            let r = traffic.clients[0]
                .call("presence", json!({"users": [gone]}))
                .await;
            (r["items"][0]["status"] == "offline").then_some(())
        },
    )
    .await;
}
