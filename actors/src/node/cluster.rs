//! The node in a cluster: which node owns a conversation, requests to an owner elsewhere and
//! their answers, and what arrives on the bus.
//!
//! Every node hashes the same live set (rendezvous) and so names the same owner; a request for a
//! conversation owned elsewhere travels there with a correlation number, and the answer comes
//! back on this node's channel. Two owners for a moment (live sets that disagree while a node
//! joins or dies) are fenced by the database: the loser's commit fails `SeqTaken`, and it reloads.
//!
//! A node restarted under its own name inside the dead-node window never leaves the live set,
//! so the set alone cannot tell the others that it forgot everything. Each start draws an
//! incarnation number, carried in its hello and its heartbeat: a known name with a new number is
//! a restart, and the others treat it as a node that just joined (it hears their rosters; what
//! was asked of the old process is answered `unavailable`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::RpcReplyPort;
use tokio::sync::oneshot;

use super::Node;
use super::handle::REQUEST_TIMEOUT;
use crate::conversation::{ConversationReply, ConversationRequest, Reply, ReplyPort};
use crate::delivery::wire::{self, Wire};
use crate::ids::{ConversationId, UserId};
use crate::ownership;
use crate::protocol::Rejection;

/// What crosses the bus, with this crate's request and answer types.
type NodeWire = Wire<ConversationRequest, Result<ConversationReply, Rejection>>;

/// A node the bus says is alive, and which start of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    /// Its name (`CHAT_NODE_ID`).
    pub id: String,
    /// The number its process drew at start; 0 when not known (a node of an older version).
    pub incarnation: u64,
}

/// The cluster as this node sees it.
pub(super) struct Cluster {
    /// The number this process drew at start (never 0).
    incarnation: u64,
    /// The live nodes, sorted (this one included); replaced whole on every change.
    live: RwLock<Arc<Vec<String>>>,
    /// The incarnation last heard of each other live node. Held only for the few lines that
    /// read and replace it, never across an await.
    incarnations: Mutex<HashMap<String, u64>>,
    /// Requests sent to owners elsewhere, waiting for their answers: the port, the owner, when.
    pending: DashMap<u64, (ReplyPort, String, Instant)>,
    next_corr: AtomicU64,
}

impl Cluster {
    /// A cluster of one: this node, until the bus says otherwise.
    pub(super) fn alone(node_id: &str) -> Cluster {
        Cluster {
            incarnation: uuid::Uuid::new_v4().as_u64_pair().0.max(1),
            live: RwLock::new(Arc::new(vec![node_id.to_owned()])),
            incarnations: Mutex::new(HashMap::new()),
            pending: DashMap::new(),
            next_corr: AtomicU64::new(1),
        }
    }

    fn live(&self) -> Arc<Vec<String>> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
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
    /// The node that owns `conv`, when it is not this one.
    pub(super) fn owner_elsewhere(&self, conv: ConversationId) -> Option<String> {
        let delivery = &self.deps.delivery;
        if !delivery.bus().is_distributed() {
            return None;
        }
        let live = self.cluster.live();
        match ownership::owner(conv, &live) {
            Some(owner) if owner != delivery.node_id() => Some(owner.to_owned()),
            _ => None,
        }
    }

    /// Sends `request` to the owner node; its answer will come back to `reply`.
    pub(super) fn forward(
        &self,
        owner: &str,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        if !self.deps.delivery.bus().is_reachable() {
            metrics::counter!("chat_bus_refused_total").increment(1);
            return Err(Rejection::unavailable());
        }
        let corr = match reply.into_port() {
            Some(port) => {
                let corr = self.cluster.next_corr.fetch_add(1, Ordering::Relaxed);
                let sent = (port, owner.to_owned(), Instant::now());
                self.cluster.pending.insert(corr, sent);
                corr
            }
            None => 0,
        };
        let message: NodeWire = Wire::Request {
            from: self.deps.delivery.node_id().to_owned(),
            corr,
            conv,
            request,
        };
        self.deps.delivery.bus().send(owner, wire::encode(&message));
        metrics::counter!("chat_bus_publishes_total", "kind" => "request").increment(1);
        Ok(())
    }

    /// Handles one message from the bus.
    pub fn on_bus_message(&self, bytes: &[u8]) {
        let message: NodeWire = match rmp_serde::from_slice(bytes) {
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
            Wire::Hello { node, incarnation } if node != me => {
                let hello = LiveNode {
                    id: node,
                    incarnation,
                };
                let restarted = self
                    .cluster
                    .note_incarnations(std::slice::from_ref(&hello), false);
                let mut live = (*self.cluster.live()).clone();
                live.push(hello.id);
                self.update_live(live, restarted);
            }
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
            Wire::Reply { corr, answer } => {
                if let Some((_, (port, _, _))) = self.cluster.pending.remove(&corr) {
                    let _ = port.send(answer);
                }
            }
        }
    }

