//! The bus of a cluster over Redis (one server, or a Redis Cluster): a channel per node and one
//! for all (sharded channels on a cluster, so the nodes' traffic spreads over its shards), the
//! live set of nodes as a sorted set of heartbeats stamped with Redis's own clock, and each
//! node's incarnation, so that a node restarted under its own name is told from one that went on.
//!
//! It only carries: sends are queued to publishing tasks (never waiting in an actor), what
//! arrives goes to the core's [`BusInbox`], and the heartbeat tells it which nodes are alive.
//! Pub/sub is at most once; a connection lost (or a shard failed over) is followed by
//! subscribing again, and the core resyncs what may have been lost.

mod health;
mod heartbeat;
mod names;
mod publish;
mod shards;
mod subscribe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_actors::ports::{Bus, BusInbox};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::redis_conn::{RedisConn, RedisConnError, Target, Timeouts};
use health::Health;
use heartbeat::Membership;
use names::Names;
use publish::Destination;
use shards::Shards;
use subscribe::Subscriptions;

/// How long the bus waits to connect and for an answer.
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(2),
};

/// The `Bus` port over Redis.
pub struct RedisBus {
    outgoing: mpsc::UnboundedSender<(Destination, Bytes)>,
    health: Arc<Health>,
}

impl Bus for RedisBus {
    fn is_distributed(&self) -> bool {
        true
    }

    fn send(&self, node: &str, message: Bytes) {
        let _ = self.outgoing.send((Some(node.to_owned()), message));
    }

    fn broadcast(&self, message: Bytes) {
        let _ = self.outgoing.send((None, message));
    }

    fn reaches(&self, node: &str) -> bool {
        self.health.reaches(node)
    }
}

/// What runs the bus: subscriptions, the publishers and the heartbeat.
pub struct RedisLink {
    names: Names,
    membership: Membership,
    health: Arc<Health>,
    subscriptions: Subscriptions,
    /// On a Redis Cluster: which shard serves which slot.
    shards: Option<Arc<Shards>>,
    incoming: mpsc::UnboundedReceiver<redis::PushInfo>,
    outgoing: mpsc::UnboundedReceiver<(Destination, Bytes)>,
}

/// Connects to the Redis `url` names (one server or a cluster) and subscribes to this node's
/// channels. Nothing is delivered until [`RedisLink::run`].
pub async fn connect(
    url: &str,
    prefix: &str,
    node_id: &str,
) -> Result<(Arc<RedisBus>, RedisLink), RedisConnError> {
    let target = Target::parse(url)?;
    let names = Names::new(prefix, node_id, target.is_cluster());
    let (pushes, incoming) = mpsc::unbounded_channel();
    let subscriber = RedisConn::connect(&target, TIMEOUTS, Some(pushes)).await?;
    let mut subscriptions = Subscriptions {
        conn: subscriber,
        channels: [names.node_channel(node_id), names.all_channel()],
    };
    subscriptions.subscribe().await?;
    let commands = RedisConn::connect(&target, TIMEOUTS, None).await?;
    let (tx, outgoing) = mpsc::unbounded_channel();
    let health = Arc::new(Health::new());
    let bus = Arc::new(RedisBus {
        outgoing: tx,
        health: health.clone(),
    });
    let link = RedisLink {
        names: names.clone(),
        membership: Membership {
            names,
            incarnation: 0,
            commands,
        },
        health,
        subscriptions,
        shards: target.is_cluster().then(Arc::default),
        incoming,
        outgoing,
    };
    Ok((bus, link))
}

impl RedisLink {
    /// Joins the cluster: the first heartbeat, so the node knows the live set before it serves.
    pub async fn join(&mut self, inbox: &dyn BusInbox) -> Result<(), RedisConnError> {
        self.membership.incarnation = inbox.incarnation();
        let live = self.membership.beat().await?;
        inbox.live_nodes(live);
        Ok(())
    }

    /// A connection for asking whether Redis answers (for `/readyz`).
    pub fn probe(&self) -> RedisConn {
        self.membership.commands.clone()
    }

    /// Runs the bus for `inbox` until `stop`: delivers what arrives, publishes what is sent,
    /// beats the heart; on `stop` the node leaves the live set at once.
    pub fn run(self, inbox: Arc<dyn BusInbox>, stop: CancellationToken, tasks: &TaskTracker) {
        let RedisLink {
            names,
            membership,
            health,
            subscriptions,
            shards,
            incoming,
            outgoing,
        } = self;
        subscriptions.run(incoming, health.clone(), inbox.clone(), stop.clone(), tasks);
        if let Some(shards) = &shards {
            tasks.spawn(
                shards
                    .clone()
                    .run(membership.commands.clone(), stop.clone()),
            );
        }
        publish::spawn(
            membership.commands.clone(),
            names,
            health.clone(),
            inbox.clone(),
            shards,
            outgoing,
            tasks,
        );
        tasks.spawn(membership.run(health, inbox, stop));
    }
}
