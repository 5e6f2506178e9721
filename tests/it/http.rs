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

/// `POST /v1/conversations` for a direct chat with `other`.
async fn create_direct(node: &TestNode, token: &str, other: Uuid) -> (u16, Value) {
    let body = json!({"kind": "direct", "members": [other]}).to_string();
    http(node, "POST", "/v1/conversations", Some(token), Some(&body)).await
}

#[tokio::test]
async fn an_http_send_reaches_websocket_clients_and_errors_map_to_statuses() {
    let node = TestNode::spawn(Backend::Postgres, |_| {}).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ta = node.token(a);
    let mut cb = node.client(b).await;
    let (status, conv) = create_direct(&node, &ta, b).await;
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
    // A malformed id is a malformed request, as over WebSocket.
    for path in ["/v1/conversations/not-a-uuid", "/v1/messages/not-a-uuid"] {
        let method = if path.starts_with("/v1/messages") {
            "DELETE"
        } else {
            "GET"
        };
        let (status, err) = http(&node, method, path, Some(&ta), None).await;
        assert_eq!(
            (status, err["error"]["code"].clone()),
            (400, json!("bad_request")),
            "{path}"
        );
    }
    let (status, doc) = http(&node, "GET", "/v1/openapi.json", None, None).await;
    assert_eq!((status, doc["openapi"].clone()), (200, json!("3.0.3")));
    // A real path with the wrong method: 405, its own code, and what is allowed.
    let (status, body) = http(&node, "DELETE", "/v1/conversations", Some(&ta), None).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (405, json!("method_not_allowed"))
    );
    // The root points a newcomer at the WebSocket and the docs instead of a bare 404.
    let (status, root) = http(&node, "GET", "/", None, None).await;
    assert_eq!((status, root["websocket"].clone()), (200, json!("/v1/ws")));
    node.shutdown().await;
}

/// Sends `head` (request line and headers, no body or part of one) and reads the answer, or
/// `None` when the server only closed the connection.
async fn raw_exchange(node: &TestNode, head: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the server held the connection for 30 s");
    String::from_utf8_lossy(&raw)
        .get(9..12)
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn a_body_too_large_is_refused_from_its_length_and_a_slow_body_is_not_waited_for() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let token = node.token(Uuid::new_v4());
    let head = |length: u64, body: &str| {
        format!(
            "POST /v1/conversations HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
        )
    };
    // Refused before a byte of the body is read.
    assert_eq!(
        raw_exchange(&node, &head(1_000_000_000_000, "")).await,
        Some(413)
    );
    // A body that stops arriving is given up on: an error or a closed connection, in time.
    let status = raw_exchange(&node, &head(100, r#"{"kind":"#)).await;
    assert!(matches!(status, None | Some(400)), "{status:?}");
    node.shutdown().await;
}

#[tokio::test]
async fn http_paging_takes_the_same_ranges_as_websocket() {
    let node = TestNode::spawn(Backend::Sqlite, |_| {}).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let ta = node.token(a);
    let (_, conv) = create_direct(&node, &ta, b).await;
    let id = conv["id"].as_str().unwrap();
    let messages = format!("/v1/conversations/{id}/messages");
    for body in ["one", "two", "three"] {
        let body = json!({ "body": body }).to_string();
        let (status, _) = http(&node, "POST", &messages, Some(&ta), Some(&body)).await;
        assert_eq!(status, 201);
    }
    let mut ca = node.client(a).await;
    let seqs = |page: &Value| -> Vec<u64> {
        page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("no messages in {page}"))
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let max = u64::MAX;
    // Out-of-range numbers are clamped alike: a limit past 64 bits is 200, a cursor past the
    // end reads from the newest.
    let (status, page) = http(
        &node,
        "GET",
        &format!("{messages}?limit=99999999999999999999999&before={max}"),
        Some(&ta),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let ws = ca
        .call("history", json!({"conv": id, "limit": max, "before": max}))
        .await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(seqs(&page), seqs(&ws));
    assert_eq!(page["more"], ws["more"]);
    let (status, page) = http(
        &node,
        "GET",
        &format!("{messages}?after=1&limit=1"),
        Some(&ta),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let ws = ca
        .call("history", json!({"conv": id, "after": 1, "limit": 1}))
        .await;
    assert_eq!((seqs(&page), page["more"].clone()), (vec![2], json!(true)));
    assert_eq!(seqs(&page), seqs(&ws));
    let (status, list) = http(
        &node,
        "GET",
        &format!("/v1/conversations?limit=99999999999999999999999&before={max}"),
        Some(&ta),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let ws = ca
        .call("conversations", json!({"limit": max, "before": max}))
        .await;
    assert_eq!(list["items"][0]["id"], json!(id));
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        ws["items"].as_array().unwrap().len()
    );
    // A limit below 1 is refused alike.
    let (status, _) = http(
        &node,
        "GET",
        &format!("{messages}?limit=-1"),
        Some(&ta),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let ws = ca.call("history", json!({"conv": id, "limit": -1})).await;
    assert_eq!(ws["code"], "bad_request", "{ws}");
    node.shutdown().await;
}

/// A member added to a group hears of the conversation, then gets the `member_added` system
/// message like every other member; no one deletes a system message, over WebSocket or HTTP.
async fn an_added_member_gets_the_system_message_and_no_one_deletes_it(backend: Backend) {
    let node = TestNode::spawn(backend, |_| {}).await;
    let (admin, member, added) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut ca = node.client(admin).await;
    let mut cm = node.client(member).await;
    let mut cn = node.client(added).await;
    let g = ca
        .call("create", json!({"kind": "group", "members": [member]}))
        .await;
    let conv = g["conversation"]["id"].as_str().unwrap().to_owned();
    let r = ca
        .call("add_member", json!({"conv": conv, "user": added}))
        .await;
    assert_eq!(r["t"], "ok", "{r}");
    let first = cn.next_of(&["conversation", "message"]).await;
    assert_eq!(first["t"], "conversation", "{first}");
    let event = json!({"event": "member_added", "user": added.to_string()});
    for c in [&mut ca, &mut cm, &mut cn] {
        let m = c.push("message").await;
        assert_eq!(m["kind"], "system", "{m}");
        let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(body, event);
    }
    let h = ca.call("history", json!({"conv": conv})).await;
    let system = h["messages"][0]["mid"].as_str().unwrap().to_owned();
    let r = ca.call("delete", json!({"mid": system})).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let path = format!("/v1/messages/{system}");
    let (status, err) = http(&node, "DELETE", &path, Some(&node.token(admin)), None).await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let h = cn.call("history", json!({"conv": conv})).await;
    assert!(h["messages"][0]["deleted_at"].is_null(), "{h}");
}

#[tokio::test]
async fn an_added_member_gets_the_system_message_and_no_one_deletes_it_on_sqlite() {
    an_added_member_gets_the_system_message_and_no_one_deletes_it(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_added_member_gets_the_system_message_and_no_one_deletes_it_on_postgres() {
    an_added_member_gets_the_system_message_and_no_one_deletes_it(Backend::Postgres).await;
}
