//! PostgreSQL's weekly message partitions: made ahead, dropped whole at expiry without holding
//! sends up, order fenced across weeks, and an existing database partitioned in place.

use std::time::{Duration, Instant};

use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, UserId};
use chat_actors::ports::{HistoryRange, ListQuery, NewMessage, Purged, Store, StoreError};
use chat_backend::store::postgres::partitions::{self, MESSAGES, MIDS, Span};
use chat_backend::store::{self, SqlStore};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Backend, TestDb, TestNode, assert_kept};
use crate::store::{append_one, direct_conv, msg};

const DAY_MS: i64 = 86_400_000;

/// A message of `sender` with a client mid, sent at `at`.
fn at(seq: i64, sender: UserId, at: i64) -> NewMessage {
    NewMessage {
        at,
        ..msg(seq, sender, true)
    }
}

/// The partition each of `conv`'s messages is in, by seq.
async fn homes(pool: &PgPool, conv: ConversationId) -> Vec<(i64, String)> {
    sqlx::query_as(
        "SELECT seq, tableoid::regclass::text FROM messages WHERE conv_id = $1 ORDER BY seq",
    )
    .bind(conv.0)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn create(pool: &PgPool, span: Span) {
    let mut conn = pool.acquire().await.unwrap();
    partitions::create(&mut conn, span).await.unwrap();
}

#[tokio::test]
async fn the_coming_weeks_are_ready_and_an_expired_week_goes_whole() {
    let db = TestDb::new(Backend::Postgres).await;
    // Two nodes starting together: each week is made once, and neither fails.
    let (one, two) = tokio::join!(store::connect(&db.url, 4), store::connect(&db.url, 4));
    let (s, _two) = (one.unwrap(), two.unwrap());
    let pool = PgPool::connect(&db.url).await.unwrap();
    let now = now_ms();
    let this = MESSAGES.containing(now);
    for week in [this, this.next(), this.next().next()] {
        assert!(
            exists(&pool, &week.table()).await,
            "{} missing",
            week.table()
        );
    }

    // Old history, as an import would bring it: one message from before any week (the default
    // partition keeps it), one in a week long past, two now; and a past week that a stopped run
    // left detached.
    let old = MESSAGES.containing(now - 120 * DAY_MS);
    create(&pool, old).await;
    create(&pool, old.next()).await;
    // ... and a span of the mid registry long past (its mids' messages all gone).
    let old_mids = MIDS.containing(now - 200 * DAY_MS);
    create(&pool, old_mids).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE messages DETACH PARTITION {}",
        old.next().table()
    )))
    .execute(&pool)
    .await
    .unwrap();
    let sender = UserId::random();
    let conv = direct_conv(&s, sender).await;
    let ats = [1000, old.start() + 5, now, now + 1];
    for (i, when) in ats.into_iter().enumerate() {
        append_one(&s, conv.id, at(i as i64 + 1, sender, when))
            .await
            .unwrap();
    }
    assert_eq!(
        homes(&pool, conv.id).await,
        [
            (1, "messages_default".to_owned()),
            (2, old.table()),
            (3, this.table()),
            (4, this.table())
        ]
    );

    let done = s.purge(now - 90 * DAY_MS, now - 7 * DAY_MS).await.unwrap();
    assert_eq!(
        done,
        Purged {
            erased: 0,
            removed: 1,
            partitions: 3
        }
    );
    assert!(!exists(&pool, &old.table()).await);
    assert!(!exists(&pool, &old_mids.table()).await);
    assert!(exists(&pool, &MIDS.containing(now).table()).await);
    assert!(!exists(&pool, &old.next().table()).await);
    assert_eq!(
        homes(&pool, conv.id).await,
        [(3, this.table()), (4, this.table())]
    );
    // The conversation is whole: numbering, newest message, history, and the next send.
    let (page, more) = s
        .history(conv.id, HistoryRange::After(0, None), 50)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [3, 4]);
    assert!(!more);
    let (list, _) = s
        .list_conversations(
            sender,
            ListQuery {
                before: None,
                since: None,
                limit: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(list[0].record.last_seq, 4);
    assert_eq!(list[0].last_message.as_ref().map(|m| m.seq), Some(4));
    let (last, _) = s.last_message_and_unread(conv.id, sender, 0).await.unwrap();
    assert_eq!(last.map(|m| m.body), Some(Some("m4".to_owned())));
    append_one(&s, conv.id, at(5, sender, now + 2))
        .await
        .unwrap();
    assert_eq!(
        s.purge(now - 90 * DAY_MS, now - 7 * DAY_MS).await.unwrap(),
        Purged::default()
    );
    pool.close().await;
}

/// Two owners of one conversation for a moment, each numbering the same seq, writing into two
/// different weeks (where no unique index can see both rows): one stores it, the other is
/// told SeqTaken, every time.
#[tokio::test]
async fn two_owners_of_one_seq_store_it_once_even_across_weeks() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = store::connect(&db.url, 4).await.unwrap();
    let second = store::connect(&db.url, 4).await.unwrap();
    let sender = UserId::random();
    let conv = direct_conv(&first, sender).await;
    let now = now_ms();
    let next_week = MESSAGES.containing(now).next().start();
    for seq in 1..=20 {
        let (a, b) = tokio::join!(
            append_one(&first, conv.id, at(seq, sender, now)),
            append_one(&second, conv.id, at(seq, sender, next_week + seq))
        );
        let outcomes = [&a, &b];
        assert_eq!(
            outcomes.iter().filter(|r| r.is_ok()).count(),
            1,
            "seq {seq}: {a:?} {b:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|r| matches!(r, Err(StoreError::SeqTaken))),
            "seq {seq}: {a:?} {b:?}"
        );
    }
    let (page, _) = first
        .history(conv.id, HistoryRange::After(0, None), 100)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
}

