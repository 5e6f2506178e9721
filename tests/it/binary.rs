//! The real binary: signals, exit codes, and settings that only the whole node shows.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::helpers::{
    Backend, Binary, Client, POLL, SECONDS_10, SECRET, eventually, http_status, signed_with,
};

#[tokio::test]
async fn sigterm_says_bye_closes_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .arg("serve")
        .current_dir(dir.path())
        .env("CHAT_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "CHAT_DATABASE_URL",
            format!("sqlite://{}/chat.db", dir.path().display()),
        )
        .env("CHAT_JWT_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let token = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_chat-backend"))
            .args(["token", "--user", &uuid::Uuid::new_v4().to_string()])
            .current_dir(dir.path())
            .env("CHAT_JWT_SECRET", SECRET)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let listening = async || std::net::TcpStream::connect(("127.0.0.1", port)).ok();
    eventually(SECONDS_10, POLL, "the node listens", listening).await;
    let mut client = Client::connect(&url, token.trim()).await;
    assert_eq!(client.call("ping", json!({})).await["t"], "pong");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let bye = client.push("bye").await;
    assert_eq!(bye["reason"], "shutdown");
    assert!(client.next_frame().await.is_none());
    assert_eq!(client.close_code, Some(1001));
    let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0));
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .args(["serve", "--help"])
        .env("CHAT_JWT_SECRET", "jwt-secret-value-1")
        .env("CHAT_PROFILES_TOKEN", "profiles-token-value-2")
        .env("CHAT_SERVICE_TOKEN", "service-token-value-3")
        .env("CHAT_DATABASE_URL", "postgres://chat:db-password-4@db/chat")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CHAT_JWT_SECRET"), "{text}");
    for secret in [
        "jwt-secret-value-1",
        "profiles-token-value-2",
        "service-token-value-3",
        "db-password-4",
    ] {
        assert!(!text.contains(secret), "--help shows {secret}");
    }
}

/// `GET path` with a bearer token on the binary's port: the status.
async fn get_as(b: &Binary, path: &str, token: &str) -> u16 {
    http_status(b.port, "GET", path, Some(token)).await
}

