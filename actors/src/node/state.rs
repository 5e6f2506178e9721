//! What a running node holds, and who is asking it: the types shared by the files that give the
//! node its operations (routing, the cluster's state, the typed operations, connections), at the
//! bottom of the folder.

use std::sync::Arc;

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use super::budget::Budgets;
use super::cluster::Cluster;
use super::registry::ActorMap;
use super::route::Router;
use crate::conversation::{ConversationDeps, ConversationMessage};
use crate::ids::{ConversationId, SessionId, UserId};
use crate::user::UserMessage;

/// A running node: what transports hold to serve clients.
#[derive(Clone)]
pub struct Node {
    /// What conversation actors share (the store and profiles are reached through it too).
    pub(super) deps: Arc<ConversationDeps>,
    /// Live user actors.
    pub(super) users: Arc<ActorMap<UserId, UserMessage>>,
    /// Live conversation actors.
    pub(super) conversations: Arc<ActorMap<ConversationId, ConversationMessage>>,
    pub(super) supervisor: ActorRef<()>,
    pub(super) budgets: Arc<Budgets>,
    /// Cancelled by [`Node::stop`]: ends the node's own background loops.
    pub(super) stopping: CancellationToken,
    /// Which node owns what, and the requests waiting for owners elsewhere.
    pub(super) router: Arc<Router>,
    /// Which start of each node this one has heard of.
    pub(super) cluster: Arc<Cluster>,
}

/// Who is asking: the token's user and, over WebSocket, the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated user.
    pub user: UserId,
    /// The connection, when the request came over WebSocket.
    pub session: Option<SessionId>,
}
