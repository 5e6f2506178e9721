//! The node as the bus's inbox ([`BusInbox`]): what arrives from other nodes goes where it
//! belongs. Pushes, presence and rosters go straight to delivery; requests and their answers to
//! the router; hellos and the heartbeat's live set to the cluster's state.

use std::sync::atomic::{AtomicI64, Ordering};

use super::route::NodeWire;
use super::state::Node;
use crate::delivery::wire::{self, Unreadable, Wire};
use crate::ports::{BusInbox, LiveNode};

/// When a refused bus message was last logged (ms since the epoch).
static LAST_REFUSAL_LOGGED: AtomicI64 = AtomicI64::new(0);
/// The least time between two such lines.
const REFUSAL_LOG_EVERY_MS: i64 = 10_000;

impl BusInbox for Node {
    fn incarnation(&self) -> u64 {
        self.cluster.incarnation
    }

    fn received(&self, message: &[u8]) {
        let Some(message) = read(message) else {
            return;
        };
        let delivery = &self.deps.delivery;
        let me = delivery.node_id();
        match message {
            Wire::Push { targets, frame } => delivery.deliver_from_bus(&targets, frame),
            Wire::Presence { node, user, online } if node != me => {
                delivery.presence.set_remote(user, &node, online)
            }
            Wire::Roster {
                node,
                users,
                answer,
            } if node != me => self.heard_roster(&node, &users, answer),
            Wire::Hello { node, incarnation } if node != me => self.heard_hello(LiveNode {
                id: node,
                incarnation,
            }),
            Wire::ProfileChanged { id } => {
                let profiles = self.deps.profiles.clone();
                self.deps
                    .tasks
                    .spawn(async move { profiles.invalidate(id).await });
            }
            Wire::Presence { .. } | Wire::Roster { .. } | Wire::Hello { .. } => {}
            Wire::Request {
                from,
                corr,
                conv,
                request,
            } => self.serve_remote(from, corr, conv, request),
            Wire::Reply { corr, answer } => self.router.answered(corr, answer),
        }
    }

    fn live_nodes(&self, nodes: Vec<LiveNode>) {
        self.set_live_nodes(nodes);
    }

    /// Requests waiting for an owner elsewhere will not hear back (their message or its answer
    /// is lost), so they are answered `unavailable` now rather than at their deadline.
    /// The other nodes may count this one out while it cannot hear them, and serve its
    /// conversations: the records resting here may go stale.
    fn lost(&self) {
        self.router.fail_pending(|_| true);
        self.deps.resting.forget_all();
    }

    /// Messages may have been lost meanwhile: every node hears again who is connected here,
    /// and what rested here through the silence is forgotten.
    fn regained(&self) {
        self.deps.resting.forget_all();
        self.resync();
    }

    /// Requests waiting for `node` will not hear back: answered `unavailable` now.
    fn unreachable(&self, node: &str) {
        self.router.fail_pending(|owner| owner == node);
    }
}

/// A bus message in a format this build reads; what it refuses is counted (and logged now and
/// then, not once a message: a newer node sends many).
fn read(message: &[u8]) -> Option<NodeWire> {
    let refused = match wire::body(message) {
        Ok(body) => match rmp_serde::from_slice(body) {
            Ok(message) => return Some(message),
            Err(_) => Unreadable::Malformed,
        },
        Err(why) => why,
    };
    let why = match refused {
        Unreadable::Version(_) => "version",
        Unreadable::Malformed => "malformed",
    };
    metrics::counter!("chat_bus_unreadable_total", "why" => why).increment(1);
    let now = crate::clock::now_ms();
    if now - LAST_REFUSAL_LOGGED.load(Ordering::Relaxed) > REFUSAL_LOG_EVERY_MS {
        LAST_REFUSAL_LOGGED.store(now, Ordering::Relaxed);
        tracing::warn!(error = %refused, "a bus message was refused");
    }
    None
}
