//! The real binary: signals and exit codes.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Client, SECRET};

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
    let mut client = None;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            client = Some(Client::connect(&url, token.trim()).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.expect("the node never listened");
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
