//! Prometheus metrics: the recorder, and the text served at `/metrics`.

use std::collections::HashMap;
use std::sync::LazyLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder; a second install (tests with several nodes) reuses nothing and
/// returns a fresh, unconnected handle.
pub fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new();
    match builder.install_recorder() {
        Ok(handle) => {
            register_event_counters();
            handle
        }
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    }
}

/// Counters of events that may never happen on a healthy node, shown at 0 from the start: a
/// series that appears only with its first event makes `rate()` and the dashboard
/// (`deploy/grafana-dashboard.json`) blind until then.
fn register_event_counters() {
    for name in [
        "chat_slow_consumers_total",
        "chat_rate_limited_total",
        "chat_connections_refused_total",
        "chat_accept_errors_total",
        "chat_actor_failures_total",
        "chat_bus_lost_total",
        "chat_bus_disconnections_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for ok in ["true", "false"] {
        metrics::counter!("chat_user_service_calls_total", "ok" => ok).increment(0);
    }
    for kind in [
        "push", "presence", "request", "reply", "roster", "hello", "profile",
    ] {
        metrics::counter!("chat_bus_publishes_total", "kind" => kind).increment(0);
    }
    for why in ["version", "malformed"] {
        metrics::counter!("chat_bus_unreadable_total", "why" => why).increment(0);
    }
}

/// The metrics touched for every frame and every commit, registered once: the macros build the
/// key and look it up in the registry on every call, a few allocations each (heaptrack counted
/// five per message). Only valid after [`install`]: a handle made before it records nowhere.
pub struct Hot {
    /// `chat_frames_in_total`
    pub frames_in: Counter,
    /// `chat_frames_out_total`
    pub frames_out: Counter,
    /// `chat_writer_queue_depth`
    pub writer_queue: Gauge,
    /// `chat_commit_seconds`
    pub commit_seconds: Histogram,
    /// `chat_commit_messages`
    pub commit_messages: Histogram,
    /// `chat_messages_persisted_total`
    pub persisted: Counter,
    /// `chat_request_seconds` by request type.
    request_seconds: HashMap<&'static str, Histogram>,
}

/// The request types timed in `chat_request_seconds`.
const REQUEST_KINDS: [&str; 12] = [
    "send",
    "history",
    "read",
    "mute",
    "delete",
    "get",
    "conversations",
    "create",
    "add_member",
    "remove_member",
    "transfer",
    "typing",
];

impl Hot {
    /// Records a request's latency in `chat_request_seconds{t=kind}`.
    pub fn record_request(&self, kind: &'static str, seconds: f64) {
        match self.request_seconds.get(kind) {
            Some(h) => h.record(seconds),
            None => metrics::histogram!("chat_request_seconds", "t" => kind).record(seconds),
        }
    }
}

/// The hot metrics' handles.
pub fn hot() -> &'static Hot {
    static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
        frames_in: metrics::counter!("chat_frames_in_total"),
        frames_out: metrics::counter!("chat_frames_out_total"),
        writer_queue: metrics::gauge!("chat_writer_queue_depth"),
        commit_seconds: metrics::histogram!("chat_commit_seconds"),
        commit_messages: metrics::histogram!("chat_commit_messages"),
        persisted: metrics::counter!("chat_messages_persisted_total"),
        request_seconds: REQUEST_KINDS
            .iter()
            .map(|k| (*k, metrics::histogram!("chat_request_seconds", "t" => *k)))
            .collect(),
    });
    &HOT
}
