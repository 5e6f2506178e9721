//! What every JSON API handler shares: the caller from the bearer token, strict JSON bodies
//! under a size limit, query parameters, and answers with the §6 status codes.

use std::collections::HashMap;

use std::time::Duration;

use bytes::Bytes;
use chat_actors::node::Caller;
use chat_actors::protocol::{ErrorCode, Rejection};
use http_body_util::{BodyExt, Limited};
use hyper::Response;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth;

use super::response::{Body, json, respond};
use crate::transport::error::http_error;
use crate::transport::state::Transport;

/// How long a client may take to send a request body before the connection is dropped.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A handler's outcome: an answer, or a rejection mapped to its status.
pub type Answer = Result<Response<Body>, Rejection>;

/// The error response for a rejection.
pub fn rejected(r: &Rejection) -> Response<Body> {
    let (status, body) = http_error(r);
    json(status, &body)
}

/// The caller named by `Authorization: Bearer`, or `unauthorized`.
pub fn caller(t: &Transport, headers: &HeaderMap) -> Result<Caller, Rejection> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .ok_or_else(|| Rejection::new(ErrorCode::Unauthorized, "a bearer token is required"))?;
    // Why it was refused, never the token itself (the router logs it at warn).
    let identity = t
        .verifier
        .verify(token)
        .map_err(|e| Rejection::new(ErrorCode::Unauthorized, e.to_string()))?;
    Ok(Caller {
        user: identity.user,
        session: None,
    })
}

/// Reads a JSON body of type `T`: over the limit is `too_large` (refused from its
/// `Content-Length` before anything is read), one that does not arrive within
/// [`BODY_READ_TIMEOUT`] or anything else off is `bad_request`.
pub async fn body<T: DeserializeOwned>(incoming: Incoming) -> Result<T, Rejection> {
    use hyper::body::Body as _;
    if incoming.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(incoming, MAX_BODY_BYTES).collect(),
    );
    let collected = read
        .await
        .map_err(|_| Rejection::bad_request("the body did not arrive in time"))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Rejection::bad_request("the body could not be read")
            }
        })?;
    let bytes: Bytes = collected.to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Rejection::bad_request(format!("invalid JSON body: {e}")))
}

fn too_large() -> Rejection {
    Rejection::new(
        ErrorCode::TooLarge,
        format!("the body is over {MAX_BODY_BYTES} bytes"),
    )
}

/// The query string's parameters.
pub fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// An optional numeric query parameter; present but not a number is `bad_request`.
pub fn number<N: std::str::FromStr>(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<N>, Rejection> {
    q.get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| Rejection::bad_request(format!("{name} must be an integer")))
        })
        .transpose()
}

/// An optional non-negative integer query parameter (a time or a seq): the same range as over
/// WebSocket, where they are unsigned 64-bit integers.
pub fn unsigned(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Rejection> {
    match q.get(name) {
        Some(v) if v.starts_with('-') => Err(Rejection::bad_request(format!(
            "{name} must not be negative"
        ))),
        _ => number::<u64>(q, name),
    }
}

/// An optional page `limit`: any integer; one beyond the 64-bit range is served like any other
/// value over the largest page (PROTOCOL §4 clamps, it does not refuse).
pub fn page_limit(q: &HashMap<String, String>) -> Result<Option<i64>, Rejection> {
    let Some(v) = q.get("limit") else {
        return Ok(None);
    };
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::bad_request("limit must be an integer"));
    }
    Ok(Some(v.parse::<i64>().unwrap_or(if v.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    })))
}

/// A path segment that must be a UUID; otherwise `bad_request`, as the WebSocket answers the
/// same id in a frame (a malformed request comes first in PROTOCOL §6's order of checks).
pub fn id<T: From<uuid::Uuid>>(segment: &str) -> Result<T, Rejection> {
    uuid::Uuid::parse_str(segment)
        .map(T::from)
        .map_err(|_| Rejection::bad_request(format!("invalid UUID {segment:?} in the path")))
}

/// `status` with `value` as JSON.
pub fn ok_json(status: u16, value: &impl Serialize) -> Answer {
    let v = serde_json::to_value(value).map_err(|_| Rejection::internal())?;
    Ok(json(status, &v))
}

/// 204.
pub fn no_content() -> Answer {
    Ok(respond(204, "application/json", Bytes::new()))
}