/// A scenario through the real binary, logging at debug: the whole log holds no raw UUID and
/// no token, names every denied access at warn with masked ids, has no colour codes (stderr is
/// a file) and, with `CHAT_LOG_FORMAT=json`, is one JSON object per line.
#[tokio::test]
async fn the_log_holds_no_raw_id_or_token_and_names_each_denied_access() {
    let uuid = regex::Regex::new(
        r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}",
    )
    .unwrap();
    for format in ["text", "json"] {
        let env = [("RUST_LOG", "debug"), ("CHAT_LOG_FORMAT", format)];
        let b = Binary::start(Backend::Sqlite, &env).await;
        let (a, friend, stranger) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut ca = b.client(a).await;
        let conv = ca.direct_with(friend).await;
        let r = ca
            .call("send", json!({"conv": conv, "body": "hello"}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        // Denied: a stranger reads the conversation over WebSocket and over HTTP, and a forged
        // token is refused at the upgrade and by the API.
        let mut cs = b.client(stranger).await;
        let r = cs.call("history", json!({"conv": conv})).await;
        assert_eq!(r["code"], "forbidden", "{r}");
        let path = format!("/v1/conversations/{conv}/messages");
        assert_eq!(get_as(&b, &path, &b.token(stranger)).await, 403);
        let forged = format!("{}x", b.token(a));
        assert_eq!(get_as(&b, &path, &forged).await, 401);
        let mut req = b.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {forged}").parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req).await.is_err());
        drop((ca, cs));
        b.terminate();
        let mut b = b;
        b.wait().await;

        let log = b.log();
        assert!(log.contains("access denied"), "{log}");
        assert_eq!(
            log.lines().filter(|l| l.contains("access denied")).count(),
            4,
            "{log}"
        );
        assert!(log.contains(&format!("{}…", &conv[..8])), "{log}");
        assert!(log.contains(&format!("{}…", &stranger.simple().to_string()[..8])));
        if let Some(raw) = uuid.find(&log) {
            panic!("a raw id in the {format} log: {}\n{log}", raw.as_str());
        }
        for token in [b.token(a), b.token(stranger), forged] {
            let signature = token.rsplit('.').next().unwrap().to_owned();
            assert!(
                !log.contains(&signature),
                "a token in the {format} log\n{log}"
            );
        }
        assert!(!log.contains('\u{1b}'), "colour codes in a log file");
        if format == "json" {
            for line in log.lines() {
                let v: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(v["level"].is_string(), "{line}");
            }
        }
    }
}

/// A user's mistake is said once, plainly, without a backtrace; `token --help` shows the
/// token's options, not every server setting.
#[tokio::test]
async fn a_users_mistake_is_said_once_and_each_command_shows_its_own_options() {
    let db = crate::helpers::TestDb::new(Backend::Postgres).await;
    let missing = format!("{}_missing", db.url);
    let out = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .arg("migrate")
        .env("CHAT_DATABASE_URL", &missing)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("Backtrace"),
        "{err}"
    );

    let help = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .args(["token", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--user") && help.contains("--ttl"), "{help}");
    assert!(
        !help.contains("--listen") && !help.contains("--max-group-size"),
        "{help}"
    );
    // `serve` still takes every setting as a flag, after the subcommand or before it.
    let help = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--listen"));
}

/// The public development secret serves nothing beyond this machine: an empty `CHAT_JWT_SECRET`
/// leaves the file's secret in place, a configured secret that anyone could guess is refused at
/// start, and so is the development secret on an address other machines reach.
#[tokio::test]
async fn the_development_secret_never_guards_a_node_others_can_reach() {
    const DEV: &str = "chat-backend-development-secret-do-not-use-in-production";
    let configured = "from-the-file-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prod.toml");
    std::fs::write(&file, format!("jwt_secret = \"{configured}\"\n")).unwrap();
    let file = file.display().to_string();
    let b = Binary::start(
        Backend::Sqlite,
        &[("CHAT_CONFIG", file.as_str()), ("CHAT_JWT_SECRET", "")],
    )
    .await;
    let user = Uuid::new_v4();
    let (status, _) = b.get(&format!("/demo/token?user={user}")).await;
    assert_eq!(status, 404, "demo tokens with a configured secret");
    let signed_with = |secret: &str| signed_with(secret, user, Duration::from_secs(600));
    let dev_token = signed_with("");
    assert_eq!(get_as(&b, "/v1/conversations", &dev_token).await, 401);
    assert_eq!(
        get_as(&b, "/v1/conversations", &signed_with(configured)).await,
        200
    );

    let refused = |env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
            .arg("serve")
            .current_dir(dir.path())
            .env(
                "CHAT_DATABASE_URL",
                format!("sqlite://{}/chat.db", dir.path().display()),
            )
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let port = crate::helpers::free_port().to_string();
    let everywhere = format!("0.0.0.0:{port}");
    let err = refused(&[("CHAT_LISTEN", &everywhere), ("CHAT_JWT_SECRET", "")]);
    assert!(err.contains("development secret"), "{err}");
    let local = format!("127.0.0.1:{port}");
    let err = refused(&[("CHAT_LISTEN", &local), ("CHAT_JWT_SECRET", DEV)]);
    assert!(err.contains("public development secret"), "{err}");
    let err = refused(&[("CHAT_LISTEN", &local), ("CHAT_JWT_SECRET", "hunter2")]);
    assert!(err.contains("at least 32"), "{err}");
}

/// Each mistake an operator makes at start is named plainly, with its cause said once and no
/// secret: a missing SQLite folder (not quietly made), an unreachable PostgreSQL (host and port),
/// a database URL of no known form (shown as given), a setting after a subcommand, a bad value
/// from a variable, an unreachable Redis.
#[test]
fn each_mistake_at_start_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-backend"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("CHAT_DATABASE_URL")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("no-such-folder");
    let url = format!("sqlite://{}/chat.db", missing.display());
    let err = run(&["--database-url", &url, "migrate"], &[]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists(), "a mistyped folder was made");

    let port = crate::helpers::free_port();
    let url = format!("postgres://chat:pa55word@127.0.0.1:{port}/chat");
    let err = run(&["--database-url", &url, "migrate"], &[]);
    assert!(
        err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}"))
            && err.contains("refused"),
        "{err}"
    );
    assert!(!err.contains("pa55word"), "{err}");

    let err = run(&["--database-url", "data/chat.db", "migrate"], &[]);
    assert!(
        err.contains("\"data/chat.db\"") && err.contains("sqlite://PATH"),
        "{err}"
    );

    let user = Uuid::new_v4().to_string();
    let err = run(&["token", "--jwt-secret", "s", "--user", &user], &[]);
    assert!(err.contains("before the subcommand"), "{err}");

    let err = run(&["migrate"], &[("CHAT_DEMO", "yes")]);
    assert!(err.contains("CHAT_DEMO"), "{err}");

    let url = format!("sqlite://{}/chat.db", dir.path().display());
    let redis = format!("redis://127.0.0.1:{}", crate::helpers::free_port());
    let listen = format!("127.0.0.1:{}", crate::helpers::free_port());
    let err = run(
        &["serve"],
        &[
            ("CHAT_DATABASE_URL", &url),
            ("CHAT_REDIS_URL", &redis),
            ("CHAT_LISTEN", &listen),
        ],
    );
    assert_eq!(err.matches("refused").count(), 1, "{err}");
}

