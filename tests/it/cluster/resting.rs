//! A conversation at rest (its actor stopped, its record kept) on a node that lost it to another
//! owner for a while: what that owner changed is there when it comes back.

use serde_json::json;
use uuid::Uuid;

use super::{group, node, owner_among, redis_url};
use crate::helpers::{Binary, FAST_POLL, SECONDS_10, TestDb, eventually};

/// Waits until `node` counts `n` live nodes.
async fn live_nodes(node: &Binary, n: f64, what: &str) {
    eventually(SECONDS_10, FAST_POLL, what, async || {
        (node.metric("chat_cluster_live_nodes").await == n).then_some(())
    })
    .await;
}

/// Node 0 owns a group of two nodes and keeps its record at rest; a third node joins and owns
/// it; a member added there must be a member when the group is back on node 0, not refused by
/// the record node 0 kept from before.
#[tokio::test]
async fn a_conversation_that_moved_away_and_back_is_loaded_not_taken_from_rest() {
    let db = TestDb::new(crate::helpers::Backend::Postgres).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let redis = redis_url();
    let quick = [("CHAT_CONVERSATION_IDLE_MS", "500")];
    let nodes = [
        node(&db.url, 0, &redis, &quick, &prefix).await,
        node(&db.url, 1, &redis, &quick, &prefix).await,
    ];
    live_nodes(&nodes[0], 2.0, "node 0 sees both nodes").await;
    let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut a = nodes[0].client(alice).await;
    let mut c = nodes[0].client(carol).await;
    let two: Vec<String> = ["node-0", "node-1"].map(str::to_owned).into();
    let three: Vec<String> = ["node-0", "node-1", "node-2"].map(str::to_owned).into();
    let mut conv = None;
    for _ in 0..100 {
        let g = group(&mut a, &[bob]).await;
        if owner_among(&g, &two) == 0 && owner_among(&g, &three) == 2 {
            conv = Some(g);
            break;
        }
    }
    let conv = conv.expect("a group owned by node 0 of two and by node 2 of three");
    let sent = a.call("send", json!({"conv": conv, "body": "one"})).await;
    assert_eq!(sent["t"], "sent", "{sent}");
    eventually(SECONDS_10, FAST_POLL, "node 0's actors rest", async || {
        (nodes[0].metric("chat_conversation_actors").await == 0.0).then_some(())
    })
    .await;
    assert!(nodes[0].metric("chat_conversations_resting").await >= 1.0);

    let third = node(&db.url, 2, &redis, &quick, &prefix).await;
    live_nodes(&nodes[0], 3.0, "node 0 sees the third node").await;
    let added = a
        .call(
            "add_member",
            json!({"conv": conv, "user": carol.to_string()}),
        )
        .await;
    assert_eq!(added["t"], "ok", "{added}");
    third.terminate();
    live_nodes(&nodes[0], 2.0, "node 0 sees the third node gone").await;

    let hers = c
        .call("send", json!({"conv": conv, "body": "carol's"}))
        .await;
    assert_eq!(
        hers["t"], "sent",
        "carol is a member on node 0 again: {hers}"
    );
    // one, the system message of carol's joining, carol's
    assert_eq!(hers["seq"], 3, "{hers}");
}
