//! The node: its supervisor, its live actors, and the typed operations transports call.
//!
//! ```text
//! Node                              what transports hold (state.rs): handle.rs's operations,
//!                                   sessions.rs's connections, budgets; route.rs finds owners
//! └── NodeSupervisor                (one per node; never stops because a child did)
//!     ├── ConversationActor(c)      one per active conversation owned here; stops when idle
//!     │     └─ persists through the Writer port, pushes through Delivery
//!     └── UserActor(u)              one per user connected here; stops with its last connection
//!           └─ attaches its connections' Outbound queues in Delivery, where pushes land
//! ```
//!
//! A crashed child is forgotten and rebuilt from the database by the next message for it. The
//! maps from key to actor live here ([`registry::ActorMap`]), not in ractor's global registry;
//! the actors see them only as a [`Directory`] to leave.

pub mod budget;
mod cluster;
mod deadline;
mod departed;
pub mod handle;
mod inbox;
mod overload;
mod registry;
mod route;
mod sessions;
mod state;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conversation::resting::Resting;
use crate::conversation::{ConversationActor, ConversationDeps, ConversationMessage, Timing};
use crate::delivery::Delivery;
use crate::directory::Directory;
use crate::ids::{ConversationId, UserId};
use crate::ports::{Bus, Profiles, Store, Writer};
use crate::rules::Limits;
use crate::user::{UserActor, UserMessage};
use budget::{BudgetConfig, Budgets};

pub use deadline::REQUEST_TIMEOUT;
use registry::ActorMap;

pub use state::{Caller, Node};
use state::{Cluster, Router};

/// What a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name in the cluster (`hello.node`).
    pub node_id: String,
    /// Size and body limits.
    pub limits: Limits,
    /// Per-user rates and in-flight budget.
    pub budgets: BudgetConfig,
    /// How long a conversation's actor stays up unused.
    pub conversation_idle: Duration,
    /// How long the record of a conversation whose actor stopped stays in memory for its next
    /// start (zero: none does).
    pub conversation_rest: Duration,
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
        let users = Arc::new(ActorMap::default());
        let conversations = Arc::new(ActorMap::default());
        let deps = Arc::new(ConversationDeps {
            store,
            writer,
            delivery: Arc::new(Delivery::new(bus, config.node_id.clone())),
            profiles,
            limits: config.limits,
            timing: Timing {
                idle_after: config.conversation_idle,
                ..Timing::default()
            },
            directory: conversations.clone(),
            resting: Resting::new(config.conversation_rest),
            tasks: TaskTracker::new(),
        });
        let supervisor = NodeSupervisor {
            users: users.clone(),
            conversations: conversations.clone(),
        };
        let (supervisor, _) = Actor::spawn(None, supervisor, ()).await?;
        let budgets = Arc::new(Budgets::new(&config.budgets));
        let stopping = CancellationToken::new();
        deps.tasks
            .spawn(budgets.overload.clone().watch(stopping.clone()));
        // Keyed limiters keep every key forever unless told to forget the idle ones, and the
        // records of conversations at rest stay until swept.
        let forgetting = budgets.clone();
        let sweeping = deps.clone();
        let stopped = stopping.clone();
        deps.tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = every.tick() => {
                        forgetting.forget_idle();
                        sweeping.resting.sweep();
                    }
                }
            }
        });
        Ok(Node {
            deps,
            users,
            conversations,
            supervisor,
            budgets,
            stopping,
            router: Arc::new(Router::alone(&config.node_id)),
            cluster: Arc::new(Cluster::new()),
        })
    }

    /// The node's delivery (for adapters that deliver into the node, such as a bus subscriber).
    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.deps.delivery
    }

    /// Stops every actor and the supervisor, then waits (bounded) for the work they handed to
    /// background tasks (read pointers, deletes, pushes), so none outlives the store. Batches
    /// already handed to the writer still commit: the writer drains its queue on its own.
    pub async fn stop(&self) {
        let _ = self
            .supervisor
            .stop_children_and_wait(None, Some(Duration::from_secs(10)))
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        self.stopping.cancel();
        self.deps.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), self.deps.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some background tasks did not finish in time");
        }
    }

    /// How many users are connected and conversations live here (for metrics).
    pub fn live_counts(&self) -> (usize, usize) {
        (self.users.len(), self.conversations.len())
    }

    /// How many conversations rest here without an actor, their records kept (for metrics).
    pub fn resting_count(&self) -> usize {
        self.deps.resting.len()
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
        self.conversations.get_or_spawn(conv, move || {
            ractor::ActorRuntime::spawn_linked_instant(None, ConversationActor { deps }, conv, sup)
                .map(|(actor, _)| actor)
        })
    }

    pub(crate) fn user(&self, user: UserId) -> Result<ActorRef<UserMessage>, SpawnErr> {
        let sup = self.supervisor_cell();
        let actor = UserActor {
            delivery: self.deps.delivery.clone(),
            directory: self.users.clone() as Arc<dyn Directory<UserId>>,
        };
        self.users.get_or_spawn(user, move || {
            ractor::ActorRuntime::spawn_linked_instant(None, actor, user, sup)
                .map(|(actor, _)| actor)
        })
    }
}

/// The per-node supervisor of conversation and user actors.
struct NodeSupervisor {
    users: Arc<ActorMap<UserId, UserMessage>>,
    conversations: Arc<ActorMap<ConversationId, ConversationMessage>>,
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
                self.conversations.forget_actor(cell.get_id());
                self.users.forget_actor(cell.get_id());
            }
            SupervisionEvent::ActorTerminated(..)
            | SupervisionEvent::ActorStarted(_)
            | SupervisionEvent::ProcessGroupChanged(_) => {}
        }
        Ok(())
    }
}
