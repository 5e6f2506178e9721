//! PostgreSQL failing over under two nodes: `CHAT_DATABASE_URL` names a primary and its
//! synchronous standby (started by `scripts/pg-replica`, on ports of the test's own); the primary
//! is stopped hard and the standby promoted under steady traffic.

use std::time::{Duration, Instant};

use serde_json::json;
use uuid::Uuid;

use super::pg_pair::PgPair;
use super::{cluster_prefixed, redis_url};
use crate::helpers::{Client, assert_kept};

/// One send from `from` in `conv`: its mid when answered `sent`; a refusal must be
/// `unavailable`, and its mid is returned for a retry.
async fn send(from: &mut Client, conv: &str, mid: String) -> Result<String, String> {
    let r = from
        .call("send", json!({"conv": conv, "body": mid, "mid": mid}))
        .await;
    if r["t"] == "sent" {
        return Ok(mid);
    }
    assert_eq!(r["code"], "unavailable", "{r}");
    Err(mid)
}

#[tokio::test]
async fn a_promoted_standby_takes_the_writes_without_a_node_restart_and_loses_nothing_acknowledged()
{
    let pair = PgPair::start();
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let nodes = cluster_prefixed(&pair.url, 2, &redis_url(), &[], &prefix).await;
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let conv = ca.direct_with(b).await;
    let mut acked = Vec::new();
    let steady = async |ca: &mut Client, acked: &mut Vec<String>, how_long: Duration| {
        let until = Instant::now() + how_long;
        while Instant::now() < until {
            let sent = send(ca, &conv, Uuid::now_v7().to_string()).await;
            acked.push(sent.expect("a send failed with the database whole"));
        }
    };
    steady(&mut ca, &mut acked, Duration::from_secs(2)).await;

    // The primary dies; the operator (or Patroni) promotes the standby.
    pair.run("crash", "primary");
    let mut unsent = None;
    for _ in 0..5 {
        match send(
            &mut ca,
            &conv,
            unsent.take().unwrap_or_else(|| Uuid::now_v7().to_string()),
        )
        .await
        {
            Ok(mid) => acked.push(mid),
            Err(mid) => unsent = Some(mid),
        }
    }
    pair.run("promote", "standby");
    let promoted = Instant::now();
    loop {
        let mid = unsent.take().unwrap_or_else(|| Uuid::now_v7().to_string());
        match send(&mut ca, &conv, mid).await {
            Ok(mid) => {
                acked.push(mid);
                break;
            }
            Err(mid) => unsent = Some(mid),
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "sends not served 10 s after the promotion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "sends served again {:?} after the promotion",
        promoted.elapsed()
    );
    steady(&mut ca, &mut acked, Duration::from_secs(2)).await;

    // The old primary comes back as a standby: it takes no writes, and the nodes go on.
    pair.run("rejoin", "primary");
    assert!(pair.in_recovery(pair.ports[0]));
    assert!(!pair.in_recovery(pair.ports[1]));
    steady(&mut ca, &mut acked, Duration::from_secs(2)).await;

    // Every acknowledged message once, in dense order, read on the other node; the pushes came.
    assert_kept(&mut cb, &conv, &acked).await;
    let last = acked.last().unwrap().clone();
    tokio::time::timeout(Duration::from_secs(5), async {
        while cb.push("message").await["body"] != last.as_str() {}
    })
    .await
    .expect("the last message was pushed");
    for (node, pid) in nodes.iter().zip(pids) {
        assert_eq!(node.child.id(), pid);
        assert_eq!(node.get("/readyz").await.0, 200);
    }
}
