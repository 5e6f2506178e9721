//! The in-process bus of a single node. The node delivers to its own connections directly (the
//! bus is skipped when sender, owner and recipients are all local), so with no other node there
//! is nothing to carry: `is_distributed` is false and the node never publishes.

use bytes::Bytes;
use chat_actors::ports::Bus;

/// The bus of a node that is the whole cluster.
#[derive(Debug, Default)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn is_distributed(&self) -> bool {
        false
    }

    fn send(&self, _node: &str, _message: Bytes) {
        // Unreachable in practice: the node asks `is_distributed` first.
        metrics::counter!("chat_bus_dropped_total").increment(1);
    }

    fn broadcast(&self, _message: Bytes) {
        metrics::counter!("chat_bus_dropped_total").increment(1);
    }
}
