//! Replies that must be true under faults: a database outage, a node stopping with requests in
//! flight.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::helpers::{
    Backend, Binary, Client, POLL, SECONDS_10, TestNode, admin, assert_kept, eventually, outage,
    signal,
};

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
    // Fast: every answer well inside PROTOCOL's 5 s (the pool's own wait is 3 s), and once the
    // node knows the database is away, a later request does not wait that out again.
    let bound = Duration::from_millis(4_500);
    for took in [first_took, again_took, send_took] {
        assert!(
            took < bound,
            "a request waited {took:?} with the database down"
        );
    }
    assert!(
        again_took < Duration::from_secs(1),
        "the second read waited {again_took:?}: the node did not learn the database is away"
    );

    outage(&db_name, false).await;
    // Back within PROTOCOL's 10 s, without a restart.
    eventually(SECONDS_10, POLL, "the node recovers", async || {
        let got = ca.call("get", json!({"conv": conv})).await;
        (got["t"] == "conversation").then_some(())
    })
    .await;
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
    // 0 == 0 would pass too: the stop must have struck a stream that was flowing.
    assert!(answered > 0, "no send was answered before the stop");
    assert_eq!(
        answered,
        stored,
        "committed sends left unanswered; the node's log:\n{}",
        b.log()
    );
}

/// A send that must be refused `unavailable` within PROTOCOL's 5 s (never hang, never `sent`),
/// carrying `mid` so it can be retried after recovery.
async fn assert_send_refused(c: &mut Client, conv: &str, mid: &str, why: &str) {
    let (r, took) = timed(
        c,
        "send",
        json!({"conv": conv, "mid": mid, "body": format!("during {why}")}),
    )
    .await;
    assert!(
        took < Duration::from_millis(5500),
        "{why}: waited {took:?}: {r}"
    );
    match r["t"].as_str() {
        Some("sent") => panic!("committed during {why}: {r}"),
        _ => assert_eq!(r["code"], "unavailable", "{why}: {r}"),
    }
}

/// Sends until one is `sent` (at most 10 s); its mid.
async fn send_until_sent(c: &mut Client, conv: &str, body: &str) -> String {
    eventually(SECONDS_10, POLL, "a send is sent again", async || {
        let r = c.call("send", json!({"conv": conv, "body": body})).await;
        (r["t"] == "sent").then(|| r["mid"].as_str().unwrap().to_owned())
    })
    .await
}

