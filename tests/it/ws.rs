//! The rules over a real WebSocket against an in-process node, on both backends.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, Client, TestNode};

fn high_rate(c: &mut chat_backend::config::Config) {
    c.rate_messages = 100_000;
    c.rate_burst = 100_000;
}

async fn direct(c: &mut Client, other: Uuid) -> String {
    let r = c
        .call(
            "create",
            json!({"kind": "direct", "members": [other.to_string()]}),
        )
        .await;
    r["conversation"]["id"].as_str().unwrap().to_owned()
}

async fn concurrent_senders_keep_seq_dense_and_ordered(backend: Backend) {
    let node = TestNode::spawn(backend, high_rate).await;
    let users: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    let mut admin = node.client(users[0]).await;
    let g = admin
        .call("create", json!({"kind": "group", "members": users[1..].iter().map(|u| u.to_string()).collect::<Vec<_>>()}))
        .await;
    let conv = g["conversation"]["id"].as_str().unwrap().to_owned();
    let mut reader = node.client(users[1]).await;
    let mut tasks = Vec::new();
    for u in &users {
        let mut c = node.client(*u).await;
        let conv = conv.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..30 {
                let r = c
                    .call("send", json!({"conv": conv, "body": format!("{i}")}))
                    .await;
                assert_eq!(r["t"], "sent", "{r}");
                seqs.push(r["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=120).collect::<Vec<i64>>());
    let mut seen = Vec::new();
    while seen.len() < 120 {
        let m = reader.push("message").await;
        seen.push(m["seq"].as_i64().unwrap());
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "pushes out of order: {seen:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn concurrent_senders_keep_seq_dense_and_ordered_on_sqlite() {
    concurrent_senders_keep_seq_dense_and_ordered(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_senders_keep_seq_dense_and_ordered_on_postgres() {
    concurrent_senders_keep_seq_dense_and_ordered(Backend::Postgres).await;
}

#[tokio::test]
async fn a_removed_member_gets_nothing_more_and_cannot_read() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let (admin, member) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(admin).await;
    let mut cm = node.client(member).await;
    let g = ca
        .call(
            "create",
            json!({"kind": "group", "members": [member.to_string()]}),
        )
        .await;
    let conv = g["conversation"]["id"].as_str().unwrap().to_owned();
    ca.call(
        "remove_member",
        json!({"conv": conv, "user": member.to_string()}),
    )
    .await;
    assert_eq!(
        cm.push("removed").await["conv"],
        Value::String(conv.clone())
    );
    ca.call("send", json!({"conv": conv, "body": "after"}))
        .await;
    let r = cm.call("history", json!({"conv": conv})).await;
    assert_eq!(r["code"], "forbidden");
    let r = cm.call("ping", json!({})).await;
    assert_eq!(r["t"], "pong");
    assert!(
        cm.pushes.iter().all(|p| p["t"] != "message"),
        "{:?}",
        cm.pushes
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_token_that_expires_gets_bye_and_4001_unless_renewed() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let user = Uuid::new_v4();
    let short = chat_backend::auth::sign(
        &node.config,
        chat_actors::ids::UserId(user),
        Duration::from_secs(2),
    )
    .unwrap();
    let url = format!("ws://{}/v1/ws", node.addr);
    let mut renewed = Client::connect(&url, &short).await;
    let mut expiring = Client::connect(&url, &short).await;
    let r = renewed
        .call("auth", json!({"token": node.token(user)}))
        .await;
    assert_eq!(r["t"], "ok");
    let bye = expiring.push("bye").await;
    assert_eq!(bye["reason"], "token_expired");
    assert!(expiring.next_frame().await.is_none());
    assert_eq!(expiring.close_code, Some(4001));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(renewed.call("ping", json!({})).await["t"], "pong");
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_go_on() {
    let node = TestNode::spawn(Backend::Sqlite, |c| {
        high_rate(c);
        c.outbound_queue = 8;
    })
    .await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(a).await;
    let mut stalled = node.client(b).await;
    let mut reading = node.client(b).await;
    let conv = direct(&mut ca, b).await;
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < 3000 {
            reading.push("message").await;
            count += 1;
        }
        reading
    });
    let body = "x".repeat(4000);
    // Enough to fill the stalled client's socket buffers and then its queue.
    for _ in 0..3000 {
        let r = ca.call("send", json!({"conv": conv, "body": body})).await;
        assert_eq!(r["t"], "sent", "{r} (close code {:?})", ca.close_code);
    }
    let mut reading = reader.await.unwrap();
    let mut got_bye = false;
    while let Some(f) = stalled.next_frame().await {
        if f["t"] == "bye" {
            assert_eq!(f["reason"], "slow_consumer");
            got_bye = true;
        }
    }
    assert!(got_bye, "the stalled client was never dropped");
    assert_eq!(stalled.close_code, Some(1008));
    let r = reading.call("ping", json!({})).await;
    assert_eq!(r["t"], "pong");
    node.shutdown().await;
}
