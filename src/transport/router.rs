//! (method, path) → handler. No business rules here.

use std::convert::Infallible;
use std::sync::Arc;

use chat_actors::protocol::{ErrorCode, Rejection};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::http::response::{Body, json};
use super::http::{api, conversations, demo, internal, messages, openapi, probes};
use super::state::Transport;
use super::ws;

/// Routes one request.
pub async fn route(
    t: Arc<Transport>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let answer = match (&method, segments.as_slice()) {
        (&Method::GET, [""] | ["demo"]) if t.demo.is_some() && demo::wants_html(req.headers()) => {
            Ok(demo::page())
        }
        (&Method::GET, ["demo", "token"]) => match &t.demo {
            Some(demo) => demo.token(req.uri()),
            None => Err(Rejection::not_found("the demo is off (CHAT_DEMO)")),
        },
        (&Method::GET, [""]) => Ok(json(
            200,
            &serde_json::json!({
                "service": "chat-backend",
                "demo": t.demo.as_ref().map(|_| "/ in a browser"),
                "websocket": "/v1/ws",
                "protocol": "docs/PROTOCOL.md in the repository",
                "openapi": "/v1/openapi.json",
                "health": "/healthz",
                "ready": "/readyz",
                "metrics": "/metrics",
            }),
        )),
        (&Method::GET, ["healthz"]) => Ok(probes::health()),
        (&Method::GET, ["readyz"]) => Ok(probes::ready(t).await),
        (&Method::GET, ["metrics"]) => Ok(probes::metrics(&t)),
        (&Method::GET, ["v1", "ws"]) => Ok(ws::upgrade::upgrade(t, req)),
        (&Method::GET, ["v1", "openapi.json"]) => Ok(openapi::document()),
        (&Method::POST, ["v1", "conversations"]) => conversations::create(t, req).await,
        (&Method::GET, ["v1", "conversations"]) => conversations::list(t, req).await,
        (&Method::GET, ["v1", "conversations", id]) => conversations::get(t, req, id).await,
        (&Method::POST, ["v1", "conversations", id, "members"]) => {
            conversations::add_member(t, req, id).await
        }
        (&Method::DELETE, ["v1", "conversations", id, "members", user]) => {
            conversations::remove_member(t, req, id, user).await
        }
        (&Method::GET, ["v1", "conversations", id, "messages"]) => {
            messages::history(t, req, id).await
        }
        (&Method::POST, ["v1", "conversations", id, "messages"]) => {
            messages::send(t, req, id).await
        }
        (&Method::POST, ["v1", "conversations", id, "read"]) => messages::read(t, req, id).await,
        (&Method::DELETE, ["v1", "messages", mid]) => messages::delete(t, req, mid).await,
        (&Method::POST, ["v1", "internal", "events"]) => internal::events(t, req).await,
        (_, segs) if allowed_methods(segs).is_some() => {
            let mut res = json(
                405,
                // Not one of PROTOCOL's request errors: the request named a real path with the
                // wrong method, which `Allow` answers.
                &serde_json::json!({"error": {"code": "method_not_allowed", "message": "method not allowed; see the Allow header"}}),
            );
            if let Some(allow) = allowed_methods(segs) {
                res.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allow),
                );
            }
            Ok(res)
        }
        _ => Ok(json(
            404,
            &serde_json::json!({"error": {"code": "not_found", "message": "no such route"}}),
        )),
    };
    Ok(answer.unwrap_or_else(|r| {
        if matches!(r.code, ErrorCode::Forbidden | ErrorCode::Unauthorized) {
            // The path's ids are masked on their way to the log (telemetry's redaction).
            tracing::warn!(%method, %path, code = ?r.code, reason = %r.message, "access denied");
        }
        api::rejected(&r)
    }))
}

/// The methods that serve `segments`, for the `Allow` header of a 405 (None: no such path).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        [""] | ["healthz"] | ["readyz"] | ["metrics"] | ["v1", "ws"] | ["v1", "openapi.json"] => {
            "GET"
        }
        ["v1", "conversations"] | ["v1", "conversations", _, "messages"] => "GET, POST",
        ["v1", "conversations", _] => "GET",
        ["v1", "conversations", _, "members" | "read"] | ["v1", "internal", "events"] => "POST",
        ["v1", "conversations", _, "members", _] | ["v1", "messages", _] => "DELETE",
        _ => return None,
    })
}