/// Waits until `b` has no conversation actor up (the idle ones stopped).
async fn idle_actors_stop(b: &Binary) {
    eventually(
        SECONDS_10,
        POLL,
        "the idle conversation's actor stops",
        async || (b.metric("chat_conversation_actors").await == 0.0).then_some(()),
    )
    .await;
}

/// `CHAT_CONVERSATION_IDLE_MS` reaches the conversation actors: one that served a message
/// stops once unused that long (by default it stays ten seconds), and the next message
/// starts it again from the store.
#[tokio::test]
async fn a_conversations_actor_stops_after_the_configured_idle_time_and_comes_back() {
    let b = Binary::start(Backend::Sqlite, &[("CHAT_CONVERSATION_IDLE_MS", "1500")]).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = b.client(alice).await;
    let mut bo = b.client(bob).await;
    let conv = a.direct_with(bob).await;
    let sent = a.call("send", json!({"conv": conv, "body": "one"})).await;
    assert_eq!(sent["t"], "sent", "{sent}");
    assert!(b.metric("chat_conversation_actors").await >= 1.0);
    idle_actors_stop(&b).await;
    let again = a.call("send", json!({"conv": conv, "body": "two"})).await;
    assert_eq!(
        (again["t"].as_str(), again["seq"].as_i64()),
        (Some("sent"), Some(2)),
        "{again}"
    );
    let history = bo.call("history", json!({"conv": conv, "after": 0})).await;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["body"].as_str())
        .collect();
    assert_eq!(bodies, ["one", "two"], "{history}");
}

/// A conversation whose actor stopped idle rests: its next message starts the actor from the
/// record the last one left, without loading it, and numbers on; with
/// `CHAT_CONVERSATION_REST_MS=0` the record is not kept and the start loads it.
#[tokio::test]
async fn a_conversation_at_rest_comes_back_without_a_load_unless_rest_is_off() {
    for (rest, loads_on_return) in [("600000", 0.0), ("0", 1.0)] {
        let b = Binary::start(
            Backend::Sqlite,
            &[
                ("CHAT_CONVERSATION_IDLE_MS", "1000"),
                ("CHAT_CONVERSATION_REST_MS", rest),
            ],
        )
        .await;
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a = b.client(alice).await;
        let conv = a.direct_with(bob).await;
        let sent = a.call("send", json!({"conv": conv, "body": "one"})).await;
        assert_eq!(sent["t"], "sent", "{sent}");
        idle_actors_stop(&b).await;
        let resting = b.metric("chat_conversations_resting").await;
        assert_eq!(resting, if rest == "0" { 0.0 } else { 1.0 }, "rest {rest}");
        let loads = b.metric("chat_conversation_loads_total").await;
        let again = a.call("send", json!({"conv": conv, "body": "two"})).await;
        assert_eq!(
            (again["t"].as_str(), again["seq"].as_i64()),
            (Some("sent"), Some(2)),
            "rest {rest}: {again}"
        );
        let loaded = b.metric("chat_conversation_loads_total").await - loads;
        assert_eq!(loaded, loads_on_return, "rest {rest}");
    }
}

