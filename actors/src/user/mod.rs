//! One actor per connected user per node: owns that user's connections here (it alone attaches
//! and detaches them in the node's [`Delivery`], where pushes go straight into their bounded
//! queues) and their presence. It stops when the last connection detaches: the user is offline.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::delivery::{Delivery, Outbound};
use crate::directory::Directory;
use crate::ids::{SessionId, UserId};

/// The user actor; its dependencies are read-only.
pub struct UserActor {
    /// Sockets and presence.
    pub delivery: Arc<Delivery>,
    /// The node's map of user actors, left before stopping.
    pub directory: Arc<dyn Directory<UserId>>,
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

impl Actor for UserActor {
    type Msg = UserMessage;
    type State = UserState;
    type Arguments = UserId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        user: UserId,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.delivery.user_arrived(user, myself.get_id());
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
        self.directory.leave(&state.user, myself.get_id());
        self.delivery.detach(state.user, &state.sessions);
        self.delivery.user_left(state.user, myself.get_id());
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
                self.delivery.attach(*outbound);
                let _ = reply.send(());
            }
            UserMessage::Detach(session) => {
                state.sessions.retain(|s| *s != session);
                self.delivery.detach(state.user, &[session]);
                if state.sessions.is_empty() {
                    // Leave the map first, so that a new connection spawns a fresh actor instead
                    // of attaching to one that is stopping.
                    self.directory.leave(&state.user, myself.get_id());
                    myself.stop(None);
                }
            }
        }
        Ok(())
    }
}
