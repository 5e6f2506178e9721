//! Test scaffolding: fresh databases on both backends ([`db`]), an in-process node ([`node`]), the
//! real binary as a process ([`binary`]), a MessagePack WebSocket client ([`client`]), and
//! [`eventually`], the one way a test waits for something to become true.

mod binary;
mod client;
mod db;
mod node;

use std::time::Duration;

use chat_backend::config::Config;
use uuid::Uuid;

pub use binary::{Binary, free_port, http_status, signal};
pub use client::{Client, assert_kept};
pub use db::{Backend, TestDb, admin, outage};
pub use node::TestNode;

/// How long a test waits for what PROTOCOL says happens within seconds.
pub const SECONDS_5: Duration = Duration::from_secs(5);
/// How long a test waits for what PROTOCOL bounds by 10 s (failover, healing).
pub const SECONDS_10: Duration = Duration::from_secs(10);
/// How often [`eventually`] asks, by default.
pub const POLL: Duration = Duration::from_millis(100);
/// How often it asks where the answer comes quickly (readiness).
pub const FAST_POLL: Duration = Duration::from_millis(50);

/// The JWT secret every test node and binary is started with.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// Runs the project's `scripts/NAME` with `args`; what it printed on stdout, trimmed. Panics with
/// what it said on stderr when it fails.
pub fn run_script(name: &str, args: &[&str]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name);
    let out = std::process::Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("scripts/{name} does not run: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A token for `user` that a binary started with [`SECRET`] accepts for an hour.
pub fn token(user: Uuid) -> String {
    signed_with(SECRET, user, Duration::from_secs(3600))
}

/// A token for `user`, signed with `secret` (empty: the development secret), valid for `life`.
pub fn signed_with(secret: &str, user: Uuid, life: Duration) -> String {
    let config = Config {
        jwt_secret: secret.to_owned(),
        ..Config::default()
    };
    chat_backend::auth::sign(&config, chat_actors::ids::UserId(user), life).unwrap()
}

/// The p50 and p99 of `samples` (milliseconds), for the figures a flood test prints.
pub fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Asks `check` every `every` until it answers `Some`, and returns that; panics with `what` when
/// `within` passes first. The one way a test waits for something that happens in the background
/// (a node going offline, a cache filled, a slot freed).
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        if tokio::time::Instant::now() + every > deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(every).await;
    }
}
