//! Routing: which node owns a conversation, and how a request reaches its owner's actor.
//!
//! Every node hashes the same live set (rendezvous, [`crate::ownership`]) and so names the same
//! owner. A request for a conversation owned here goes to its actor (spawned when needed); one
//! owned elsewhere travels there on the bus with a correlation number, and the answer comes back
//! on this node's channel to the port waiting in the correlation table. Nothing waits past
//! [`REQUEST_TIMEOUT`]: an owner that dies or restarts, or a bus that goes away, fails what was
//! asked of it at once (`unavailable`; a retry with the same `mid` is safe). Two owners for a
//! moment (live sets that disagree while a node joins or dies) are fenced by the database: the
//! loser's commit fails `SeqTaken`, and it reloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

use super::deadline::{Answer, REQUEST_TIMEOUT, answer};
use super::state::{Node, Router};
use crate::conversation::ReplyPort;
use crate::conversation::{ConversationMessage, ConversationReply, ConversationRequest, Reply};
use crate::delivery::wire::{self, Wire};
use crate::ids::ConversationId;
use crate::ownership;
use crate::protocol::Rejection;

/// What crosses the bus, with this crate's request and answer types.
pub(super) type NodeWire = Wire<ConversationRequest, Answer>;

impl Router {
    /// A cluster of one: `node_id`, until the bus says otherwise.
    pub(super) fn alone(node_id: &str) -> Router {
        metrics::gauge!("chat_cluster_live_nodes").set(1.0);
        Router {
            live: RwLock::new(Arc::new(vec![node_id.to_owned()])),
            pending: DashMap::new(),
            next_corr: AtomicU64::new(1),
        }
    }

    /// The live nodes, sorted.
    pub(super) fn live(&self) -> Arc<Vec<String>> {
        // A poisoned lock only means a writer panicked mid-swap of an Arc: the value is whole.
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_live(&self, nodes: Arc<Vec<String>>) {
        metrics::gauge!("chat_cluster_live_nodes").set(nodes.len() as f64);
        match self.live.write() {
            Ok(mut live) => *live = nodes,
            Err(poisoned) => *poisoned.into_inner() = nodes,
        }
    }

    /// Files `port` as waiting for `owner`'s answer; the number the answer will carry.
    fn wait_for(&self, port: ReplyPort, owner: &str) -> u64 {
        let corr = self.next_corr.fetch_add(1, Ordering::Relaxed);
        self.pending
            .insert(corr, (port, owner.to_owned(), Instant::now()));
        corr
    }

    /// An answer came back: it goes to the port waiting for `corr` (none: it came too late).
    pub(super) fn answered(&self, corr: u64, answer: Answer) {
        if let Some((_, (port, _, _))) = self.pending.remove(&corr) {
            let _ = port.send(answer);
        }
    }

    /// Answers `unavailable` to the requests waiting for an owner that `which` picks.
    pub(super) fn fail_pending(&self, which: impl Fn(&str) -> bool) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|e| which(&e.value().1))
            .map(|e| *e.key())
            .collect();
        for corr in waiting {
            self.answered(corr, Err(Rejection::unavailable()));
        }
    }

    /// Forgets requests whose answer never came (the asker answered `unavailable` already).
    pub(super) fn sweep_pending(&self) {
        let too_old = REQUEST_TIMEOUT + Duration::from_secs(1);
        self.pending
            .retain(|_, (_, _, sent)| sent.elapsed() < too_old);
    }
}

impl Node {
    /// The one way to a conversation's owner: hands `request` to its actor here (spawned when
    /// needed; a dead one is replaced once) or sends it to the owner node, the answer going to
    /// `reply`.
    pub(super) fn tell(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        match self.owner_elsewhere(conv) {
            Some(owner) => self.forward(&owner, conv, request, reply),
            None => self.tell_local(conv, request, reply),
        }
    }

    /// [`Node::tell`], then waits for the owner's answer.
    pub(super) async fn ask(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
    ) -> Result<ConversationReply, Rejection> {
        let (tx, rx) = oneshot::channel();
        self.tell(conv, request, Reply::to(RpcReplyPort::from(tx)))?;
        answer(rx).await
    }

    /// The node that owns `conv`, when it is not this one.
    fn owner_elsewhere(&self, conv: ConversationId) -> Option<String> {
        let delivery = &self.deps.delivery;
        if !delivery.bus().is_distributed() {
            return None;
        }
        let live = self.router.live();
        match ownership::owner(conv, &live) {
            Some(owner) if owner != delivery.node_id() => Some(owner.to_owned()),
            _ => None,
        }
    }

    /// Hands `request` to this node's actor for `conv`.
    fn tell_local(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        let mut msg = ConversationMessage::Request(Box::new(request), reply);
        for _ in 0..2 {
            let actor: ActorRef<ConversationMessage> = self
                .conversation(conv)
                .map_err(|_| Rejection::unavailable())?;
            match actor.cast(msg) {
                Ok(()) => return Ok(()),
                Err(MessagingErr::SendErr(back)) => {
                    self.conversations.forget_actor(actor.get_id());
                    msg = back;
                }
                Err(_) => return Err(Rejection::unavailable()),
            }
        }
        Err(Rejection::unavailable())
    }

    /// Sends `request` to the owner node; its answer will come back to `reply`.
    fn forward(
        &self,
        owner: &str,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        if !self.deps.delivery.bus().reaches(owner) {
            metrics::counter!("chat_bus_refused_total").increment(1);
            return Err(Rejection::unavailable());
        }
        let corr = match reply.into_port() {
            Some(port) => self.router.wait_for(port, owner),
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

    /// Serves a request another node sent to this owner, and sends the answer back.
    pub(super) fn serve_remote(
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
                Ok(()) => answer(rx).await,
            };
            let reply: NodeWire = Wire::Reply { corr, answer };
            bus.send(&from, wire::encode(&reply));
            metrics::counter!("chat_bus_publishes_total", "kind" => "reply").increment(1);
        });
    }

    /// The live set is now `nodes` (sorted, this node among them): the conversations no longer
    /// owned here stop (their new owner loads them from the database).
    pub(super) fn reroute(&self, nodes: Arc<Vec<String>>) {
        self.router.set_live(nodes.clone());
        let me = self.deps.delivery.node_id();
        for (conv, actor) in self.conversations.entries() {
            if ownership::owner(conv, &nodes) != Some(me) {
                self.conversations.forget(&conv, actor.get_id());
                actor.stop(Some("no longer owned here".to_owned()));
            }
        }
    }
}
