//! What a running node holds, and who is asking it: the types shared by the files that give the
//! node its operations (routing, the cluster's state, the typed operations, connections), at the
//! bottom of the folder. `route.rs` and `cluster.rs` give the router and the cluster's state
//! their methods.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use dashmap::DashMap;

use ractor::ActorRef;
use tokio_util::sync::CancellationToken;

use super::budget::Budgets;
use super::departed::Departed;
use super::registry::ActorMap;
use crate::conversation::{ConversationDeps, ConversationMessage, ReplyPort};
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

/// The live set and the requests waiting for owners elsewhere.
pub(super) struct Router {
    /// The live nodes, sorted (this one included); replaced whole on every change.
    pub(super) live: RwLock<Arc<Vec<String>>>,
    /// Requests sent to owners elsewhere, waiting for their answers: the port, the owner, when.
    pub(super) pending: DashMap<u64, (ReplyPort, String, Instant)>,
    pub(super) next_corr: AtomicU64,
}

/// Which start of each node this one has heard of.
pub(super) struct Cluster {
    /// The number this process drew at start (never 0).
    pub(super) incarnation: u64,
    /// The incarnation last heard of each other live node. Held only for the few lines that
    /// read and replace it, never across an await.
    pub(super) incarnations: Mutex<HashMap<String, u64>>,
    /// Nodes gone from the live set whose users are still held present, for a grace. Held only
    /// for the few lines that read and change it, never across an await.
    pub(super) departed: Mutex<Departed>,
    /// Whether the heartbeat has given this node a live set yet: the nodes in the first one hear
    /// this node's hello and send their rosters unasked.
    pub(super) heard_live_set: AtomicBool,
}
