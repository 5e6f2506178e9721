//! The rules over a real WebSocket against an in-process node, on both backends.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Backend, Client, POLL, SECONDS_5, TestNode, eventually};

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
    // The admin's message is stored (so a push to the removed member would have gone out by
    // now), and the removed member may neither read nor send.
    let r = ca
        .call("send", json!({"conv": conv, "body": "after"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    let r = cm.call("history", json!({"conv": conv})).await;
    assert_eq!(r["code"], "forbidden");
    let r = cm
        .call("send", json!({"conv": conv, "body": "let me back"}))
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
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
async fn typing_with_an_id_is_answered_like_any_request() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let (a, b, outsider) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(a).await;
    let conv = direct(&mut ca, b).await;
    let mut co = node.client(outsider).await;
    let r = co.call("typing", json!({"conv": conv, "on": true})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = co
        .call(
            "typing",
            json!({"conv": Uuid::new_v4().to_string(), "on": true}),
        )
        .await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = ca.call("typing", json!({"conv": conv, "on": true})).await;
    assert_eq!(r["t"], "ok", "{r}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_token_valid_until_the_end_of_time_is_served_and_its_session_ends_cleanly() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let user = Uuid::new_v4();
    let claims = json!({"sub": user.to_string(), "exp": u64::MAX});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(crate::helpers::SECRET.as_bytes()),
    )
    .unwrap();
    let url = format!("ws://{}/v1/ws", node.addr);
    let mut forever = Client::connect(&url, &token).await;
    assert_eq!(forever.call("ping", json!({})).await["t"], "pong");
    let mut watcher = node.client(Uuid::new_v4()).await;
    let online = watcher
        .call("presence", json!({"users": [user.to_string()]}))
        .await;
    assert_eq!(online["items"][0]["status"], "online");
    drop(forever);
    // Its user goes offline once the connection is gone.
    eventually(SECONDS_5, POLL, "the user goes offline", async || {
        let p = watcher
            .call("presence", json!({"users": [user.to_string()]}))
            .await;
        (p["items"][0]["status"] == "offline").then_some(())
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_node_at_its_connection_cap_answers_503_before_upgrading() {
    let node = TestNode::spawn(Backend::Sqlite, |c| c.max_connections = 2).await;
    let first = node.client(Uuid::new_v4()).await;
    let _second = node.client(Uuid::new_v4()).await;
    let url = format!("ws://{}/v1/ws", node.addr);
    let mut req = url.as_str().into_client_request().unwrap();
    let bearer = format!("Bearer {}", node.token(Uuid::new_v4()));
    req.headers_mut()
        .insert("authorization", bearer.parse().unwrap());
    match tokio_tungstenite::connect_async(req.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503)
        }
        other => panic!(
            "a third connection was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // A slot freed is a slot taken.
    drop(first);
    eventually(
        SECONDS_5,
        POLL,
        "the freed slot is given again",
        async || {
            let connected = tokio_tungstenite::connect_async(req.clone()).await;
            connected.ok().map(drop)
        },
    )
    .await;
    node.shutdown().await;
}

/// Writes raw bytes on an open connection and returns the close code the server answers with.
async fn close_code_after(node: &TestNode, raw: &[u8]) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let mut c = node.client(Uuid::new_v4()).await;
    c.raw().write_all(raw).await.unwrap();
    while c.next_frame().await.is_some() {}
    c.close_code
}

#[tokio::test]
async fn websocket_protocol_violations_are_closed_with_their_code() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    // An unmasked frame from a client: 1002.
    assert_eq!(
        close_code_after(&node, &[0x82, 0x01, 0x00]).await,
        Some(1002)
    );
    // Reserved bits set: 1002.
    assert_eq!(
        close_code_after(&node, &[0xc2, 0x81, 1, 2, 3, 4, 0x00]).await,
        Some(1002)
    );
    // An unknown opcode: 1002.
    assert_eq!(
        close_code_after(&node, &[0x83, 0x81, 1, 2, 3, 4, 0x00]).await,
        Some(1002)
    );
    // A text frame that is not UTF-8 (masked with zeros): 1007.
    assert_eq!(
        close_code_after(&node, &[0x81, 0x82, 0, 0, 0, 0, 0xff, 0xfe]).await,
        Some(1007)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_bad_field_of_any_type_keeps_the_request_id_over_the_wire() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let mut c = node.client(Uuid::new_v4()).await;
    // {"t": "send", "conv": <bin 3>, "id": 77}
    let frame = vec![
        0x83, 0xa1, b't', 0xa4, b's', b'e', b'n', b'd', 0xa4, b'c', b'o', b'n', b'v', 0xc4, 3, 1,
        2, 3, 0xa2, b'i', b'd', 77,
    ];
    c.send_raw(frame).await;
    let f = c.next_frame().await.unwrap();
    assert_eq!(
        (f["t"].as_str(), f["id"].as_u64()),
        (Some("error"), Some(77)),
        "{f}"
    );
    assert_eq!(f["code"], "bad_request");
    node.shutdown().await;
}

#[tokio::test]
async fn page_limits_beyond_64_bits_are_clamped_and_cursors_take_the_whole_unsigned_range() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let mut c = node.client(Uuid::new_v4()).await;
    let conv = direct(&mut c, Uuid::new_v4()).await;
    c.call("send", json!({"conv": conv, "body": "hi"})).await;
    let r = c
        .call(
            "history",
            json!({"conv": conv, "limit": u64::MAX, "before": u64::MAX}),
        )
        .await;
    assert_eq!(r["t"], "history", "{r}");
    assert_eq!(r["messages"].as_array().unwrap().len(), 1);
    let r = c
        .call(
            "conversations",
            json!({"limit": u64::MAX, "before": u64::MAX}),
        )
        .await;
    assert_eq!(r["items"].as_array().unwrap().len(), 1, "{r}");
    node.shutdown().await;
}

/// A receiver ends a typing display when the sender's message arrives; the sender typing again
/// right after is news, passed on at once (not held back as a repeat of the earlier `on`).
#[tokio::test]
async fn typing_again_after_a_message_reaches_the_receiver_at_once() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(a).await;
    let mut cb = node.client(b).await;
    let conv = direct(&mut ca, b).await;
    cb.push("conversation").await;
    ca.send_frame(json!({"t": "typing", "conv": conv, "on": true}))
        .await;
    assert_eq!(cb.push("typing").await["on"], true);
    let r = ca.call("send", json!({"conv": conv, "body": "hi"})).await;
    assert_eq!(r["t"], "sent", "{r}");
    assert_eq!(cb.push("message").await["body"], "hi");
    ca.send_frame(json!({"t": "typing", "conv": conv, "on": true}))
        .await;
    let again = cb.push("typing").await;
    assert_eq!(again["on"], true, "{again}");
    node.shutdown().await;
}
