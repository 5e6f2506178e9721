//! Whether the bus carries, as this node sees it: its own channels subscribed, the heartbeat
//! answered, and which nodes' channels could not be published to lately. The core asks it
//! before sending a request to another node, so that a request that cannot arrive is refused
//! at once. It also keeps the operator's view: reconnects and the time spent without a bus.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use dashmap::DashSet;

/// The bus's state, shared by its tasks and the `Bus` port.
#[derive(Debug)]
pub(super) struct Health {
    /// This node's channels are subscribed (false from a lost connection until subscribed again).
    inbound: AtomicBool,
    /// The last heartbeat was answered.
    heartbeat: AtomicBool,
    /// Nodes whose channel could not be published to, until a probe of it succeeds.
    failing: DashSet<String>,
    /// How many there are: the common case (none) is read without touching the set, whose
    /// `is_empty` would lock every shard on each request to another node.
    failing_count: AtomicUsize,
    /// Since when the bus has been down (inbound or heartbeat), for the time-without-a-bus metric.
    down_since: Mutex<Option<Instant>>,
}

impl Health {
    pub(super) fn new() -> Health {
        metrics::gauge!("chat_bus_up").set(1.0);
        metrics::counter!("chat_bus_reconnects_total").absolute(0);
        metrics::counter!("chat_bus_down_milliseconds_total").absolute(0);
        Health {
            inbound: AtomicBool::new(true),
            heartbeat: AtomicBool::new(true),
            failing: DashSet::new(),
            failing_count: AtomicUsize::new(0),
            down_since: Mutex::new(None),
        }
    }

    /// Whether a message to `node` can go now.
    pub(super) fn reaches(&self, node: &str) -> bool {
        self.inbound.load(Ordering::Relaxed)
            && self.heartbeat.load(Ordering::Relaxed)
            && (self.failing_count.load(Ordering::Relaxed) == 0 || !self.failing.contains(node))
    }

    /// Records whether this node's channels are subscribed; returns what it was before.
    pub(super) fn set_inbound(&self, up: bool) -> bool {
        let was = self.inbound.swap(up, Ordering::Relaxed);
        self.note_change();
        was
    }

    /// Records whether the heartbeat was answered; returns what it was before.
    pub(super) fn set_heartbeat(&self, up: bool) -> bool {
        let was = self.heartbeat.swap(up, Ordering::Relaxed);
        self.note_change();
        was
    }

    /// `node`'s channel could not be published to.
    pub(super) fn failing(&self, node: &str) {
        if self.failing.insert(node.to_owned()) {
            self.failing_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `node`'s channel can be published to again.
    pub(super) fn recovered(&self, node: &str) {
        if self.failing.remove(node).is_some() {
            self.failing_count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Keeps the gauge and the time-without-a-bus counter in step with the two flags.
    fn note_change(&self) {
        let up = self.inbound.load(Ordering::Relaxed) && self.heartbeat.load(Ordering::Relaxed);
        let Ok(mut down_since) = self.down_since.lock() else {
            return;
        };
        match (*down_since, up) {
            (None, false) => {
                *down_since = Some(Instant::now());
                metrics::gauge!("chat_bus_up").set(0.0);
            }
            (Some(since), true) => {
                *down_since = None;
                metrics::gauge!("chat_bus_up").set(1.0);
                metrics::counter!("chat_bus_reconnects_total").increment(1);
                metrics::counter!("chat_bus_down_milliseconds_total")
                    .increment(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_reached_only_with_both_ways_up_and_its_channel_not_failing() {
        let health = Health::new();
        assert!(health.reaches("node-2"));
        health.failing("node-2");
        assert!(!health.reaches("node-2"));
        assert!(health.reaches("node-3"));
        health.recovered("node-2");
        assert!(health.set_inbound(false));
        assert!(!health.reaches("node-3"));
        assert!(!health.set_inbound(true));
        health.set_heartbeat(false);
        assert!(!health.reaches("node-3"));
        health.set_heartbeat(true);
        assert!(health.reaches("node-2"));
    }
}
