//! The node as the bus's inbox ([`BusInbox`]): what arrives from other nodes goes where it
//! belongs. Pushes, presence and rosters go straight to delivery; requests and their answers to
//! the router; hellos and the heartbeat's live set to the cluster's state.

use super::route::NodeWire;
use super::state::Node;
use crate::delivery::wire::Wire;
use crate::ports::{BusInbox, LiveNode};

impl BusInbox for Node {
    fn incarnation(&self) -> u64 {
        self.cluster.incarnation
    }

    fn received(&self, message: &[u8]) {
        let message: NodeWire = match rmp_serde::from_slice(message) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable bus message was dropped");
                return;
            }
        };
        let delivery = &self.deps.delivery;
        let me = delivery.node_id();
        match message {
            Wire::Push { targets, frame } => delivery.deliver_from_bus(&targets, frame),
            Wire::Presence { node, user, online } if node != me => {
                delivery.presence.set_remote(user, &node, online)
            }
            Wire::Roster { node, users } if node != me => {
                delivery.presence.set_roster(&node, &users)
            }
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
    fn lost(&self) {
        self.router.fail_pending(|_| true);
    }

    /// Messages may have been lost meanwhile: every node hears again who is connected here.
    fn regained(&self) {
        self.resync();
    }

    /// Requests waiting for `node` will not hear back: answered `unavailable` now.
    fn unreachable(&self, node: &str) {
        self.router.fail_pending(|owner| owner == node);
    }
}
