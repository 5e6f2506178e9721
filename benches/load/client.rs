//! One WebSocket client as the tester speaks it: tokens, the connection and its `hello`, frames
//! encoded and decoded, a request and its reply.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use crate::plan::TokenSpec;
use crate::tally::now_us;

pub(crate) fn token(spec: &TokenSpec, user: Uuid) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: String,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    let claims = Claims {
        sub: user.to_string(),
        exp: now_us() / 1_000_000 + 24 * 3600,
        iss: spec.issuer.as_deref(),
        aud: spec.audience.as_deref(),
    };
    let (header, key) = match &spec.private_key {
        Some(pem) => match EncodingKey::from_rsa_pem(pem.as_bytes()) {
            Ok(k) => (Header::new(Algorithm::RS256), k),
            Err(_) => (
                Header::new(Algorithm::ES256),
                EncodingKey::from_ec_pem(pem.as_bytes()).expect("an RSA or EC private key"),
            ),
        },
        None => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(spec.secret.as_bytes()),
        ),
    };
    jsonwebtoken::encode(&header, &claims, &key).expect("token")
}

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and reads the hello: the socket and the name of the node it landed on.
pub(crate) async fn connect(url: &str, token: &str) -> Result<(Ws, String), String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token header")?,
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    // the hello
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(hello))) => {
            let node = decode(&hello)
                .and_then(|v| v["node"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Ok((ws, node))
        }
        _ => Err("no hello".to_owned()),
    }
}

pub(crate) fn frame(v: &Value) -> Message {
    Message::Binary(rmp_serde::to_vec_named(v).expect("encode").into())
}

/// A `send` request, encoded without building a `Value`.
#[derive(Serialize)]
pub(crate) struct SendFrame<'a> {
    pub(crate) t: &'static str,
    pub(crate) id: u64,
    pub(crate) conv: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mid: Option<&'a str>,
    pub(crate) body: &'a str,
}

/// A `history` (with `conv`) or `conversations` request.
#[derive(Serialize)]
pub(crate) struct ReadFrame<'a> {
    pub(crate) t: &'static str,
    pub(crate) id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) conv: Option<&'a str>,
    pub(crate) limit: u32,
}

/// The fields of a server frame the measuring loop reads, borrowed from the frame's bytes.
#[derive(Deserialize)]
pub(crate) struct InFrame<'a> {
    pub(crate) t: &'a str,
    #[serde(default)]
    pub(crate) id: Option<u64>,
    #[serde(default)]
    pub(crate) code: Option<&'a str>,
    #[serde(default)]
    pub(crate) body: Option<&'a str>,
}

pub(crate) fn encode(v: &impl Serialize) -> Message {
    Message::Binary(rmp_serde::to_vec_named(v).expect("encode").into())
}

pub(crate) fn decode(m: &Message) -> Option<Value> {
    match m {
        Message::Binary(b) => rmp_serde::from_slice(b).ok(),
        _ => None,
    }
}

pub(crate) async fn call(ws: &mut Ws, id: u64, req: Value) -> Option<Value> {
    let mut req = req;
    req["id"] = json!(id);
    ws.send(frame(&req)).await.ok()?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .ok()??
            .ok()?;
        if let Some(v) = decode(&m)
            && v["id"].as_u64() == Some(id)
        {
            return Some(v);
        }
    }
}
