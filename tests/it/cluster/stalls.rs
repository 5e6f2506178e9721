//! A node that stalls (here: SIGSTOP, as a runtime far behind or a paused VM would leave it) and
//! runs again: the others count it out of the live set, and its users' presence must neither
//! flap for a moment's silence nor stay lost when it comes back after a longer one, though the
//! stalled node itself never saw anything happen.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{cluster, group, owner};
use crate::helpers::{Backend, Binary, Client, FAST_POLL, POLL, SECONDS_10, TestDb, eventually};

/// Two nodes; a watcher's client on node 0, told that the user of the client on node 1 is online.
async fn watched_across_two_nodes(db: &TestDb) -> (Vec<Binary>, Client, Client, Uuid) {
    let nodes = cluster(db, 2).await;
    let (watcher, user) = (Uuid::new_v4(), Uuid::new_v4());
    let mut cw = nodes[0].client(watcher).await;
    cw.call("watch", json!({"users": [user.to_string()]})).await;
    let cu = nodes[1].client(user).await;
    let online = cw.push("presence").await;
    assert_eq!(
        (online["user"].as_str(), online["status"].as_str()),
        (Some(user.to_string().as_str()), Some("online"))
    );
    (nodes, cw, cu, user)
}

/// Waits until `node` counts `n` live nodes.
async fn live_nodes(node: &Binary, n: f64, what: &str) {
    eventually(SECONDS_10, FAST_POLL, what, async || {
        (node.metric("chat_cluster_live_nodes").await == n).then_some(())
    })
    .await;
}

/// `watcher`'s view of `user`, asked with `presence`.
async fn status(watcher: &mut Client, user: Uuid) -> String {
    let r = watcher
        .call("presence", json!({"users": [user.to_string()]}))
        .await;
    r["items"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The presence pushes about `user` that `watcher` has kept aside so far.
fn presence_pushes(watcher: &Client, user: Uuid) -> Vec<&Value> {
    watcher
        .pushes
        .iter()
        .filter(|f| f["t"] == "presence" && f["user"] == user.to_string())
        .collect()
}

/// Silent a little past the dead-node window: node 0 counts node 1 out and in again, and the
/// watcher of a user on node 1 hears nothing (no "offline" and "online" again for every watcher
/// of every user there), while `presence` says online throughout.
#[tokio::test]
async fn a_node_silent_for_a_moment_past_the_dead_node_window_does_not_flap_its_users() {
    let db = TestDb::new(Backend::Postgres).await;
    let (nodes, mut cw, _cu, user) = watched_across_two_nodes(&db).await;

    nodes[1].pause();
    live_nodes(&nodes[0], 1.0, "node 0 counts the silent node out").await;
    nodes[1].resume();
    live_nodes(&nodes[0], 2.0, "node 0 counts it in again").await;
    // A heartbeat more, for anything late to arrive.
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(status(&mut cw, user).await, "online");
    let heard = presence_pushes(&cw, user);
    assert!(heard.is_empty(), "the watcher heard {heard:?}");
}

/// Silent for long, the node's users go offline for watchers elsewhere; when it runs again it
/// does not know it was counted out, yet the others learn who is connected there: its users are
/// online again to their watchers and get the pushes of conversations owned elsewhere.
#[tokio::test]
async fn a_node_counted_out_for_long_comes_back_with_its_users_reachable_everywhere() {
    let db = TestDb::new(Backend::Postgres).await;
    let (nodes, mut cw, mut cu, user) = watched_across_two_nodes(&db).await;
    // A conversation node 0 owns, so that its pushes reach the user only if node 0 knows
    // where the user is.
    let conv = loop {
        let conv = group(&mut cw, &[user]).await;
        if owner(&conv, 2) == 0 {
            break conv;
        }
    };

    nodes[1].pause();
    live_nodes(&nodes[0], 1.0, "node 0 counts the silent node out").await;
    let offline = cw.push("presence").await;
    assert_eq!(offline["status"], "offline", "{offline}");
    nodes[1].resume();

    let online = cw.push("presence").await;
    assert_eq!(online["status"], "online", "{online}");
    assert_eq!(status(&mut cw, user).await, "online");
    let body = "after the silence";
    eventually(SECONDS_10, POLL, "node 0 serves the send", async || {
        let r = cw.call("send", json!({"conv": conv, "body": body})).await;
        (r["t"] == "sent").then_some(())
    })
    .await;
    let pushed = loop {
        let m = cu.push("message").await;
        if m["conv"] == conv.as_str() && m["body"] == body {
            break m;
        }
    };
    assert_eq!(pushed["body"], body);
}
