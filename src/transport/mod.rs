//! HTTP and WebSocket on one hyper server: the accept loop and the state every handler shares.
//!
//! A transport decodes, asks the node, encodes. It decides nothing about order or membership and
//! never touches the store or the bus (readiness comes in as a probe from `app`).

pub mod codec;
pub mod error;
pub mod http;
pub mod router;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_actors::ids::UserId;
use chat_actors::node::Node;
use dashmap::DashMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;

/// Answers whether the node's dependencies answer (for `/readyz`).
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// WebSocket settings.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// Ping interval; silence for twice this closes the connection.
    pub heartbeat: Duration,
    /// The largest frame accepted.
    pub max_frame_bytes: usize,
    /// Pushes queued per connection.
    pub outbound_queue: usize,
    /// Allowed `Origin`s; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Connections per user on this node.
    pub max_connections_per_user: usize,
    /// This node's name, for `hello`.
    pub node_id: String,
}

/// What every handler shares.
pub struct Transport {
    /// The node's operations.
    pub node: Node,
    /// Token checks.
    pub verifier: Verifier,
    /// The metrics recorder, rendered at `/metrics`.
    pub metrics: PrometheusHandle,
    /// Readiness of the database (and Redis in a cluster).
    pub ready: Probe,
    /// The bearer token the user service presents to `/v1/internal/events` (empty: refuse all).
    pub service_token: String,
    /// WebSocket settings.
    pub ws: WsSettings,
    /// Open connections per user here, for the per-user cap.
    pub per_user: DashMap<UserId, usize>,
    /// Open WebSocket connections here.
    pub open: AtomicUsize,
    /// Cancelled on SIGTERM: stop accepting, say `bye`, close.
    pub shutdown: CancellationToken,
    /// Every WebSocket task, so shutdown can wait for them (hyper's graceful shutdown does not
    /// see upgraded sockets).
    pub sessions: TaskTracker,
}

impl Transport {
    /// Open WebSocket connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Serves `listener` until `shutdown`; then waits (bounded) for every WebSocket to say `bye`.
pub async fn serve(listener: TcpListener, transport: Arc<Transport>) {
    let connections = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = transport.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let t = transport.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| router::route(t.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    transport.sessions.close();
    if tokio::time::timeout(Duration::from_secs(10), transport.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("some WebSocket sessions did not close in time");
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
}
