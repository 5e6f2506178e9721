//! The user-service client and the profile cache against a real local HTTP server whose answers
//! the test switches: good, partial, 5xx, malformed, slow.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chat_actors::ids::UserId;
use chat_actors::ports::Profiles;
use chat_backend::profiles::client::ClientError;
use chat_backend::profiles::{CachePolicy, CachedProfiles, UserServiceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// What the fake service answers next.
#[derive(Clone)]
enum Mode {
    /// 200 with this JSON.
    Json(String),
    /// This status, empty JSON.
    Status(u16),
    /// 200 with a body that is not JSON.
    Garbage,
    /// Waits this long, then answers with the JSON.
    Slow(Duration, String),
}

struct Fake {
    url: String,
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicUsize>,
}

impl Fake {
    async fn start(mode: Mode) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(mode));
        let calls = Arc::new(AtomicUsize::new(0));
        let (m, c) = (mode.clone(), calls.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (m, c) = (m.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut got = 0;
                    // read the head and the announced body
                    loop {
                        let Ok(n) = s.read(&mut buf[got..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break;
                            }
                        }
                    }
                    c.fetch_add(1, Ordering::SeqCst);
                    let mode = m.lock().await.clone();
                    let (status, body) = match mode {
                        Mode::Json(j) => (200, j),
                        Mode::Status(code) => (code, "{}".to_owned()),
                        Mode::Garbage => (200, "<html>not json".to_owned()),
                        Mode::Slow(d, j) => {
                            tokio::time::sleep(d).await;
                            (200, j)
                        }
                    };
                    let res = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(res.as_bytes()).await;
                });
            }
        });
        Fake { url, mode, calls }
    }

    async fn set(&self, mode: Mode) {
        *self.mode.lock().await = mode;
    }
}

fn profiles_json(users: &[(UserId, &str)]) -> String {
    let rows: Vec<_> = users
        .iter()
        .map(|(u, n)| serde_json::json!({"uuid": u, "name": n, "avatar_url": null}))
        .collect();
    serde_json::json!({"users": rows, "businesses": []}).to_string()
}

#[tokio::test]
async fn the_client_reports_5xx_malformed_and_slow_answers_and_its_breaker_opens() {
    let u = UserId::random();
    let fake = Fake::start(Mode::Json(profiles_json(&[(u, "Asha")]))).await;
    let client = UserServiceClient::new(&fake.url, "t").unwrap();
    // a partial answer: the unknown id is simply absent
    let answer = client
        .batch_profiles(&[u, UserId::random()], &[])
        .await
        .unwrap();
    assert_eq!(answer.users.len(), 1);
    assert_eq!(answer.users[0].name, "Asha");

    fake.set(Mode::Status(503)).await;
    assert!(matches!(
        client.batch_profiles(&[u], &[]).await,
        Err(ClientError::Failed(_))
    ));
    fake.set(Mode::Garbage).await;
    assert!(matches!(
        client.batch_profiles(&[u], &[]).await,
        Err(ClientError::Failed(_))
    ));
    fake.set(Mode::Slow(Duration::from_secs(5), "{}".to_owned()))
        .await;
    let started = Instant::now();
    assert!(client.batch_profiles(&[u], &[]).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the call outlived its timeout"
    );
    // three failures in a row: the breaker refuses without calling
    let calls = fake.calls.load(Ordering::SeqCst);
    assert!(matches!(
        client.batch_profiles(&[u], &[]).await,
        Err(ClientError::Open)
    ));
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn unknown_businesses_are_none_and_agents_are_read() {
    let fake = Fake::start(Mode::Status(404)).await;
    let client = UserServiceClient::new(&fake.url, "t").unwrap();
    assert_eq!(client.agents(UserId::random()).await.unwrap(), None);
    let a = UserId::random();
    fake.set(Mode::Json(serde_json::json!({"agents": [a]}).to_string()))
        .await;
    assert_eq!(
        client.agents(UserId::random()).await.unwrap(),
        Some(vec![a])
    );
}

#[tokio::test]
async fn the_cache_serves_stale_profiles_while_the_service_fails_and_forgets_on_invalidate() {
    let (u, stranger) = (UserId::random(), UserId::random());
    let fake = Fake::start(Mode::Json(profiles_json(&[(u, "Old Name")]))).await;
    let policy = CachePolicy {
        fresh_for: Duration::from_millis(300),
        refresh_after: Duration::from_millis(250),
        unknown_for: Duration::from_millis(300),
    };
    let breaker_open_for = Duration::from_millis(500);
    let client = UserServiceClient::new(&fake.url, "t")
        .unwrap()
        .with_breaker_open_for(breaker_open_for);
    let cache = CachedProfiles::start_with(client, policy);
    let got = cache.profiles(&[u, stranger], &[]).await;
    assert_eq!(got[&u].name, "Old Name");
    assert!(!got[&u].stale && !got[&u].placeholder);
    assert!(got[&stranger].placeholder);

    // fresh: no call at all
    let calls = fake.calls.load(Ordering::SeqCst);
    cache.profiles(&[u], &[]).await;
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls);

    // expired while the service fails: the old profile, marked stale, and quickly
    fake.set(Mode::Status(500)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let got = cache.profiles(&[u], &[]).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(got[&u].name, "Old Name");
    assert!(got[&u].stale);

    // the service is back with a new name; an invalidation makes it visible at once
    fake.set(Mode::Json(profiles_json(&[(u, "New Name")])))
        .await;
    tokio::time::sleep(breaker_open_for + Duration::from_millis(100)).await; // it half-opens
    cache.invalidate(u).await;
    let got = cache.profiles(&[u], &[]).await;
    assert_eq!(got[&u].name, "New Name");
    assert!(!got[&u].stale);
}

#[tokio::test]
async fn a_slow_service_never_holds_a_request_past_the_short_wait() {
    let u = UserId::random();
    let fake = Fake::start(Mode::Slow(
        Duration::from_secs(3),
        profiles_json(&[(u, "Late")]),
    ))
    .await;
    let cache = CachedProfiles::start(UserServiceClient::new(&fake.url, "t").unwrap());
    let started = Instant::now();
    let got = cache.profiles(&[u], &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    assert!(got[&u].placeholder);
}
