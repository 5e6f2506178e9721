//! What a push needs: the connection queues of the users connected here, their presence, and the
//! bus to the other nodes.
//!
//! Conversation and user actors reach each other's users only through this, never through the
//! node: a push goes straight into the recipients' bounded queues (no actor hop), and leaves the
//! process on the bus when other nodes may hold connections. It decides nothing: who gets a push
//! is the caller's business.

pub mod outbound;
pub mod presence;

use std::sync::Arc;

use dashmap::DashMap;

use crate::ids::{SessionId, UserId};
use crate::ports::{Bus, Envelope};
use crate::protocol::SharedFrame;
pub use outbound::Outbound;
use presence::PresenceBoard;

/// The node's delivery: sockets, presence, bus.
pub struct Delivery {
    /// Each connected user's connection queues here. Changed only by that user's actor (attach,
    /// detach); read by whoever delivers (the guard is held for the non-blocking pushes only).
    sockets: DashMap<UserId, Vec<Outbound>>,
    /// Who is online here, and who watches them.
    pub presence: PresenceBoard,
    /// Pushes to other nodes.
    bus: Arc<dyn Bus>,
}

impl Delivery {
    /// Delivery over `bus`, with nobody connected yet.
    pub fn new(bus: Arc<dyn Bus>) -> Delivery {
        Delivery {
            sockets: DashMap::new(),
            presence: PresenceBoard::default(),
            bus,
        }
    }

    /// Sends a push to every connection of `user` but `except`, here and, in a cluster, elsewhere.
    pub fn deliver(&self, user: UserId, frame: &Arc<SharedFrame>, except: Option<SessionId>) {
        self.push_local(user, frame, |s| Some(s) != except);
        if self.bus.is_distributed() {
            self.bus.publish(Envelope {
                user,
                only: None,
                except,
                frame: frame.clone(),
            });
        }
    }

    /// Delivers a push that came from another node to this node's connections.
    pub fn deliver_local(&self, envelope: Envelope) {
        let (only, except) = (envelope.only, envelope.except);
        self.push_local(envelope.user, &envelope.frame, |s| {
            only.is_none_or(|o| o == s) && Some(s) != except
        });
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
}