    /// Serves a request another node sent to this owner, and sends the answer back.
    fn serve_remote(
        &self,
        from: String,
        corr: u64,
        conv: ConversationId,
        request: ConversationRequest,
    ) {
        if corr == 0 {
            let _ = self.tell_local(conv, request, Reply::nobody());
            return;
        }
        let (tx, rx) = oneshot::channel();
        let asked = self.tell_local(conv, request, Reply::to(RpcReplyPort::from(tx)));
        let bus = self.deps.delivery.bus().clone();
        self.deps.tasks.spawn(async move {
            let answer = match asked {
                Err(r) => Err(r),
                Ok(()) => match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) | Err(_) => Err(Rejection::unavailable()),
                },
            };
            let reply: NodeWire = Wire::Reply { corr, answer };
            bus.send(&from, wire::encode(&reply));
            metrics::counter!("chat_bus_publishes_total", "kind" => "reply").increment(1);
        });
    }

    /// This process's incarnation, for the bus to carry in its heartbeat.
    pub fn incarnation(&self) -> u64 {
        self.cluster.incarnation
    }

    /// The bus's membership says these nodes are alive now. Users of nodes that left go offline;
    /// nodes that joined or restarted hear who is connected here; conversations no longer owned
    /// here stop (their new owner loads them from the database).
    pub fn set_live_nodes(&self, nodes: Vec<LiveNode>) {
        let restarted = self.cluster.note_incarnations(&nodes, true);
        self.update_live(nodes.into_iter().map(|n| n.id).collect(), restarted);
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
        self.sweep_pending();
        let old = self.cluster.live();
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
            self.fail_pending(|owner| owner == gone);
        }
        for node in &restarted {
            tracing::info!(node = %node, "a node restarted under its own name");
            // The old process will not answer. Its users need no forgetting here: the new one
            // sent its roster when it joined, replacing them.
            self.fail_pending(|owner| owner == node);
        }
        let joined: Vec<&String> = nodes
            .iter()
            .filter(|n| (!old.contains(n) || restarted.contains(n)) && **n != me)
            .collect();
        if !joined.is_empty() {
            let roster: NodeWire = Wire::Roster {
                node: me.clone(),
                users: delivery.presence.local_users(),
            };
            let roster = wire::encode(&roster);
            for node in joined {
                delivery.bus().send(node, roster.clone());
            }
        }
        match self.cluster.live.write() {
            Ok(mut live) => *live = Arc::new(nodes.clone()),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(nodes.clone()),
        }
        for (conv, actor) in self.conversations.entries() {
            if ownership::owner(conv, &nodes) != Some(me.as_str()) {
                self.conversations.forget(&conv, actor.get_id());
                actor.stop(Some("no longer owned here".to_owned()));
            }
        }
    }

    /// Tells every node who is connected here, replacing what they knew: after the bus lost
    /// messages (its connection broke), arrivals and departures may have gone unheard.
    pub fn resync(&self) {
        let delivery = &self.deps.delivery;
        if delivery.bus().is_distributed() {
            let roster: NodeWire = Wire::Roster {
                node: delivery.node_id().to_owned(),
                users: delivery.presence.local_users(),
            };
            delivery.bus().broadcast(wire::encode(&roster));
        }
    }

    /// Tells every node that `id`'s profile changed (the user service told this one).
    pub(super) fn tell_everyone_profile_changed(&self, id: UserId) {
        let delivery = &self.deps.delivery;
        if delivery.bus().is_distributed() {
            let news: NodeWire = Wire::ProfileChanged { id };
            delivery.bus().broadcast(wire::encode(&news));
        }
    }

    /// Tells the other nodes this one has joined (after its first heartbeat).
    pub fn say_hello(&self) {
        let delivery = &self.deps.delivery;
        if delivery.bus().is_distributed() {
            let hello: NodeWire = Wire::Hello {
                node: delivery.node_id().to_owned(),
                incarnation: self.cluster.incarnation,
            };
            delivery.bus().broadcast(wire::encode(&hello));
        }
    }

    /// The bus lost its connection: requests waiting for an owner elsewhere will not hear back
    /// (their message or its answer is lost), so they are answered `unavailable` now rather
    /// than at their deadline.
    pub fn bus_lost(&self) {
        self.fail_pending(|_| true);
    }

    /// Answers `unavailable` to the requests waiting for an owner that `which` picks.
    fn fail_pending(&self, which: impl Fn(&str) -> bool) {
        let waiting: Vec<u64> = self
            .cluster
            .pending
            .iter()
            .filter(|e| which(&e.value().1))
            .map(|e| *e.key())
            .collect();
        for corr in waiting {
            if let Some((_, (port, _, _))) = self.cluster.pending.remove(&corr) {
                let _ = port.send(Err(Rejection::unavailable()));
            }
        }
    }

    /// Forgets requests whose answer never came (the asker answered `unavailable` already).
    fn sweep_pending(&self) {
        let too_old = REQUEST_TIMEOUT + Duration::from_secs(1);
        self.cluster
            .pending
            .retain(|_, (_, _, sent)| sent.elapsed() < too_old);
    }
}
