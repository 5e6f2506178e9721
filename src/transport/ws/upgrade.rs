//! The upgrade of `GET /v1/ws`: every check happens before the 101, so a refused client gets a
//! plain HTTP status (401 bad token, 403 origin, 429 too many connections for the user, 503 the
//! node is full) and no socket.

use std::sync::Arc;

use chat_actors::protocol::Format;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::session;
use super::slot::{Full, Slot};
use crate::transport::codec::JSON_SUBPROTOCOL;
use crate::transport::http::response::{Body, json};
use crate::transport::state::Transport;

/// Checks the request and, when it passes, answers 101 and starts the session.
pub fn upgrade(t: Arc<Transport>, mut req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers();
    let Some(key) = websocket_key(headers) else {
        return refuse(400, "bad_request", "not a WebSocket upgrade");
    };
    if !origin_allowed(&t, headers) {
        tracing::warn!("access denied: a WebSocket upgrade from an origin not allowed");
        return refuse(403, "forbidden", "origin not allowed");
    }
    let Some(token) = bearer(headers).or_else(|| query_token(req.uri().query())) else {
        tracing::warn!("access denied: a WebSocket upgrade without a token");
        return refuse(401, "unauthorized", "a token is required");
    };
    let identity = match t.verifier.verify(&token) {
        Ok(id) => id,
        Err(e) => {
            // Why, never the token itself.
            tracing::warn!(error = %e, "access denied: a WebSocket upgrade with an invalid token");
            return refuse(401, "unauthorized", &e.to_string());
        }
    };
    let slot = match Slot::take(&t, identity.user) {
        Ok(slot) => slot,
        Err(Full::User) => {
            return refuse(429, "rate_limited", "too many connections for this user");
        }
        Err(Full::Node) => {
            metrics::counter!("chat_connections_refused_total").increment(1);
            return refuse(503, "unavailable", "this node is full; try again later");
        }
    };
    let json_wanted = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == JSON_SUBPROTOCOL);
    let format = if json_wanted {
        Format::Json
    } else {
        Format::MsgPack
    };
    let accept = derive_accept_key(key.as_bytes());

    // Only the upgrade handle goes into the session task: the request's headers share hyper's
    // 8 KiB read buffer, and holding the request would keep it for the life of the connection.
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    let tt = t.clone();
    let fut = async move {
        match on_upgrade.await {
            Ok(upgraded) => session::run(tt, upgraded, identity, format, slot).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    };
    t.sessions.spawn(fut);

    let mut res = Response::new(Body::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if json_wanted {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(JSON_SUBPROTOCOL),
        );
    }
    res
}

fn refuse(status: u16, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

/// The client's key, when the request is a well-formed WebSocket upgrade.
fn websocket_key(h: &HeaderMap) -> Option<String> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)?.to_str().ok()? != "13" {
        return None;
    }
    Some(h.get(header::SEC_WEBSOCKET_KEY)?.to_str().ok()?.to_owned())
}

fn origin_allowed(t: &Transport, h: &HeaderMap) -> bool {
    if t.ws.allowed_origins.is_empty() {
        return true;
    }
    h.get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|o| t.ws.allowed_origins.iter().any(|a| a == o))
}

fn bearer(h: &HeaderMap) -> Option<String> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    crate::auth::bearer(v).map(str::to_owned)
}

fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}