/// Resends each refused mid once the store is back: each is stored exactly once.
async fn retry_refused(c: &mut Client, conv: &str, refused: &[String], acked: &mut Vec<String>) {
    for mid in refused {
        let r = c
            .call("send", json!({"conv": conv, "mid": mid, "body": "retried"}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        acked.push(mid.clone());
    }
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
    let mut acked = vec![send_until_sent(&mut ca, &conv, "before").await];

    // Another process (a connection of its own, as the sqlite3 shell would be) takes the lock.
    let mut locker = sqlx::SqliteConnection::connect(&b.db_url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let refused = vec![Uuid::new_v4().to_string()];
    assert_send_refused(&mut ca, &conv, &refused[0], "another process's lock").await;
    let (h, took) = timed(&mut ca, "history", json!({"conv": conv})).await;
    assert_eq!(
        h["t"], "history",
        "reads stop while a writer holds the lock: {h}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    acked.push(send_until_sent(&mut ca, &conv, "after").await);
    retry_refused(&mut ca, &conv, &refused, &mut acked).await;
    assert_kept(&mut ca, &conv, &acked).await;
}

/// The disk fills under SQLite: every write that would grow a file fails (here a file-size
/// limit set on the running node, so the test needs no privileges: the write fails with EFBIG
/// where a full disk gives ENOSPC, and SQLite fails the commit the same way). Sends are answered
/// `unavailable` at once, reads go on, and once there is room again sends commit without a
/// restart; nothing acknowledged is lost, the refused mids store once when retried, `seq` stays
/// dense and the file passes SQLite's integrity check.
#[tokio::test]
async fn a_full_disk_under_sqlite_fails_sends_clearly_and_recovers_without_corruption() {
    use sqlx::Connection;

    // SIGXFSZ ignored, so an over-limit write fails instead of killing the process.
    let b = Binary::start_with(Backend::Sqlite, &[], Some("trap '' XFSZ")).await;
    let (a, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = b.client(a).await;
    let conv = ca.direct_with(other).await;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(send_until_sent(&mut ca, &conv, &format!("before {i}")).await);
    }

    let pid = b.child.id().to_string();
    // The soft limit only: any process may raise it again up to the hard one.
    let prlimit = |soft: &str| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={soft}:")])
            .status()
            .expect("prlimit (util-linux) runs");
        assert!(status.success(), "prlimit --fsize={soft}:");
    };
    // No write may end past 4 KiB in any file: the WAL's next frame cannot be written.
    prlimit("4096");
    let mut refused = Vec::new();
    for _ in 0..3 {
        let mid = Uuid::new_v4().to_string();
        assert_send_refused(&mut ca, &conv, &mid, "a full disk").await;
        refused.push(mid);
    }
    let (h, took) = timed(&mut ca, "history", json!({"conv": conv})).await;
    // The node's log on failure: this has failed now and then in full runs only.
    assert_eq!(
        h["t"],
        "history",
        "reads stop on a full disk: {h}\nthe node's log:\n{}",
        b.log()
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    prlimit("unlimited");
    acked.push(send_until_sent(&mut ca, &conv, "after").await);
    retry_refused(&mut ca, &conv, &refused, &mut acked).await;
    assert_kept(&mut ca, &conv, &acked).await;

    let mut check = sqlx::SqliteConnection::connect(&b.db_url).await.unwrap();
    let verdict: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut check)
        .await
        .unwrap()
        .get(0);
    assert_eq!(verdict, "ok");
}

/// PostgreSQL turns read-only under the node (a failover to a standby, an operator's
/// `default_transaction_read_only`): sends are refused `unavailable` at once and nothing is
/// half-written, reads go on, and when the database takes writes again (its connections cut,
/// as a failover back cuts them) sends commit without a restart; nothing acknowledged is lost.
#[tokio::test]
async fn a_read_only_postgres_fails_sends_clearly_serves_reads_and_recovers() {
    let b = Binary::start(Backend::Postgres, &[]).await;
    let db = b.db_url.rsplit('/').next().unwrap().to_owned();
    let (a, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = b.client(a).await;
    let conv = ca.direct_with(other).await;
    let mut acked = vec![send_until_sent(&mut ca, &conv, "before").await];

    let cut =
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
    admin(format!(
        "ALTER DATABASE {db} SET default_transaction_read_only = on"
    ))
    .await;
    admin(cut.clone()).await;
    let mut refused = Vec::new();
    for _ in 0..3 {
        let mid = Uuid::new_v4().to_string();
        assert_send_refused(&mut ca, &conv, &mid, "a read-only database").await;
        refused.push(mid);
    }
    let since = Instant::now();
    loop {
        let (h, took) = timed(&mut ca, "history", json!({"conv": conv})).await;
        assert!(took < Duration::from_secs(5), "{took:?}");
        if h["t"] == "history" {
            break;
        }
        // The breaker may hold reads back for a moment after the failed writes.
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "reads stay down: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    admin(format!(
        "ALTER DATABASE {db} RESET default_transaction_read_only"
    ))
    .await;
    admin(cut).await;
    acked.push(send_until_sent(&mut ca, &conv, "after").await);
    retry_refused(&mut ca, &conv, &refused, &mut acked).await;
    assert_kept(&mut ca, &conv, &acked).await;
}

/// Every connection of the node's pool held by calls the database is still serving (they wait
/// on a lock another session holds) is a busy database, not a down one: the calls that find no
/// connection are answered `unavailable`, but the breaker stays closed (a connection of the
/// node's own finds the database answering), and once the lock goes the same request is served
/// at once.
#[tokio::test]
async fn a_pool_full_of_calls_on_a_live_database_does_not_open_the_breaker() {
    use sqlx::Connection;
    const CONVERSATIONS: usize = 16;
    // Two connections for requests (the other two commit the writer's batches).
    let b = Binary::start(Backend::Postgres, &[("CHAT_DB_MAX_CONNECTIONS", "4")]).await;
    let mut members = Vec::new();
    for _ in 0..CONVERSATIONS {
        let mut c = b.client(Uuid::new_v4()).await;
        let conv = c.direct_with(Uuid::new_v4()).await;
        // A send keeps the conversation's actor live, so a mute goes straight to its write.
        let r = c.call("send", json!({"conv": conv, "body": "hi"})).await;
        assert_eq!(r["t"], "sent", "{r}");
        members.push((c, conv));
    }

    let mut locker = sqlx::PgConnection::connect(&b.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE members IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    // Two waves of mutes, each more than the pool holds: the first wave's waiters give up
    // after the pool's 3 s, the second's while the first's holders still wait on the lock.
    let mut mutes = tokio::task::JoinSet::new();
    let mut waves = members.into_iter();
    for wave in 0..2 {
        for (mut c, conv) in waves.by_ref().take(CONVERSATIONS / 2) {
            mutes.spawn(async move {
                let r = c.call("mute", json!({"conv": conv, "on": true})).await;
                (c, conv, r)
            });
        }
        if wave == 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    let mut seen_down = false;
    let spell = Instant::now();
    while spell.elapsed() < Duration::from_secs(6) {
        seen_down |= b.metric("chat_database_up").await == 0.0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    locker.close().await.unwrap();

    let mut refused = 0;
    let mut answered = Vec::new();
    while let Some(done) = mutes.join_next().await {
        let (c, conv, r) = done.unwrap();
        if r["t"] != "ok" {
            assert_eq!(r["code"], "unavailable", "{r}");
            refused += 1;
        }
        answered.push((c, conv));
    }
    assert!(
        !seen_down && !b.log().contains("database unreachable"),
        "a full pool opened the breaker: {}",
        b.log()
    );
    // The scenario filled the pool (else this test proves nothing).
    assert!(
        b.metric("chat_database_pool_full_total").await >= 1.0,
        "no call waited out the pool ({refused} refused): {}",
        b.log()
    );
    // The lock is gone: the same request is served at once, no probe to wait for.
    for (c, conv) in answered.iter_mut() {
        let r = c.call("mute", json!({"conv": conv, "on": true})).await;
        assert_eq!(r["t"], "ok", "{r}");
    }
}

/// A node that runs late for lasting (here: stopped for 300 ms of every 310, as a machine past
/// its cores would leave it waiting) refuses a share of new requests `unavailable` at the door,
/// before doing any work for them, and serves everything again once it keeps up; a send it
/// refused and the client sends again is stored once.
#[tokio::test]
async fn a_node_that_runs_late_refuses_a_share_of_new_requests_and_serves_again_when_it_keeps_up() {
    let b = Binary::start(Backend::Sqlite, &[]).await;
    let mut c = b.client(Uuid::new_v4()).await;
    let conv = c.direct_with(Uuid::new_v4()).await;
    let mut acked = vec![send_until_sent(&mut c, &conv, "before").await];

    let pid = b.child.id();
    let stalls = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            signal(pid, "-STOP");
            std::thread::sleep(Duration::from_millis(300));
            signal(pid, "-CONT");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    // Each round one send and a burst of cheap requests, pipelined: enough new requests that a
    // share refused cannot miss them all.
    let mut overloaded = Vec::new();
    let mut refused_requests = 0;
    let mut id = 1_000_000;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        // within the user's own request budget (50 a second, 200 at once)
        let round = tokio::time::sleep(Duration::from_millis(300));
        let (send_id, mid) = (id, Uuid::new_v4().to_string());
        c.send_frame(json!({"t": "send", "id": id, "conv": conv, "mid": mid, "body": "late"}))
            .await;
        for _ in 0..15 {
            id += 1;
            c.send_frame(json!({"t": "presence", "id": id, "users": [Uuid::new_v4()]}))
                .await;
        }
        id += 1;
        let mut waiting = 16;
        while waiting > 0 {
            let f = c.next_frame().await.expect("the connection stays open");
            let Some(answered) = f["id"].as_u64().filter(|i| *i >= send_id) else {
                continue; // a push
            };
            waiting -= 1;
            if f["t"] == "error" {
                assert_eq!(f["code"], "unavailable", "{f}");
                if answered == send_id {
                    overloaded.push(mid.clone());
                } else {
                    refused_requests += 1;
                }
            } else if answered == send_id {
                assert_eq!(f["t"], "sent", "{f}");
                acked.push(mid.clone());
            }
        }
        round.await;
    }
    stalls.join().unwrap();
    println!(
        "refused while late: {} sends, {refused_requests} other requests",
        overloaded.len()
    );
    assert!(
        overloaded.len() + refused_requests > 0,
        "a node stopped 300 ms of every 310 refused nothing: {}",
        b.log()
    );
    assert!(b.metric("chat_overload_refused_total").await >= 1.0);

    // Keeping up again (its smoothed lag back under the 100 ms), it serves every request.
    let keeps_up = async || (b.metric("chat_runtime_lag_seconds").await < 0.1).then_some(());
    eventually(SECONDS_10, POLL, "the node keeps up again", keeps_up).await;
    for i in 0..20 {
        let r = c
            .call("send", json!({"conv": conv, "body": format!("again {i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        acked.push(r["mid"].as_str().unwrap().to_owned());
    }
    retry_refused(&mut c, &conv, &overloaded, &mut acked).await;
    assert_kept(&mut c, &conv, &acked).await;
}