/// A database made before partitioning keeps every row where it is (no copy): the old table
/// becomes the default partition, bounded below the first week, and mids stay unique across it.
#[tokio::test]
async fn an_existing_database_is_partitioned_in_place() {
    let db = TestDb::new(Backend::Postgres).await;
    let pool = PgPool::connect(&db.url).await.unwrap();
    store::postgres::migrator().run_to(1, &pool).await.unwrap();
    let before = SqlStore::postgres(pool.clone());
    let sender = UserId::random();
    let conv = direct_conv(&before, sender).await;
    let now = now_ms();
    let stored = at(2, sender, now);
    // Rows as the version before stored them (its commit statement is gone with it).
    for m in [at(1, sender, now - DAY_MS), stored.clone()] {
        sqlx::query(
            "INSERT INTO messages (conv_id, seq, mid, sender, kind, body, at) \
             VALUES ($1, $2, $3, $4, 'text', $5, $6)",
        )
        .bind(conv.id.0)
        .bind(m.seq)
        .bind(m.mid.0)
        .bind(sender.0)
        .bind(&m.body)
        .bind(m.at)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE conversations SET last_seq = 2, last_activity = $1 WHERE id = $2")
        .bind(now)
        .bind(conv.id.0)
        .execute(&pool)
        .await
        .unwrap();

    let s = store::connect(&db.url, 4).await.unwrap();
    assert_eq!(
        homes(&pool, conv.id).await,
        [
            (1, "messages_default".to_owned()),
            (2, "messages_default".to_owned())
        ]
    );
    // The first week starts after the newest row kept (this week's rows stay in the default);
    // the nodes make the weeks after it.
    let first = MESSAGES.containing(now).next();
    assert!(exists(&pool, &first.table()).await);
    assert!(!exists(&pool, &MESSAGES.containing(now).table()).await);
    let bound: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'messages_default_before'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(bound.contains(&first.start().to_string()), "{bound}");
    // Old rows read as before; new ones go on; a stored mid is still found.
    let (page, _) = s
        .history(conv.id, HistoryRange::After(0, None), 50)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
    let retry = NewMessage {
        seq: 3,
        ..stored.clone()
    };
    match append_one(&s, conv.id, retry).await {
        Err(StoreError::DuplicateMids(hits)) => assert_eq!(hits[0].seq, 2),
        other => panic!("a stored mid was not found: {other:?}"),
    }
    append_one(&s, conv.id, at(3, sender, now + 1))
        .await
        .unwrap();
    append_one(&s, conv.id, at(4, sender, first.start() + 1))
        .await
        .unwrap();
    assert_eq!(
        homes(&pool, conv.id).await.last(),
        Some(&(4, first.table()))
    );
    pool.close().await;
}

/// The expiry job drops a week of 200,000 messages while a client sends, and a long read holds
/// the table the drop must lock: the drop gives way in short waits instead of queueing every
/// send behind it, and every acknowledged send is stored once, in order.
#[tokio::test]
async fn sends_go_on_while_an_expired_week_is_dropped() {
    // The node keeps everything itself; the drop is this test's, as another node's job would be.
    let node = TestNode::spawn(Backend::Postgres, |c| {
        c.retention_days = 36_500;
        c.rate_messages = 1000;
        c.rate_burst = 1000;
    })
    .await;
    let url = node.config.database_url.clone();
    let pool = PgPool::connect(&url).await.unwrap();
    let old = MESSAGES.containing(now_ms() - 120 * DAY_MS);
    create(&pool, old).await;
    sqlx::query(
        "INSERT INTO messages (conv_id, seq, mid, sender, kind, body, at) \
         SELECT gen_random_uuid(), 1, gen_random_uuid(), gen_random_uuid(), 'text', \
         repeat('x', 100), $1 + g FROM generate_series(0, 199999) g",
    )
    .bind(old.start())
    .execute(&pool)
    .await
    .unwrap();

    let mut client = node.client(Uuid::new_v4()).await;
    let conv = client.direct_with(Uuid::new_v4()).await;
    let stop = CancellationToken::new();
    let sending = tokio::spawn({
        let (stop, conv) = (stop.clone(), conv.clone());
        async move {
            let mut acked = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stop.is_cancelled() {
                let mid = Uuid::new_v4().to_string();
                let started = Instant::now();
                let r = client
                    .call(
                        "send",
                        json!({"conv": conv, "mid": mid, "body": "meanwhile"}),
                    )
                    .await;
                slowest = slowest.max(started.elapsed());
                assert_eq!(r["t"], "sent", "{r}");
                acked.push(mid);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (client, acked, slowest)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut reader = pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE at < 0")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    let held = Duration::from_secs(2);
    let holder = tokio::spawn(async move {
        tokio::time::sleep(held).await;
        reader.commit().await.unwrap();
    });
    let job = store::connect(&url, 4).await.unwrap();
    let started = Instant::now();
    let now = now_ms();
    let done = job
        .purge(now - 90 * DAY_MS, now - 7 * DAY_MS)
        .await
        .unwrap();
    let took = started.elapsed();
    holder.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (mut client, acked, slowest) = sending.await.unwrap();

    assert_eq!(done.partitions, 1, "{done:?}");
    assert!(!exists(&pool, &old.table()).await);
    assert!(
        took >= held / 2,
        "the drop did not wait for the read ({took:?}): this test did not test anything"
    );
    println!(
        "dropped a week of 200,000 messages in {took:?} (a read held it {held:?}); \
         {} sends meanwhile, the slowest {slowest:?}",
        acked.len()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a send waited {slowest:?} behind the drop"
    );
    assert!(acked.len() > 20, "only {} sends", acked.len());
    assert_kept(&mut client, &conv, &acked).await;
    pool.close().await;
    node.shutdown().await;
}
