//! `/v1/conversations` and its members: create, list, get, add and remove members.

use std::sync::Arc;

use chat_actors::ids::{ConversationId, UserId};
use chat_actors::node::handle::CreateRequest;
use chat_actors::protocol::CreateKind;
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::api::{self, Answer};
use crate::transport::state::Transport;

#[derive(Deserialize)]
struct CreateBody {
    kind: CreateKind,
    members: Option<Vec<UserId>>,
    name: Option<String>,
    business: Option<UserId>,
}

/// `POST /v1/conversations`: 201 when created, 200 when it existed.
pub async fn create(t: Arc<Transport>, req: Request<Incoming>) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let b: CreateBody = api::body(req.into_body()).await?;
    let (conversation, created) = t
        .node
        .create(
            caller,
            CreateRequest {
                kind: b.kind,
                members: b.members.unwrap_or_default(),
                name: b.name,
                business: b.business,
            },
        )
        .await?;
    api::ok_json(if created { 201 } else { 200 }, &conversation)
}

/// `GET /v1/conversations?limit&before&since`.
pub async fn list(t: Arc<Transport>, req: Request<Incoming>) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let q = api::query(req.uri());
    let (items, more) = t
        .node
        .conversations(
            caller,
            api::page_limit(&q)?,
            api::unsigned(&q, "before")?,
            api::unsigned(&q, "since")?,
        )
        .await?;
    api::ok_json(200, &serde_json::json!({"items": items, "more": more}))
}

/// `GET /v1/conversations/{id}`.
pub async fn get(t: Arc<Transport>, req: Request<Incoming>, conv: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    api::ok_json(200, &t.node.get(caller, conv).await?)
}

#[derive(Deserialize)]
struct MemberBody {
    user: UserId,
}

/// `POST /v1/conversations/{id}/members`.
pub async fn add_member(t: Arc<Transport>, req: Request<Incoming>, conv: &str) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    let b: MemberBody = api::body(req.into_body()).await?;
    t.node.add_member(caller, conv, b.user).await?;
    api::no_content()
}

/// `DELETE /v1/conversations/{id}/members/{user}`.
pub async fn remove_member(
    t: Arc<Transport>,
    req: Request<Incoming>,
    conv: &str,
    user: &str,
) -> Answer {
    let caller = api::caller(&t, req.headers())?;
    let conv: ConversationId = api::id(conv)?;
    let user: UserId = api::id(user)?;
    t.node.remove_member(caller, conv, user).await?;
    api::no_content()
}
