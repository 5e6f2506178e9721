//! A MessagePack WebSocket client that speaks the protocol as a user would, and the check that a
//! conversation's history kept every acknowledged message once, in order.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// A MessagePack WebSocket client that keeps pushes aside while it waits for replies.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub pushes: Vec<Value>,
    pub hello: Value,
    /// The close code the server sent, once it closed.
    pub close_code: Option<u16>,
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        Client::try_connect(url, token)
            .await
            .expect("could not connect and be greeted")
    }

    /// [`Client::connect`], or None when the handshake fails or no `hello` comes (a node that
    /// is dying, a balancer with no node behind it).
    pub async fn try_connect(url: &str, token: &str) -> Option<Client> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.ok()?;
        let mut c = Client::fresh(ws);
        loop {
            let f = c.try_next_frame().await?;
            if f["t"] == "hello" {
                c.hello = f;
                return Some(c);
            }
            c.pushes.push(f);
        }
    }

    /// Connects with a small kernel receive buffer, so a client that stops reading fills up
    /// after little data whatever the machine's socket defaults are.
    pub async fn connect_small_buffer(url: &str, token: &str) -> Client {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let host = req.uri().authority().unwrap().as_str().to_owned();
        let addr: SocketAddr = host.parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client::greeted(ws).await
    }

    fn fresh(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            next_id: 1,
            pushes: Vec::new(),
            hello: Value::Null,
            close_code: None,
        }
    }

    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        let mut c = Client::fresh(ws);
        c.hello = c.push("hello").await;
        c
    }

    pub async fn send_frame(&mut self, frame: Value) {
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Sends bytes as one binary frame, whatever they hold.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next frame, or None when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        self.frame_within(Duration::from_secs(10))
            .await
            .expect("no frame in 10 s")
    }

    /// The next frame, or None when the connection closed or nothing came for 10 s.
    pub async fn try_next_frame(&mut self) -> Option<Value> {
        self.frame_within(Duration::from_secs(10))
            .await
            .ok()
            .flatten()
    }

    async fn frame_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        loop {
            let Some(msg) = tokio::time::timeout(wait, self.ws.next()).await? else {
                return Ok(None);
            };
            match msg {
                Ok(Message::Binary(b)) => {
                    return Ok(Some(rmp_serde::from_slice(&b).unwrap()));
                }
                Ok(Message::Close(frame)) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return Ok(None);
                }
                Err(_) => return Ok(None),
                Ok(_) => continue,
            }
        }
    }

    /// The raw connection, for frames the helpers do not make.
    pub fn raw(&mut self) -> &mut TcpStream {
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("tests use plain TCP"),
        }
    }

    /// Sends a request and returns its reply (an `error` reply included).
    pub async fn call(&mut self, t: &str, fields: Value) -> Value {
        self.try_call(t, fields)
            .await
            .expect("closed (or silent for 10 s) while waiting for a reply")
    }

    /// [`Client::call`], or None when the connection closed or the reply did not come in 10 s.
    pub async fn try_call(&mut self, t: &str, fields: Value) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = fields;
        frame["t"] = json!(t);
        frame["id"] = json!(id);
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.ok()?;
        loop {
            let f = self.try_next_frame().await?;
            if f.get("id").and_then(Value::as_u64) == Some(id) {
                return Some(f);
            }
            self.pushes.push(f);
        }
    }

    /// Creates (or finds) the direct conversation with `other`; its id.
    pub async fn direct_with(&mut self, other: Uuid) -> String {
        let r = self
            .call(
                "create",
                json!({"kind": "direct", "members": [other.to_string()]}),
            )
            .await;
        r["conversation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no conversation in {r}"))
            .to_owned()
    }

    /// Sends `body` in `conv` (answered `sent`) and checks that `to` gets it pushed next.
    pub async fn sends_to(&mut self, to: &mut Client, conv: &str, body: &str) {
        let r = self.call("send", json!({"conv": conv, "body": body})).await;
        assert_eq!(r["t"], "sent", "{r}");
        assert_eq!(to.push("message").await["body"], body);
    }

    /// The next frame whose type is one of `kinds`; frames of other types are dropped.
    pub async fn next_of(&mut self, kinds: &[&str]) -> Value {
        loop {
            let f = self.next_frame().await.expect("closed while waiting");
            if kinds.iter().any(|k| f["t"] == *k) {
                return f;
            }
        }
    }

    /// The next push of type `t` (pushes of other types are kept).
    pub async fn push(&mut self, t: &str) -> Value {
        if let Some(i) = self.pushes.iter().position(|f| f["t"] == t) {
            return self.pushes.remove(i);
        }
        loop {
            let f = self
                .next_frame()
                .await
                .expect("closed while waiting for a push");
            if f["t"] == t {
                return f;
            }
            self.pushes.push(f);
        }
    }
}

/// `conv`'s history is exactly seq 1..N and holds each of `acked` (mids answered `sent`) once;
/// read page by page, so any length is checked.
pub async fn assert_kept(c: &mut Client, conv: &str, acked: &[String]) {
    let mut messages = Vec::new();
    loop {
        let after = messages.len();
        let h = c
            .call(
                "history",
                json!({"conv": conv, "after": after, "limit": 100}),
            )
            .await;
        messages.extend(h["messages"].as_array().unwrap().iter().cloned());
        if h["more"] != true {
            break;
        }
    }
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    for mid in acked {
        let copies = messages.iter().filter(|m| m["mid"] == mid.as_str()).count();
        assert_eq!(copies, 1, "{mid} is there {copies} times");
    }
}
