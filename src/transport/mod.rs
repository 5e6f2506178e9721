//! HTTP and WebSocket on one hyper server: the accept loop. What every handler shares is in
//! [`state`].
//!
//! A transport decodes, asks the node, encodes. It decides nothing about order or membership and
//! never touches the store or the bus (readiness comes in as a probe from `app`).

pub mod codec;
pub mod error;
pub mod http;
pub mod router;
pub mod state;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use state::Transport;

/// TCP connections beyond the WebSocket cap kept for plain HTTP (probes, metrics, the API).
const HTTP_HEADROOM: usize = 1024;
/// The first pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `listener` until `shutdown`; then waits (bounded) for every WebSocket to say `bye`.
pub async fn serve(listener: TcpListener, transport: Arc<Transport>) {
    let connections = TaskTracker::new();
    // Every HTTP connection holds a permit while hyper serves it: past the cap, new ones are
    // closed at once instead of costing a task and a parser each. An upgraded WebSocket leaves
    // hyper and counts against its own cap (`max_connections`, answered 503 at the upgrade).
    let tcp_cap = transport.ws.max_connections.saturating_add(HTTP_HEADROOM);
    let permits = Arc::new(tokio::sync::Semaphore::new(tcp_cap));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, _) = tokio::select! {
            _ = transport.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    a
                }
                Err(e) => {
                    // Out of file descriptors, mostly: back off (doubling) instead of spinning,
                    // so the connections being served get the CPU to finish and free some.
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed");
                    metrics::counter!("chat_accept_errors_total").increment(1);
                    tokio::select! {
                        _ = transport.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("chat_connections_refused_total").increment(1);
            drop(stream);
            continue;
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
            drop(permit);
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
