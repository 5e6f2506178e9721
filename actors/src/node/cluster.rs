//! The cluster as this node sees it: who is alive, which start of each, and what a change
//! means here.
//!
//! A node that left takes its users' presence with it and fails what was asked of it; a node
//! that joined hears who is connected here. A node restarted under its own name inside the
//! dead-node window never leaves the live set, so the set alone cannot tell the others that it
//! forgot everything. Each start draws an incarnation number, carried in its hello and its
//! heartbeat: a known name with a new number is a restart, and the others treat it as a node that
//! just joined (it hears their rosters; what was asked of the old process is answered
//! `unavailable`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::route::NodeWire;
use super::state::{Cluster, Node};
use crate::delivery::wire::{self, Wire};
use crate::ids::UserId;
use crate::ports::LiveNode;

impl Cluster {
    /// A cluster this process has heard nothing of yet.
    pub(super) fn new() -> Cluster {
        Cluster {
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
            incarnations: Mutex::new(HashMap::new()),
        }
    }

    /// Records what `heard` says of each node's incarnation and returns the nodes that were
    /// restarted since last heard (a known name with another number). With `complete`, `heard`
    /// is the whole live set and nodes not in it are forgotten.
    fn note_incarnations(&self, heard: &[LiveNode], complete: bool) -> Vec<String> {
        // A poisoned lock only means a panic between two map operations: each is whole.
        let mut known = match self.incarnations.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        if complete {
            known.retain(|id, _| heard.iter().any(|n| n.id == *id));
        }
        let mut restarted = Vec::new();
        // This node's own entry is in `heard` too: its number never changes, so it is never
        // taken for a restart.
        for node in heard.iter().filter(|n| n.incarnation != 0) {
            match known.insert(node.id.clone(), node.incarnation) {
                Some(before) if before != node.incarnation => restarted.push(node.id.clone()),
                _ => {}
            }
        }
        restarted
    }
}

impl Node {
    /// The bus's membership says these nodes are alive now. Users of nodes that left go offline;
    /// nodes that joined or restarted hear who is connected here; conversations no longer owned
    /// here stop (their new owner loads them from the database).
    pub(super) fn set_live_nodes(&self, nodes: Vec<LiveNode>) {
        let restarted = self.cluster.note_incarnations(&nodes, true);
        self.update_live(nodes.into_iter().map(|n| n.id).collect(), restarted);
    }

    /// Another node said hello: it counts as live from now on, not from the next heartbeat.
    pub(super) fn heard_hello(&self, hello: LiveNode) {
        let restarted = self
            .cluster
            .note_incarnations(std::slice::from_ref(&hello), false);
        let mut live = (*self.router.live()).clone();
        live.push(hello.id);
        self.update_live(live, restarted);
    }

    /// [`Node::set_live_nodes`] on names, with the nodes among them known to have restarted.
    fn update_live(&self, mut nodes: Vec<String>, restarted: Vec<String>) {
        nodes.sort();
        nodes.dedup();
        let delivery = &self.deps.delivery;
        let me = delivery.node_id().to_owned();
        if !nodes.contains(&me) {
            nodes.push(me.clone());
            nodes.sort();
        }
        self.router.sweep_pending();
        let old = self.router.live();
        if *old == nodes && restarted.is_empty() {
            return;
        }
        if *old != nodes {
            tracing::info!(nodes = ?nodes, "live nodes changed");
        }
        for gone in old.iter().filter(|n| !nodes.contains(n)) {
            delivery.presence.forget_node(gone);
            // Nobody will answer what was asked of it: the askers hear `unavailable` now and
            // retry with the new owner.
            self.router.fail_pending(|owner| owner == gone);
        }
        for node in &restarted {
            tracing::info!(node = %node, "a node restarted under its own name");
            // The old process will not answer. Its users need no forgetting here: the new one
            // sent its roster when it joined, replacing them.
            self.router.fail_pending(|owner| owner == node);
        }
        let joined: Vec<&String> = nodes
            .iter()
            .filter(|n| (!old.contains(n) || restarted.contains(n)) && **n != me)
            .collect();
        if !joined.is_empty() {
            let roster = wire::encode(&self.roster());
            for node in joined {
                delivery.bus().send(node, roster.clone());
            }
        }
        self.reroute(Arc::new(nodes));
    }

    /// Who is connected here, as the other nodes hear it.
    fn roster(&self) -> NodeWire {
        let delivery = &self.deps.delivery;
        Wire::Roster {
            node: delivery.node_id().to_owned(),
            users: delivery.presence.local_users(),
        }
    }

    /// Tells every node who is connected here, replacing what they knew: after the bus lost
    /// messages (its connection broke), arrivals and departures may have gone unheard.
    pub(super) fn resync(&self) {
        self.deps.delivery.broadcast(&self.roster(), "roster");
    }

    /// Tells every node that `id`'s profile changed (the user service told this one).
    pub(super) fn tell_everyone_profile_changed(&self, id: UserId) {
        let news: NodeWire = Wire::ProfileChanged { id };
        self.deps.delivery.broadcast(&news, "profile");
    }

    /// Tells the other nodes this one has joined (after its first heartbeat).
    pub fn say_hello(&self) {
        let hello: NodeWire = Wire::Hello {
            node: self.deps.delivery.node_id().to_owned(),
            incarnation: self.cluster.incarnation,
        };
        self.deps.delivery.broadcast(&hello, "hello");
    }
}
