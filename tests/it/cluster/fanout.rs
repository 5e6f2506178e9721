//! One bus publish per remote node with recipients, none for local traffic.

use serde_json::json;
use uuid::Uuid;

use std::time::Duration;

use chat_backend::redis_conn::{RedisConn, Target, Timeouts};

use super::{cluster, cluster_prefixed, group, owner, pushes_published, redis_url};
use crate::helpers::{Backend, POLL, SECONDS_5, TestDb, eventually};

#[tokio::test]
async fn a_push_crosses_once_per_node_and_local_traffic_stays_off_redis() {
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster(&db, 2).await;
    // a on node 0; b and c on node 1.
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let mut cc = nodes[1].client(c).await;
    let conv = group(&mut ca, &[b, c]).await;
    // Each member's `conversation` push (their own view: one bus message each) is in first.
    cb.push("conversation").await;
    cc.push("conversation").await;
    let before: Vec<f64> = [
        pushes_published(&nodes[0]).await,
        pushes_published(&nodes[1]).await,
    ]
    .to_vec();
    for i in 0..20 {
        let r = ca
            .call("send", json!({"conv": conv, "body": format!("m{i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
    }
    for reader in [&mut cb, &mut cc] {
        for i in 0..20 {
            let m = reader.push("message").await;
            assert_eq!(m["body"], format!("m{i}"));
        }
    }
    // Whichever node owns it, each message crossed to the other node once: b and c share one
    // bus message (or a's node got one for a, whose only connection sent it). The owner pushes
    // to its own connections before it publishes: the last publish may trail b's and c's pushes.
    let once = format!("one publish per message (owner node-{})", owner(&conv, 2));
    let published = eventually(SECONDS_5, POLL, &once, async || {
        let after = [
            pushes_published(&nodes[0]).await,
            pushes_published(&nodes[1]).await,
        ];
        let published = (after[0] - before[0]) + (after[1] - before[1]);
        (published >= 20.0).then_some(published)
    })
    .await;
    assert_eq!(published, 20.0, "{once}");

    // Two users on the owner's node only: their messages never touch Redis. New groups until
    // one is owned by node 0 (each is, with even odds).
    let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
    let mut cd = nodes[0].client(d).await;
    let mut ce = nodes[0].client(e).await;
    let mut local = group(&mut cd, &[e]).await;
    while owner(&local, 2) != 0 {
        local = group(&mut cd, &[e]).await;
    }
    let before = pushes_published(&nodes[0]).await;
    for i in 0..10 {
        let r = cd
            .call("send", json!({"conv": local, "body": format!("l{i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        assert_eq!(ce.push("message").await["body"], format!("l{i}"));
    }
    assert_eq!(pushes_published(&nodes[0]).await, before);
}

/// A conversation's pushes reach each connection in the order its owner made them, whatever
/// node the recipient is on: the `conversation` push that introduces a new conversation comes
/// before the `message` push of its first message, every time.
#[tokio::test]
async fn a_new_conversation_is_pushed_before_its_first_message_on_any_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster(&db, 2).await;
    for (tries, across) in [(10, true), (10, false)] {
        for _ in 0..tries {
            let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
            let mut ca = nodes[0].client(a).await;
            let mut cb = nodes[usize::from(across)].client(b).await;
            let conv = ca.direct_with(b).await;
            let r = ca
                .call("send", json!({"conv": conv, "body": "at once"}))
                .await;
            assert_eq!(r["t"], "sent", "{r}");
            let first = cb.next_of(&["conversation", "message"]).await;
            assert_eq!(
                first["t"], "conversation",
                "the message came first (b on another node: {across}): {first}"
            );
            assert_eq!(cb.push("message").await["body"], "at once");
        }
    }
}

/// A JSON (`chat.v1+json`) connection gets the pushes another node relayed as MessagePack, as
/// text frames with the same maps a frame made on its own node has (`t` first).
#[tokio::test]
async fn a_json_client_gets_pushes_from_another_node_as_json_text() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster(&db, 2).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut req = nodes[1].url().into_client_request().unwrap();
    let headers = req.headers_mut();
    let bearer = format!("Bearer {}", nodes[1].token(b));
    headers.insert("authorization", bearer.parse().unwrap());
    headers.insert("sec-websocket-protocol", "chat.v1+json".parse().unwrap());
    let (mut json_b, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // Owned by node 0, so the push reaches node 1 over the bus, as MessagePack.
    let mut conv = group(&mut ca, &[b]).await;
    while owner(&conv, 2) != 0 {
        conv = group(&mut ca, &[b]).await;
    }
    let r = ca
        .call("send", json!({"conv": conv, "body": "über JSON"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    let text = loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), json_b.next());
        match next.await.expect("no push in 10 s") {
            Some(Ok(Message::Text(t))) if t.contains(r#""t":"message""#) => break t,
            Some(Ok(Message::Text(_))) | Some(Ok(Message::Ping(_))) => continue,
            other => panic!("not a text frame: {other:?}"),
        }
    };
    assert!(text.starts_with(r#"{"t":"message""#), "{text}");
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (m["conv"].as_str(), m["body"].as_str()),
        (Some(conv.as_str()), Some("über JSON"))
    );
}

/// Bus messages carry their format: one written in a newer format than a node reads (a newer
/// build, mid rolling upgrade) is refused, counted and logged, never misread; the node goes on.
#[tokio::test]
async fn a_bus_message_of_a_newer_format_is_refused_not_misread() {
    let db = TestDb::new(Backend::Postgres).await;
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let nodes = cluster_prefixed(&db.url, 2, &redis_url(), &[], &prefix).await;
    let target = Target::parse(&redis_url()).unwrap();
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response: Duration::from_secs(2),
    };
    let mut redis = RedisConn::connect(&target, timeouts, None).await.unwrap();
    // Version 2 in front of what would read, bare, as a hello from a node that does not exist.
    let mut newer = vec![2u8];
    newer.extend_from_slice(
        &rmp_serde::to_vec_named(&json!({"Hello": {"node": "ghost", "incarnation": 1}})).unwrap(),
    );
    let channel = format!("{prefix}:node:node-0");
    let _: i64 = redis
        .publish(&channel, &newer)
        .query_async(&mut redis)
        .await
        .unwrap();
    // Counted, and said in the log (written by a task of its own: it may trail the count).
    let refused = "the newer message is counted as refused and logged";
    eventually(SECONDS_5, POLL, refused, async || {
        let n = nodes[0]
            .metric("chat_bus_unreadable_total{why=\"version\"}")
            .await;
        (n == 1.0 && nodes[0].log().contains("bus format version 2")).then_some(())
    })
    .await;
    // Not read as a hello: the live set is the two real nodes, and they still chat.
    assert_eq!(nodes[0].metric("chat_cluster_live_nodes").await, 2.0);
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let conv = ca.direct_with(b).await;
    ca.sends_to(&mut cb, &conv, "still").await;
}
