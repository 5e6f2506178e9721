//! A node's connections: attaching a new one to its user's actor, detaching a closed one, and
//! what a connection asks of presence (a status, a watch list). A business's presence is its
//! agents': a node learns them in the background when someone looks.

use ractor::{MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

use super::deadline::timed;
use super::state::{Caller, Node};
use crate::delivery::Outbound;
use crate::ids::{SessionId, UserId};
use crate::protocol::{PresenceItem, Rejection};
use crate::rules::limits;
use crate::user::UserMessage;

impl Node {
    /// The presence of each of `users` (at most 100).
    pub fn presence(
        &self,
        caller: Caller,
        users: &[UserId],
    ) -> Result<Vec<PresenceItem>, Rejection> {
        self.budgets.admit_now(caller.user)?;
        if users.len() > limits::MAX_PRESENCE_USERS {
            return Err(Rejection::bad_request(format!(
                "at most {} users per presence request",
                limits::MAX_PRESENCE_USERS
            )));
        }
        self.learn_businesses(users);
        Ok(users
            .iter()
            .map(|u| self.deps.delivery.presence.status(*u))
            .collect())
    }

    /// Learns in the background which of `ids` are businesses whose agents this node does not
    /// know, and their agents. A business's presence is its agents': a node learns them when
    /// a chat with the business is created or transferred there, so without this a node that
    /// did neither (another node did, or this one restarted) would show the business offline
    /// to its watchers. The watchers hear the change once the agents are known.
    fn learn_businesses(&self, ids: &[UserId]) {
        let presence = &self.deps.delivery.presence;
        let unknown: Vec<UserId> = ids
            .iter()
            .copied()
            .filter(|id| presence.business_unknown(*id))
            .collect();
        if unknown.is_empty() {
            return;
        }
        let node = self.clone();
        self.deps.tasks.spawn(async move {
            let Ok(Ok(businesses)) = timed(node.deps.store.businesses_among(&unknown)).await else {
                return; // the database is away: the next watch asks again
            };
            let others = unknown.iter().filter(|id| !businesses.contains(id));
            node.deps.delivery.presence.not_businesses(others.copied());
            for business in businesses {
                let _ = node.agents_of(business).await;
            }
        });
    }

    /// Replaces a connection's watch list (at most 200 users).
    pub fn watch(
        &self,
        watcher: &Outbound,
        old: &[UserId],
        new: &[UserId],
    ) -> Result<(), Rejection> {
        self.budgets.admit_now(watcher.user)?;
        if new.len() > limits::MAX_WATCH_USERS {
            return Err(Rejection::bad_request(format!(
                "at most {} users in a watch list",
                limits::MAX_WATCH_USERS
            )));
        }
        self.deps.delivery.presence.watch(watcher, old, new);
        self.learn_businesses(new);
        Ok(())
    }

    /// Forgets a closed connection's watch list.
    pub fn unwatch(&self, session: SessionId, users: &[UserId]) {
        self.deps.delivery.presence.unwatch(session, users);
    }

    /// Attaches a new connection to its user's actor here (the user is online from now on).
    pub async fn connect(&self, outbound: Outbound) -> Result<(), Rejection> {
        let user = outbound.user;
        let mut outbound = Box::new(outbound);
        for _ in 0..3 {
            let actor = self.user(user).map_err(|_| Rejection::unavailable())?;
            let (tx, rx) = oneshot::channel();
            match actor.cast(UserMessage::Attach(outbound, RpcReplyPort::from(tx))) {
                Ok(()) => {
                    if rx.await.is_ok() {
                        return Ok(());
                    }
                    // The actor stopped with our attach queued; a new one takes it. We lost the
                    // queue's sender with it, so the connection must be opened anew.
                    return Err(Rejection::unavailable());
                }
                Err(MessagingErr::SendErr(UserMessage::Attach(back, _))) => {
                    self.users.forget_actor(actor.get_id());
                    outbound = back;
                }
                Err(_) => return Err(Rejection::unavailable()),
            }
        }
        Err(Rejection::unavailable())
    }

    /// Detaches a closed connection.
    pub fn disconnect(&self, user: UserId, session: SessionId) {
        if let Some(actor) = self.users.get(&user) {
            let _ = actor.cast(UserMessage::Detach(session));
        }
    }
}
