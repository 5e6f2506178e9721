//! (method, path) → handler. No business rules here.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::Transport;
use super::http::{Body, json, probes};
use super::ws;

/// Routes one request.
pub async fn route(
    t: Arc<Transport>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => probes::health(),
        (&Method::GET, "/readyz") => probes::ready(t).await,
        (&Method::GET, "/metrics") => probes::metrics(&t),
        (&Method::GET, "/v1/ws") => ws::upgrade::upgrade(t, req),
        _ => json(
            404,
            &serde_json::json!({"error": {"code": "not_found", "message": "no such route"}}),
        ),
    };
    Ok(res)
}
