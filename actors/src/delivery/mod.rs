//! What a push needs: the connection queues of the users connected here, their presence, and the
//! bus to the other nodes.
//!
//! Conversation and user actors reach each other's users only through this, never through the
//! node: a push goes straight into the recipients' bounded queues (no actor hop), and leaves the
//! process on the bus when other nodes may hold connections. It decides nothing: who gets a push
//! is the caller's business.

pub mod outbound;
pub mod presence;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use ractor::ActorId;
use serde::Serialize;

use crate::ids::{SessionId, UserId};
use crate::ports::Bus;
use crate::protocol::{Format, SharedFrame};
pub use outbound::Outbound;
use presence::PresenceBoard;
use wire::{Plain, Target, Wire};

/// The node's delivery: sockets, presence, bus.
pub struct Delivery {
    /// Each connected user's connection queues here. Changed only by that user's actor (attach,
    /// detach); read by whoever delivers (the guard is held for the non-blocking pushes only).
    sockets: DashMap<UserId, Vec<Outbound>>,
    /// Who is online (here and on the other nodes), and who watches them.
    pub presence: PresenceBoard,
    /// Messages to other nodes.
    bus: Arc<dyn Bus>,
    /// This node's name on the bus.
    node_id: String,
    /// `chat_bus_publishes_total{kind="push"}`, registered once: the macro builds and looks up
    /// its key on every call, and a fan-out to other nodes counts every publish.
    push_publishes: metrics::Counter,
}

impl Delivery {
    /// Delivery over `bus` for the node `node_id`, with nobody connected yet.
    pub fn new(bus: Arc<dyn Bus>, node_id: String) -> Delivery {
        Delivery {
            sockets: DashMap::new(),
            presence: PresenceBoard::default(),
            bus,
            node_id,
            push_publishes: metrics::counter!("chat_bus_publishes_total", "kind" => "push"),
        }
    }

    /// This node's name.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The bus to the other nodes.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Sends a push to every connection of `user` but `except`, here and on other nodes.
    pub fn deliver(&self, user: UserId, frame: &Arc<SharedFrame>, except: Option<SessionId>) {
        self.deliver_all([Target { user, except }], frame);
    }

    /// Sends one push to many users: their connections here directly, and one bus message per
    /// other node that has any of them (the frame encoded once), none when all are local.
    pub fn deliver_all(&self, targets: impl IntoIterator<Item = Target>, frame: &Arc<SharedFrame>) {
        let distributed = self.bus.is_distributed();
        // Node names are the presence board's shared copies: grouping costs no string copy.
        let mut remote: Vec<(Arc<str>, Vec<Target>)> = Vec::new();
        for t in targets {
            self.push_local(t.user, frame, |s| Some(s) != t.except);
            if !distributed {
                continue;
            }
            self.presence.for_each_remote_node(t.user, |node| {
                match remote.iter_mut().find(|(n, _)| n == node) {
                    Some((_, list)) => list.push(t),
                    None => remote.push((node.clone(), vec![t])),
                }
            });
        }
        for (node, targets) in remote {
            let push: Plain = Wire::Push {
                targets,
                frame: frame.bytes(Format::MsgPack),
            };
            self.bus.send(&node, wire::encode(&push));
            self.push_publishes.increment(1);
        }
    }

    /// Delivers a push that came from another node to this node's connections.
    pub fn deliver_from_bus(&self, targets: &[Target], frame: Bytes) {
        let frame = Arc::new(SharedFrame::from_msgpack(frame));
        for t in targets {
            self.push_local(t.user, &frame, |s| Some(s) != t.except);
        }
    }

    /// Queues `frame` on each of `user`'s connections here that `wanted` picks.
    fn push_local(
        &self,
        user: UserId,
        frame: &Arc<SharedFrame>,
        wanted: impl Fn(SessionId) -> bool,
    ) {
        if let Some(list) = self.sockets.get(&user) {
            for outbound in list.iter().filter(|o| wanted(o.session)) {
                outbound.push(frame);
            }
        }
    }

    /// Lists a connection of its user (called by the user's actor only).
    pub fn attach(&self, outbound: Outbound) {
        self.sockets
            .entry(outbound.user)
            .or_default()
            .push(outbound);
    }

    /// Takes `sessions` of `user` out of the list (only those: a newer actor of the same user may
    /// have added its own).
    pub fn detach(&self, user: UserId, sessions: &[SessionId]) {
        if let Some(mut list) = self.sockets.get_mut(&user) {
            list.retain(|o| !sessions.contains(&o.session));
        }
        self.sockets.remove_if(&user, |_, list| list.is_empty());
    }

    /// `user`'s actor `actor` started here: they are online, and the other nodes hear of it.
    pub fn user_arrived(&self, user: UserId, actor: ActorId) {
        if self.presence.set_online(user, actor) {
            self.announce(user, true);
        }
    }

    /// `user`'s actor `actor` stopped here.
    pub fn user_left(&self, user: UserId, actor: ActorId) {
        if self.presence.set_offline(user, actor) {
            self.announce(user, false);
        }
    }

    fn announce(&self, user: UserId, online: bool) {
        if !self.bus.is_distributed() {
            return; // nobody to tell: not even the message is built
        }
        let news: Plain = Wire::Presence {
            node: self.node_id.clone(),
            user,
            online,
        };
        self.broadcast(&news, "presence");
    }

    /// Tells every other node `message` (nothing when this node is alone), counted in
    /// `chat_bus_publishes_total` as `kind`.
    pub fn broadcast<Q: Serialize, R: Serialize>(&self, message: &Wire<Q, R>, kind: &'static str) {
        if self.bus.is_distributed() {
            self.bus.broadcast(wire::encode(message));
            metrics::counter!("chat_bus_publishes_total", "kind" => kind).increment(1);
        }
    }
}
