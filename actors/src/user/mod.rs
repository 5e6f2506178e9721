//! One actor per connected user per node: owns that user's connections here (it alone adds and
//! removes them in the node's socket list, where deliveries push straight into their bounded
//! queues) and their presence. It stops when the last connection detaches: the user is offline.

pub mod outbound;
pub mod presence;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ids::{SessionId, UserId};
use crate::node::NodeDeps;
pub use outbound::Outbound;

/// The user actor; its dependencies are read-only.
pub struct UserActor {
    /// The node's shared parts.
    pub deps: Arc<NodeDeps>,
}

/// What a user actor is asked. Kept small: every idle actor pays for its mailbox blocks.
pub enum UserMessage {
    /// A connection of this user opened here; the reply says it is attached.
    Attach(Box<Outbound>, RpcReplyPort<()>),
    /// A connection closed.
    Detach(SessionId),
}

/// The user's connections on this node.
pub struct UserState {
    user: UserId,
    sessions: Vec<SessionId>,
}

impl UserActor {
    /// Takes `sessions` out of the node's socket list (only those: a newer actor of the same
    /// user may have added its own).
    fn forget_sessions(&self, user: UserId, sessions: &[SessionId]) {
        if let Some(mut list) = self.deps.sockets.get_mut(&user) {
            list.retain(|o| !sessions.contains(&o.session));
        }
        self.deps
            .sockets
            .remove_if(&user, |_, list| list.is_empty());
    }
}

impl Actor for UserActor {
    type Msg = UserMessage;
    type State = UserState;
    type Arguments = UserId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        user: UserId,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.deps.presence.set_online(user, myself.get_id());
        Ok(UserState {
            user,
            sessions: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.deps.users.forget(&state.user, myself.get_id());
        self.forget_sessions(state.user, &state.sessions);
        self.deps.presence.set_offline(state.user, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            UserMessage::Attach(outbound, reply) => {
                state.sessions.push(outbound.session);
                self.deps
                    .sockets
                    .entry(state.user)
                    .or_default()
                    .push(*outbound);
                let _ = reply.send(());
            }
            UserMessage::Detach(session) => {
                state.sessions.retain(|s| *s != session);
                self.forget_sessions(state.user, &[session]);
                if state.sessions.is_empty() {
                    // Leave the map first, so that a new connection spawns a fresh actor instead
                    // of attaching to one that is stopping.
                    self.deps.users.forget(&state.user, myself.get_id());
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}
