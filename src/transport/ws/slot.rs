//! Connection slots: a WebSocket holds one from its upgrade to its end, counted against the
//! user's cap on this node (429) and the node's (503); dropping it gives the slot back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use chat_actors::ids::UserId;

use crate::transport::state::Transport;

/// One of a user's connection slots on this node; given back when dropped.
pub struct Slot {
    t: Arc<Transport>,
    user: UserId,
}

/// Why no slot was given.
pub enum Full {
    /// The user has all their connections open here.
    User,
    /// The node holds as many connections as it is configured for.
    Node,
}

impl Slot {
    pub fn take(t: &Arc<Transport>, user: UserId) -> Result<Slot, Full> {
        if t.open.fetch_add(1, Ordering::Relaxed) >= t.ws.max_connections {
            t.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Full::Node);
        }
        let mut count = t.per_user.entry(user).or_insert(0);
        if *count >= t.ws.max_connections_per_user {
            drop(count);
            t.open.fetch_sub(1, Ordering::Relaxed);
            t.per_user.remove_if(&user, |_, c| *c == 0);
            return Err(Full::User);
        }
        *count += 1;
        Ok(Slot { t: t.clone(), user })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.t.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut count) = self.t.per_user.get_mut(&self.user) {
            *count = count.saturating_sub(1);
        }
        self.t.per_user.remove_if(&self.user, |_, c| *c == 0);
    }
}