/// A conversation only looked at does not keep its actor as long as one in use: after a burst of
/// creations and a page of each (what a returning user's catch-up reads), the node is back to the
/// one conversation that talked within seconds. (An actor in use stays thirty seconds here, the
/// default ten would end the talking one's too before the count could be seen at one.)
#[tokio::test]
async fn conversations_only_looked_at_give_their_actors_back_within_seconds() {
    let b = Binary::start(Backend::Sqlite, &[("CHAT_CONVERSATION_IDLE_MS", "30000")]).await;
    let alice = Uuid::new_v4();
    let mut a = b.client(alice).await;
    let mut looked_at = Vec::new();
    for _ in 0..30 {
        let conv = a.direct_with(Uuid::new_v4()).await;
        let page = a.call("history", json!({"conv": conv, "after": 0})).await;
        assert_eq!(page["t"], "history", "{page}");
        looked_at.push(conv);
    }
    let talked = a.direct_with(Uuid::new_v4()).await;
    let sent = a.call("send", json!({"conv": talked, "body": "hi"})).await;
    assert_eq!(sent["t"], "sent", "{sent}");
    assert!(b.metric("chat_conversation_actors").await >= 31.0);
    // A glance holds an actor ten seconds; a send thirty.
    eventually(
        SECONDS_10 * 2,
        POLL,
        "only the conversation in use keeps its actor",
        async || (b.metric("chat_conversation_actors").await == 1.0).then_some(()),
    )
    .await;
    // The ones that rested come back when next read.
    let page = a
        .call("history", json!({"conv": looked_at[0], "after": 0}))
        .await;
    assert_eq!(page["t"], "history", "{page}");
}

/// A connection keeps no room for the largest frame it was ever sent. 150 connections each fetch
/// a page of 200 messages of 4,000 bytes (a frame of ~830 KB) and stay open: the node's memory
/// grows by what idle connections hold, not by a page each (~125 MB when every connection kept
/// its WebSocket write buffer at the size of its largest frame).
#[tokio::test]
async fn connections_do_not_keep_the_room_of_the_largest_frame_they_were_sent() {
    let b = roomy_binary().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = b.client(alice).await;
    let conv = a.direct_with(bob).await;
    let body = "x".repeat(4000);
    for _ in 0..200 {
        let sent = a.call("send", json!({"conv": conv, "body": body})).await;
        assert_eq!(sent["t"], "sent", "{sent}");
    }
    // The first page warms what every page shares (the database's cache, the allocator's pools).
    newest_page(&mut a, &conv).await;
    let fetch = async |c: &mut Client| newest_page(c, &conv).await;
    connections_grow_the_node_less_than(&b, bob, 150, 40 * 1024, "were sent ~830 KB", fetch).await;
}

/// Nor for the largest frame it sent: 200 connections each send a frame of ~60 KB (under the
/// 64 KiB frame limit, so read whole, then refused for its body) and stay open. Kept, their read
/// buffers alone would be ≥ 60 KB each (12 MB).
#[tokio::test]
async fn connections_do_not_keep_the_room_of_the_largest_frame_they_sent() {
    let b = roomy_binary().await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = b.client(alice).await;
    let conv = a.direct_with(bob).await;
    let too_large = json!({"conv": conv, "body": "x".repeat(60_000)});
    let send = async |c: &mut Client| {
        let refused = c.call("send", too_large.clone()).await;
        assert_eq!(refused["code"], "too_large", "{refused}");
    };
    // The first refusal warms what every one shares (the allocator's pools).
    send(&mut a).await;
    connections_grow_the_node_less_than(&b, bob, 200, 6 * 1024, "sent ~60 KB", send).await;
}

/// A node on SQLite where one user may open many connections and send fast.
async fn roomy_binary() -> Binary {
    Binary::start(
        Backend::Sqlite,
        &[
            ("CHAT_MAX_CONNECTIONS_PER_USER", "1000"),
            ("CHAT_RATE_MESSAGES", "1000"),
            ("CHAT_RATE_BURST", "1000"),
        ],
    )
    .await
}

/// Opens `count` connections of `user`, each given `each` once, and checks that the node's RSS
/// grew by less than `limit_kib` with all of them open; each still answers after.
async fn connections_grow_the_node_less_than(
    b: &Binary,
    user: Uuid,
    count: usize,
    limit_kib: u64,
    what: &str,
    mut each: impl AsyncFnMut(&mut Client),
) {
    let rss_before = b.rss_kib();
    let mut open = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = b.client(user).await;
        each(&mut c).await;
        open.push(c);
    }
    let rss_after = b.rss_kib();
    println!("{count} connections {what} each: RSS {rss_before} -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + limit_kib,
        "RSS grew from {rss_before} to {rss_after} KiB with {count} connections open"
    );
    for c in &mut open {
        assert_eq!(c.call("ping", json!({})).await["t"], "pong");
    }
}

/// Fetches the newest 200 messages of `conv`, which must hold at least 200.
async fn newest_page(c: &mut Client, conv: &str) {
    let h = c
        .call(
            "history",
            json!({"conv": conv, "before": 1000, "limit": 200}),
        )
        .await;
    assert_eq!(
        h["messages"].as_array().map(Vec::len),
        Some(200),
        "{}",
        h["t"]
    );
}
