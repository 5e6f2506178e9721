//! Replies that must be true under faults: a database outage, a node stopping with requests in
//! flight.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::{Backend, Binary, Client, TestNode, outage};

/// Times one request.
async fn timed(c: &mut Client, t: &str, fields: Value) -> (Value, Duration) {
    let started = Instant::now();
    let r = c.call(t, fields).await;
    (r, started.elapsed())
}

#[tokio::test]
async fn read_and_mute_move_only_after_their_commit_and_the_node_fails_fast_while_down() {
    let node = TestNode::spawn(Backend::Postgres, |_| {}).await;
    let db_name = node
        .config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(a).await;
    let mut cb = node.client(b).await;
    let conv = cb.direct_with(a).await;
    for i in 0..3 {
        let r = cb
            .call("send", json!({"conv": conv, "body": format!("{i}")}))
            .await;
        assert_eq!(r["t"], "sent");
    }

    outage(&db_name, true).await;
    let (first, first_took) = timed(&mut ca, "read", json!({"conv": conv, "seq": 3})).await;
    assert_eq!(first["code"], "unavailable", "{first}");
    let (muted, _) = timed(&mut ca, "mute", json!({"conv": conv, "on": true})).await;
    assert_eq!(muted["code"], "unavailable", "{muted}");
    let (again, again_took) = timed(&mut ca, "read", json!({"conv": conv, "seq": 3})).await;
    assert_eq!(again["code"], "unavailable", "{again}");
    let (send, send_took) = timed(&mut cb, "send", json!({"conv": conv, "body": "x"})).await;
    assert_eq!(send["code"], "unavailable", "{send}");
    println!(
        "database down: first request answered in {first_took:?}, then {again_took:?} (read) \
         and {send_took:?} (send)"
    );

    outage(&db_name, false).await;
    // Back within PROTOCOL's 10 s, without a restart.
    let mut back = false;
    for _ in 0..100 {
        if ca.call("get", json!({"conv": conv})).await["t"] == "conversation" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the node did not recover within 10 s");
    // Nothing moved while the database was away, so the same read now commits and is told.
    let got = ca.call("get", json!({"conv": conv})).await;
    let me = |g: &Value| {
        g["conversation"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["user"] == a.to_string())
            .cloned()
            .unwrap()
    };
    assert_eq!(me(&got)["last_read"], 0, "{got}");
    assert_eq!(me(&got)["muted"], false, "{got}");
    let r = ca.call("read", json!({"conv": conv, "seq": 3})).await;
    assert_eq!(r["t"], "ok", "{r}");
    let receipt = cb.push("receipt").await;
    assert_eq!(receipt["seq"], 3);
    let r = ca.call("mute", json!({"conv": conv, "on": true})).await;
    assert_eq!(r["t"], "ok", "{r}");
    let got = ca.call("get", json!({"conv": conv})).await;
    assert_eq!(me(&got)["last_read"], 3);
    assert_eq!(me(&got)["muted"], true);
    let pool = sqlx::PgPool::connect(&node.config.database_url)
        .await
        .unwrap();
    let row =
        sqlx::query("SELECT last_read, muted FROM members WHERE conv_id = $1 AND user_id = $2")
            .bind(Uuid::parse_str(&conv).unwrap())
            .bind(a)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(row.get::<i64, _>(0), 3);
    assert!(row.get::<bool, _>(1));
    pool.close().await;
    node.shutdown().await;
}

/// One connection that sends as fast as the node reads, until it is closed; the task answers how
/// many `sent` replies came back.
async fn pipelined_sends(url: &str, token: &str, conv: &str) -> tokio::task::JoinHandle<i64> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let conv = conv.to_owned();
    let writer = tokio::spawn(async move {
        for id in 1u64.. {
            let frame = json!({"t": "send", "id": id, "conv": conv, "body": "m"});
            let bytes = rmp_serde::to_vec_named(&frame).unwrap();
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut sent = 0;
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Binary(b) = msg {
                let f: Value = rmp_serde::from_slice(&b).unwrap();
                if f["t"] == "sent" {
                    sent += 1;
                }
            }
        }
        writer.abort();
        sent
    })
}

#[tokio::test]
async fn a_stopping_node_answers_every_send_it_commits() {
    let mut b = Binary::start(
        Backend::Postgres,
        &[
            ("CHAT_RATE_MESSAGES", "100000"),
            ("CHAT_RATE_BURST", "100000"),
        ],
    )
    .await;
    let (u, v) = (Uuid::new_v4(), Uuid::new_v4());
    let mut c = b.client(u).await;
    let conv = c.direct_with(v).await;
    // Four connections sending without pause, and the node told to stop in the middle of it.
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(pipelined_sends(&b.url(), &b.token(u), &conv).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.terminate();
    let mut answered = 0;
    for s in senders {
        answered += s.await.unwrap();
    }
    let db_url = b.db_url.clone();
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let code = b.wait().await;
    assert_eq!(code, Some(0));
    let stored: i64 = sqlx::query("SELECT count(*) FROM messages WHERE conv_id = $1")
        .bind(Uuid::parse_str(&conv).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    pool.close().await;
    println!("stopping under a stream of sends: {stored} committed, {answered} answered `sent`");
    assert_eq!(answered, stored, "committed sends left unanswered");
}

/// Another process holds the SQLite file's write lock for longer than a request may wait: sends
/// are answered `unavailable` within PROTOCOL's 5 s (never hang), reads go on (WAL), and once
/// the lock is gone sends commit again; nothing acknowledged is lost and `seq` stays dense.
#[tokio::test]
async fn a_sqlite_file_locked_by_another_process_fails_sends_fast_and_recovers() {
    use sqlx::Connection;

    let b = Binary::start(Backend::Sqlite, &[]).await;
    let (a, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = b.client(a).await;
    let conv = ca.direct_with(other).await;
    let mut acked = Vec::new();
    let r = ca
        .call("send", json!({"conv": conv, "body": "before"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    acked.push(r["mid"].as_str().unwrap().to_owned());

    // Another process (a connection of its own, as the sqlite3 shell would be) takes the lock.
    let mut locker = sqlx::SqliteConnection::connect(&b.db_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let (r, took) = timed(&mut ca, "send", json!({"conv": conv, "body": "locked"})).await;
    assert!(took < Duration::from_millis(5500), "waited {took:?}: {r}");
    match r["t"].as_str() {
        Some("sent") => panic!("committed through another process's exclusive lock: {r}"),
        _ => assert_eq!(r["code"], "unavailable", "{r}"),
    }
    let (h, took) = timed(&mut ca, "history", json!({"conv": conv})).await;
    assert_eq!(
        h["t"], "history",
        "reads stop while a writer holds the lock: {h}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    let back = Instant::now();
    loop {
        let r = ca
            .call("send", json!({"conv": conv, "body": "after"}))
            .await;
        if r["t"] == "sent" {
            acked.push(r["mid"].as_str().unwrap().to_owned());
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(10), "{r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = ca.call("history", json!({"conv": conv})).await;
    let messages = h["messages"].as_array().unwrap();
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    for mid in &acked {
        assert!(
            messages.iter().any(|m| m["mid"] == mid.as_str()),
            "lost {mid}"
        );
    }
}
