//! What every handler shares: the node, token checks, metrics, readiness, WebSocket settings and
//! the connection counts, in one [`Transport`] behind an `Arc`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chat_actors::ids::UserId;
use chat_actors::node::Node;
use dashmap::DashMap;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth;
use crate::auth::Verifier;
use crate::config::Config;

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
    /// WebSocket connections on this node.
    pub max_connections: usize,
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
    /// The browser demo, when `CHAT_DEMO` is on.
    pub demo: Option<Demo>,
}

impl Transport {
    /// Open WebSocket connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// What the demo may do on this node.
pub struct Demo {
    /// The configuration to sign development tokens with; `None` when the node has a real
    /// secret or key (then no token is minted).
    pub(crate) dev_tokens: Option<Config>,
}

impl Demo {
    /// The demo for `config`, or `None` when `CHAT_DEMO` is off.
    pub fn new(config: &Config) -> Option<Demo> {
        config.demo.then(|| Demo {
            dev_tokens: auth::uses_dev_secret(config).then(|| config.clone()),
        })
    }
}
