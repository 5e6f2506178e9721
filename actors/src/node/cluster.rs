//! The cluster as this node sees it: who is alive, which start of each, and what a change
//! means here.
//!
//! A node that left fails what was asked of it at once, and takes its users' presence with it
//! after a grace (`departed.rs`); a node that joined hears who is connected here, and one that
//! came back without a hello (it may never have known it was counted out) is asked who is
//! connected there. A node restarted under its own name inside the dead-node window never leaves
//! the live set, so the set alone cannot tell the others that it forgot everything. Each start
//! draws an incarnation number, carried in its hello and its heartbeat: a known name with a new
//! number is a restart, and the others treat it as a node that just joined (it hears their
//! rosters; what was asked of the old process is answered `unavailable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::departed::Departed;
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
            departed: Mutex::new(Departed::default()),
            heard_live_set: AtomicBool::new(false),
        }
    }

    /// The nodes held after leaving the live set.
    fn departed(&self) -> MutexGuard<'_, Departed> {
        // A poisoned lock only means a panic between two map operations: each is whole.
        self.departed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what `heard` says of each node's incarnation and returns the nodes that were
    /// restarted since last heard (a known name with another number). With `complete`, `heard`
    /// is the whole live set and nodes not in it are forgotten.
    fn note_incarnations(&self, heard: &[LiveNode], complete: bool) -> Vec<String> {
        // A poisoned lock only means a panic between two map operations: each is whole.
        let mut known = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
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
        // The nodes of the first live set hear this node's hello and send their rosters unasked;
        // a node that joins later without a hello came back from a silence it may not know of.
        let ask = self.cluster.heard_live_set.swap(true, Ordering::Relaxed);
        self.update_live(nodes.into_iter().map(|n| n.id).collect(), restarted, ask);
    }

    /// Another node said hello: it counts as live from now on, not from the next heartbeat.
    pub(super) fn heard_hello(&self, hello: LiveNode) {
        let restarted = self
            .cluster
            .note_incarnations(std::slice::from_ref(&hello), false);
        let mut live = (*self.router.live()).clone();
        live.push(hello.id);
        // A node that says hello sends its roster to every node it finds alive.
        self.update_live(live, restarted, false);
    }

    /// [`Node::set_live_nodes`] on names, with the nodes among them known to have restarted;
    /// with `ask`, the nodes that joined are asked for their rosters.
    fn update_live(&self, mut nodes: Vec<String>, restarted: Vec<String>, ask: bool) {
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
        let now = Instant::now();
        let (back, overdue) = {
            let mut departed = self.cluster.departed();
            for gone in old.iter().filter(|n| !nodes.contains(n)) {
                departed.left(gone, now);
            }
            (departed.back(&nodes), departed.overdue(now))
        };
        for node in &overdue {
            tracing::info!(node = %node, "a node stayed out of the live set: its users are offline");
            delivery.presence.forget_node(node);
        }
        for node in &back {
            tracing::info!(node = %node, "a node came back before its users were told offline");
        }
        if *old == nodes && restarted.is_empty() {
            return;
        }
        if *old != nodes {
            tracing::info!(nodes = ?nodes, "live nodes changed");
        }
        // Conversations may have moved away and back meanwhile: what rests here may be stale.
        self.deps.resting.forget_all();
        for gone in old.iter().filter(|n| !nodes.contains(n)) {
            // Its users stay present for a grace (`departed`), but nobody will answer what was
            // asked of it: the askers hear `unavailable` now and retry with the new owner.
            self.router.fail_pending(|owner| owner == gone);
        }
        for node in &restarted {
            tracing::info!(node = %node, "a node restarted under its own name");
            // The old process will not answer. Its users need no forgetting here: the new one
            // sent its roster when it joined, replacing them.
            self.router.fail_pending(|owner| owner == node);
        }
        let joined: Vec<&str> = nodes
            .iter()
            .filter(|n| (!old.contains(n) || restarted.contains(n)) && **n != me)
            .map(String::as_str)
            .collect();
        self.send_roster(&joined, ask);
        self.reroute(Arc::new(nodes));
    }

    /// Who is connected here, as the other nodes hear it; with `answer`, the receiver is asked
    /// for its own.
    fn roster(&self, answer: bool) -> NodeWire {
        let delivery = &self.deps.delivery;
        Wire::Roster {
            node: delivery.node_id().to_owned(),
            users: delivery.presence.local_users(),
            answer,
        }
    }

    /// `node` says exactly `users` are connected there; with `answer`, it wants this node's
    /// roster back.
    pub(super) fn heard_roster(&self, node: &str, users: &[UserId], answer: bool) {
        self.cluster.departed().heard_from(node, Instant::now());
        let delivery = &self.deps.delivery;
        delivery.presence.set_roster(node, users);
        if answer {
            self.send_roster(&[node], false);
        }
    }

    /// Tells `nodes` who is connected here; with `answer`, asks for their rosters back.
    fn send_roster(&self, nodes: &[&str], answer: bool) {
        if nodes.is_empty() {
            return;
        }
        let roster = wire::encode(&self.roster(answer));
        for node in nodes {
            self.deps.delivery.bus().send(node, roster.clone());
            metrics::counter!("chat_bus_publishes_total", "kind" => "roster").increment(1);
        }
    }

    /// Tells every node who is connected here, replacing what they knew, and asks for theirs:
    /// after the bus lost messages (its connection broke), arrivals and departures may have gone
    /// unheard either way.
    pub(super) fn resync(&self) {
        self.deps.delivery.broadcast(&self.roster(true), "roster");
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
