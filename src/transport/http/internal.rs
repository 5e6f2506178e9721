//! `POST /v1/internal/events`: the user service tells us a profile changed; the cached entry is
//! dropped. Only with `Authorization: Bearer CHAT_SERVICE_TOKEN` (unset: refused).

use std::sync::Arc;

use chat_actors::ids::UserId;
use chat_actors::protocol::{ErrorCode, Rejection};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;

use super::api::{self, Answer};
use crate::transport::Transport;

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    uuid: UserId,
}

/// Handles one event.
pub async fn events(t: Arc<Transport>, req: Request<Incoming>) -> Answer {
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if t.service_token.is_empty() || presented != Some(t.service_token.as_str()) {
        return Err(Rejection::new(
            ErrorCode::Unauthorized,
            "a valid service token is required",
        ));
    }
    let event: Event = api::body(req.into_body()).await?;
    match event.kind.as_str() {
        "user.profile.updated" | "business.profile.updated" => {
            t.node.profile_changed(event.uuid).await;
            api::no_content()
        }
        other => Err(Rejection::bad_request(format!(
            "unknown event type {other:?}"
        ))),
    }
}
