//! Encryption at rest through the real binary: the raw table holds no plaintext, a key rotation
//! keeps old messages readable, `chat-backend rekey` moves every body to the new key, after
//! which the old key can go.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Backend, Binary, Client, SECRET, TestDb};

/// The stored bodies, as the database holds them, in seq order.
async fn raw_bodies(backend: Backend, url: &str) -> Vec<String> {
    let sql = "SELECT body FROM messages WHERE body IS NOT NULL ORDER BY seq";
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows.into_iter().map(|r| r.0).collect()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows.into_iter().map(|r| r.0).collect()
        }
    }
}

/// A node on `db` with `keys` (empty: encryption off).
async fn node(backend: Backend, db: &TestDb, keys: &str) -> Binary {
    Binary::start(
        backend,
        &[
            ("CHAT_DATABASE_URL", db.url.as_str()),
            ("CHAT_ENCRYPTION_KEYS", keys),
        ],
    )
    .await
}

async fn send(c: &mut Client, conv: &str, body: &str) {
    let r = c.call("send", json!({"conv": conv, "body": body})).await;
    assert_eq!(r["t"], "sent", "{r}");
}

async fn bodies(c: &mut Client, conv: &str) -> Vec<String> {
    let h = c.call("history", json!({"conv": conv})).await;
    h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

fn key_prefix(id: &str) -> String {
    format!("\u{1}aes256gcm:{id}:")
}

async fn rotation(backend: Backend) {
    let db = TestDb::new(backend).await;
    let k1 = format!("k1:{}", STANDARD.encode([7u8; 32]));
    let k2 = format!("k2:{}", STANDARD.encode([9u8; 32]));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());

    // Before encryption: one message in the clear.
    let n = node(backend, &db, "").await;
    let mut ca = n.client(a).await;
    let conv = ca.direct_with(b).await;
    send(&mut ca, &conv, "clear words").await;
    drop((ca, n));

    // Encryption on with k1: new bodies are sealed, the old one still reads.
    let n = node(backend, &db, &k1).await;
    let mut ca = n.client(a).await;
    send(&mut ca, &conv, "secret words").await;
    let raw = raw_bodies(backend, &db.url).await;
    assert_eq!(raw[0], "clear words");
    assert!(raw[1].starts_with(&key_prefix("k1")), "{raw:?}");
    assert!(
        !raw[1].contains("secret"),
        "plaintext in the table: {raw:?}"
    );
    assert_eq!(
        bodies(&mut ca, &conv).await,
        ["clear words", "secret words"]
    );
    drop((ca, n));

    // Rotation: k2 in front; old bodies still open, new ones take k2.
    let both = format!("{k2},{k1}");
    let n = node(backend, &db, &both).await;
    let mut ca = n.client(a).await;
    send(&mut ca, &conv, "newer words").await;
    assert!(raw_bodies(backend, &db.url).await[2].starts_with(&key_prefix("k2")));
    assert_eq!(
        bodies(&mut ca, &conv).await,
        ["clear words", "secret words", "newer words"]
    );

    // rekey (while the node serves): every body under k2, none in the clear.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .arg("rekey")
        .env("CHAT_DATABASE_URL", &db.url)
        .env("CHAT_ENCRYPTION_KEYS", &both)
        .env("CHAT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2 message bodies re-encrypted"
    );
    let raw = raw_bodies(backend, &db.url).await;
    assert!(
        raw.iter().all(|r| r.starts_with(&key_prefix("k2"))),
        "{raw:?}"
    );
    assert!(raw.iter().all(|r| !r.contains("words")), "{raw:?}");
    drop((ca, n));

    // k1 retired: everything still reads.
    let n = node(backend, &db, &k2).await;
    let mut ca = n.client(a).await;
    assert_eq!(
        bodies(&mut ca, &conv).await,
        ["clear words", "secret words", "newer words"]
    );
}

#[tokio::test]
async fn bodies_are_sealed_at_rest_and_keys_rotate_on_sqlite() {
    rotation(Backend::Sqlite).await;
}

#[tokio::test]
async fn bodies_are_sealed_at_rest_and_keys_rotate_on_postgres() {
    rotation(Backend::Postgres).await;
}

#[tokio::test]
async fn a_malformed_key_list_stops_the_node_with_a_clear_error_and_no_key_shown() {
    let secret = STANDARD.encode([5u8; 16]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .arg("rekey")
        .env("CHAT_DATABASE_URL", "sqlite::memory:")
        .env("CHAT_ENCRYPTION_KEYS", format!("k1:{secret}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not 32 bytes"), "{err}");
    assert!(!err.contains(&secret), "{err}");
}
