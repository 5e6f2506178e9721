//! `POST /v1/internal/events`: the user service tells us a profile changed; the cached entry is
//! dropped. Only with `Authorization: Bearer CHAT_SERVICE_TOKEN` (unset: refused), compared in
//! constant time so that the answer's timing tells nothing of the token.

use std::sync::Arc;

use chat_actors::ids::UserId;
use chat_actors::protocol::{ErrorCode, Rejection};
use hyper::Request;
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::api::{self, Answer};
use crate::transport::state::Transport;

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
        .and_then(crate::auth::bearer);
    let expected = t.service_token.as_bytes();
    // `ct_eq` of slices of different lengths is false at once: the length is not a secret.
    let valid = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected)));
    if expected.is_empty() || !valid {
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
