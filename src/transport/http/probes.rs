//! `/healthz` (the process runs), `/readyz` (its dependencies answer), `/metrics` (Prometheus).

use std::sync::Arc;

use hyper::Response;

use super::response::{Body, respond};
use crate::transport::state::Transport;

/// 200 while the process runs.
pub fn health() -> Response<Body> {
    respond(200, "text/plain", "ok\n")
}

/// 200 when the database (and Redis in a cluster) answer; 503 otherwise, and while stopping.
pub async fn ready(t: Arc<Transport>) -> Response<Body> {
    if !t.shutdown.is_cancelled() && (t.ready)().await {
        respond(200, "text/plain", "ready\n")
    } else {
        respond(503, "text/plain", "not ready\n")
    }
}

/// The Prometheus text, with the live gauges refreshed first.
pub fn metrics(t: &Transport) -> Response<Body> {
    let (users, conversations) = t.node.live_counts();
    metrics::gauge!("chat_connections").set(t.open_connections() as f64);
    metrics::gauge!("chat_user_actors").set(users as f64);
    metrics::gauge!("chat_conversation_actors").set(conversations as f64);
    metrics::gauge!("chat_conversations_resting").set(t.node.resting_count() as f64);
    respond(200, "text/plain; version=0.0.4", t.metrics.render())
}
