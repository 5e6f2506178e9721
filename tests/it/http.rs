//! The HTTP JSON API: same rules, same tokens, and a message sent over HTTP reaches WebSocket
//! clients like any other.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::helpers::{Backend, TestNode};

/// One HTTP/1.1 request over a fresh connection; returns (status, JSON body or Null).
async fn http(
    node: &TestNode,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    req += &format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text[9..12].parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn an_http_send_reaches_websocket_clients_and_errors_map_to_statuses() {
    let node = TestNode::spawn(Backend::Postgres, |_| {}).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ta = node.token(a);
    let mut cb = node.client(b).await;
    let (status, conv) = http(
        &node,
        "POST",
        "/v1/conversations",
        Some(&ta),
        Some(&json!({"kind": "direct", "members": [b]}).to_string()),
    )
    .await;
    assert_eq!(status, 201);
    let id = conv["id"].as_str().unwrap();
    let path = format!("/v1/conversations/{id}/messages");
    let (status, msg) = http(
        &node,
        "POST",
        &path,
        Some(&ta),
        Some(r#"{"body":"over http"}"#),
    )
    .await;
    assert_eq!(status, 201);
    let pushed = cb.push("message").await;
    assert_eq!(
        (pushed["mid"].clone(), pushed["body"].clone()),
        (msg["mid"].clone(), json!("over http"))
    );

    assert_eq!(
        http(&node, "GET", "/v1/conversations", None, None).await.0,
        401
    );
    let (status, err) = http(
        &node,
        "POST",
        "/v1/conversations",
        Some(&ta),
        Some(r#"{"kind":"nonsense"}"#),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (400, json!("bad_request"))
    );
    let (status, err) = http(
        &node,
        "POST",
        &path,
        Some(&ta),
        Some(&json!({"body": "x".repeat(5000)}).to_string()),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (413, json!("too_large"))
    );
    let huge = json!({"body": "x".repeat(70_000)}).to_string();
    assert_eq!(
        http(&node, "POST", &path, Some(&ta), Some(&huge)).await.0,
        413
    );
    let stranger = node.token(Uuid::new_v4());
    assert_eq!(
        http(&node, "GET", &path, Some(&stranger), None).await.0,
        403
    );
    assert_eq!(
        http(
            &node,
            "GET",
            &format!("/v1/conversations/{}", Uuid::new_v4()),
            Some(&ta),
            None
        )
        .await
        .0,
        404
    );
    let (status, doc) = http(&node, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!((status, doc["openapi"].clone()), (200, json!("3.0.3")));
    node.shutdown().await;
}
