//! One actor per connected user per node: holds that user's connections here and forwards pushes
//! to them in order. It stops when the last connection detaches, which makes the user offline.

pub mod outbound;
pub mod presence;

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ids::{SessionId, UserId};
use crate::node::NodeDeps;
use crate::protocol::SharedFrame;
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
    /// A push for every connection but `except`.
    Deliver(Arc<SharedFrame>, Option<SessionId>),
    /// A push for one connection.
    DeliverTo(SessionId, Arc<SharedFrame>),
}

/// The user's connections on this node.
pub struct UserState {
    user: UserId,
    sessions: Vec<Outbound>,
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
                state.sessions.push(*outbound);
                let _ = reply.send(());
            }
            UserMessage::Detach(session) => {
                state.sessions.retain(|s| s.session != session);
                if state.sessions.is_empty() {
                    // Leave the map first, so that a new connection spawns a fresh actor instead
                    // of attaching to one that is stopping.
                    self.deps.users.forget(&state.user, myself.get_id());
                    myself.stop(None);
                }
            }
            UserMessage::Deliver(frame, except) => {
                for s in &state.sessions {
                    if Some(s.session) != except {
                        s.push(&frame);
                    }
                }
            }
            UserMessage::DeliverTo(session, frame) => {
                if let Some(s) = state.sessions.iter().find(|s| s.session == session) {
                    s.push(&frame);
                }
            }
        }
        Ok(())
    }
}
