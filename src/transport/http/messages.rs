//! Messages over HTTP: history, send, delete, read pointer. A message sent here reaches
//! WebSocket clients exactly like one sent over WebSocket: it is the same operation.

use std::sync::Arc;

use chat_actors::ids::{ConversationId, Mid};
use chat_actors::protocol::{MessageObject, Rejection};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::api::{self, Answer};
use crate::transport::state::Transport;

/// `GET /v1/conversations/{id}/messages?after&before&limit`.
pub async fn history(t: Arc<Transport>, req: Request<Incoming>, conv: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    let q = api::query(req.uri());
    let (messages, more) = t
        .node
        .history(
            caller,
            conv,
            api::unsigned(&q, "after")?,
            api::unsigned(&q, "before")?,
            api::page_limit(&q)?,
        )
        .await?;
    api::ok_json(
        200,
        &serde_json::json!({"messages": messages, "more": more}),
    )
}

#[derive(Deserialize)]
struct SendBody {
    mid: Option<Mid>,
    body: String,
    kind: Option<String>,
}

/// `POST /v1/conversations/{id}/messages`: 201 with the message, 200 when its `mid` was stored.
pub async fn send(t: Arc<Transport>, req: Request<Incoming>, conv: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    let b: SendBody = api::body(req.into_body()).await?;
    let kind = b.kind.clone().unwrap_or_else(|| "text".to_owned());
    let sent = t
        .node
        .send(caller, conv, b.mid, b.body.clone(), b.kind)
        .await?;
    let message = MessageObject {
        conv,
        seq: sent.seq,
        mid: sent.mid,
        from: caller.user,
        kind,
        body: Some(b.body),
        at: sent.at,
        deleted_at: None,
    };
    api::ok_json(if sent.created { 201 } else { 200 }, &message)
}

/// `DELETE /v1/messages/{mid}`.
pub async fn delete(t: Arc<Transport>, req: Request<Incoming>, mid: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let mid: Mid = api::id(mid)?;
    t.node.delete(caller, mid).await?;
    api::no_content()
}

#[derive(Deserialize)]
struct ReadBody {
    /// Within int64, like every seq.
    seq: i64,
}

/// `POST /v1/conversations/{id}/read`.
pub async fn read(t: Arc<Transport>, req: Request<Incoming>, conv: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    let b: ReadBody = api::body(req.into_body()).await?;
    let seq =
        u64::try_from(b.seq).map_err(|_| Rejection::bad_request("seq must not be negative"))?;
    t.node.read(caller, conv, seq).await?;
    api::no_content()
}
