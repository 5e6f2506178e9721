//! The node: its supervisor, its live actors, and the typed operations transports call.
//!
//! ```text
//! NodeSupervisor                    (one per node; never stops because a child did)
//! ├── ConversationActor(c)          one per active conversation owned here; stops when idle
//! │     └─ hands batches to the Writer port, fans out through NodeDeps::deliver
//! └── UserActor(u)                  one per user connected here; stops with its last connection
//!       └─ Outbound queues          one bounded queue per connection, drained by its socket task;
//!                                   listed in NodeDeps::sockets, where deliveries push directly
//! ```
//!
//! A crashed child is forgotten and rebuilt from the database by the next message for it. The
//! maps from key to actor live here ([`registry::ActorMap`]), not in ractor's global registry.

pub mod budget;
pub mod handle;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::conversation::{ConversationActor, ConversationMessage, view};
use crate::ids::{ConversationId, SessionId, UserId};
use crate::ports::{Bus, ConversationRecord, Envelope, Profiles, Store, Writer};
use crate::protocol::{ServerFrame, SharedFrame};
use crate::rules::Limits;
use crate::user::presence::PresenceBoard;
use crate::user::{Outbound, UserActor, UserMessage};
use budget::{BudgetConfig, Budgets};
use dashmap::DashMap;
pub use handle::Caller;
use registry::ActorMap;

/// What a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name in the cluster (`hello.node`).
    pub node_id: String,
    /// Size and body limits.
    pub limits: Limits,
    /// Per-user rates and in-flight budget.
    pub budgets: BudgetConfig,
}

/// The node's shared parts, read-only once built; every actor holds an `Arc` of it.
pub struct NodeDeps {
    /// This node's name.
    pub node_id: String,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The batching writer.
    pub writer: Arc<dyn Writer>,
    /// Pushes to other nodes.
    pub bus: Arc<dyn Bus>,
    /// Names and avatars.
    pub profiles: Arc<dyn Profiles>,
    /// Size limits.
    pub limits: Limits,
    /// Who is online here, and who watches them.
    pub presence: PresenceBoard,
    /// Users connected here.
    pub users: ActorMap<UserId, UserMessage>,
    /// Each connected user's connection queues here. Written only by that user's actor
    /// (attach, detach), read by whoever delivers: a push goes straight into the bounded queues,
    /// with no actor hop on the way (the guard is held for the non-blocking pushes only).
    pub sockets: DashMap<UserId, Vec<Outbound>>,
    /// Conversations live here.
    pub conversations: ActorMap<ConversationId, ConversationMessage>,
}

impl NodeDeps {
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

    /// Pushes `conversation` to every member, each seeing their own unread count; `except` is
    /// the connection whose request caused it (it gets the reply instead).
    pub async fn push_conversation(&self, record: &ConversationRecord, except: Option<SessionId>) {
        let profiles = view::profiles_for(self.profiles.as_ref(), [record]).await;
        for m in &record.members {
            let (last, unread) = match self
                .store
                .last_message_and_unread(record.id, m.user, m.last_read)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(conv = %record.id, error = %e, "conversation push skipped");
                    return;
                }
            };
            let object = view::object(record, last, unread, &profiles);
            let frame = Arc::new(SharedFrame::new(ServerFrame::Conversation {
                id: None,
                conversation: Box::new(object),
            }));
            self.deliver(m.user, &frame, except);
        }
    }
}

/// A running node: what transports hold to serve clients.
#[derive(Clone)]
pub struct Node {
    deps: Arc<NodeDeps>,
    supervisor: ActorRef<()>,
    budgets: Arc<Budgets>,
}

impl Node {
    /// Starts the node's supervisor.
    pub async fn start(
        config: NodeConfig,
        store: Arc<dyn Store>,
        writer: Arc<dyn Writer>,
        bus: Arc<dyn Bus>,
        profiles: Arc<dyn Profiles>,
    ) -> Result<Node, SpawnErr> {
        let deps = Arc::new(NodeDeps {
            node_id: config.node_id,
            store,
            writer,
            bus,
            profiles,
            limits: config.limits,
            presence: PresenceBoard::default(),
            users: ActorMap::default(),
            sockets: DashMap::new(),
            conversations: ActorMap::default(),
        });
        let (supervisor, _) = Actor::spawn(None, NodeSupervisor { deps: deps.clone() }, ()).await?;
        let budgets = Arc::new(Budgets::new(&config.budgets));
        // Keyed limiters keep every key forever unless told to forget the idle ones.
        let weak = Arc::downgrade(&budgets);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let Some(budgets) = weak.upgrade() else { break };
                budgets.forget_idle();
            }
        });
        Ok(Node {
            deps,
            supervisor,
            budgets,
        })
    }

    /// The shared parts (for adapters that deliver into the node, such as a bus subscriber).
    pub fn deps(&self) -> &Arc<NodeDeps> {
        &self.deps
    }

    /// Stops every actor and the supervisor, waiting for them. Batches already handed to the
    /// writer still commit: the writer drains its queue on its own.
    pub async fn stop(&self) {
        let _ = self
            .supervisor
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }

    /// How many users are connected and conversations live here (for metrics).
    pub fn live_counts(&self) -> (usize, usize) {
        (self.deps.users.len(), self.deps.conversations.len())
    }

    fn supervisor_cell(&self) -> ActorCell {
        self.supervisor.get_cell()
    }

    pub(crate) fn conversation(
        &self,
        conv: ConversationId,
    ) -> Result<ActorRef<ConversationMessage>, SpawnErr> {
        let sup = self.supervisor_cell();
        let deps = self.deps.clone();
        self.deps.conversations.get_or_spawn(conv, move || {
            ractor::ActorRuntime::spawn_linked_instant(None, ConversationActor { deps }, conv, sup)
                .map(|(actor, _)| actor)
        })
    }

    pub(crate) fn user(&self, user: UserId) -> Result<ActorRef<UserMessage>, SpawnErr> {
        let sup = self.supervisor_cell();
        let deps = self.deps.clone();
        self.deps.users.get_or_spawn(user, move || {
            ractor::ActorRuntime::spawn_linked_instant(None, UserActor { deps }, user, sup)
                .map(|(actor, _)| actor)
        })
    }
}

/// The per-node supervisor of conversation and user actors.
struct NodeSupervisor {
    deps: Arc<NodeDeps>,
}

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(())
    }

    /// The default would stop the supervisor whenever any child ends, and children end on
    /// purpose all the time (idle conversations, users who disconnect).
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = %cell.get_id(), error = %err, "actor failed; it is rebuilt on next use");
                metrics::counter!("chat_actor_failures_total").increment(1);
                self.deps.conversations.forget_actor(cell.get_id());
                self.deps.users.forget_actor(cell.get_id());
            }
            SupervisionEvent::ActorTerminated(..)
            | SupervisionEvent::ActorStarted(_)
            | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}
