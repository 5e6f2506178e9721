//! The bus of a cluster over Redis: a channel per node (`{prefix}:node:{id}`), one for all
//! (`{prefix}:all`), the live set of nodes as a sorted set of heartbeats stamped with Redis's own
//! clock (`{prefix}:nodes`), and each node's incarnation (`{prefix}:incarnations`, a hash), so
//! that a node restarted under its own name is told from one that went on.
//!
//! It only carries: sends are queued to one publishing task (never waiting in an actor), what
//! arrives goes to the core's [`BusInbox`], and the heartbeat tells it which nodes are alive.
//! Pub/sub is at most once; a connection lost and regained re-subscribes by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat_actors::ports::{Bus, BusInbox, LiveNode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, PushKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent for this long is out of the live set.
const DEAD_AFTER: Duration = Duration::from_secs(3);
/// The most bus messages in one pipeline.
const MAX_PIPELINE: usize = 256;

/// Why the bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The names this deployment uses in Redis.
#[derive(Debug, Clone)]
struct Names {
    prefix: String,
    node_id: String,
}

impl Names {
    fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn incarnations_key(&self) -> String {
        format!("{}:incarnations", self.prefix)
    }
}

/// The `Bus` port over Redis.
pub struct RedisBus {
    names: Names,
    outgoing: mpsc::UnboundedSender<(String, Bytes)>,
    /// False from a failed publish, heartbeat or lost connection until the next heartbeat works.
    reachable: Arc<AtomicBool>,
}

impl Bus for RedisBus {
    fn is_distributed(&self) -> bool {
        true
    }

    fn send(&self, node: &str, message: Bytes) {
        let _ = self.outgoing.send((self.names.node_channel(node), message));
    }

    fn broadcast(&self, message: Bytes) {
        let _ = self.outgoing.send((self.names.all_channel(), message));
    }

    fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}

/// What runs the bus: subscriptions, the publisher and the heartbeat.
pub struct RedisLink {
    membership: Membership,
    reachable: Arc<AtomicBool>,
    subscriber: ConnectionManager,
    incoming: mpsc::UnboundedReceiver<redis::PushInfo>,
    outgoing: mpsc::UnboundedReceiver<(String, Bytes)>,
}

/// The heartbeat: this node's entry in the live set, and the reading of it.
struct Membership {
    names: Names,
    /// This process's incarnation (from the node, at [`RedisLink::join`]).
    incarnation: u64,
    commands: ConnectionManager,
    /// [`HEARTBEAT_SCRIPT`], sent by its hash once Redis has it.
    script: redis::Script,
}

/// Connects to Redis (RESP3, needed for pub/sub on a self-reconnecting connection) and subscribes
/// to this node's channels. Nothing is delivered until [`RedisLink::run`].
pub async fn connect(
    url: &str,
    prefix: &str,
    node_id: &str,
) -> Result<(Arc<RedisBus>, RedisLink), BusError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(resp3);
    let client = redis::Client::open(info)?;
    let names = Names {
        prefix: prefix.to_owned(),
        node_id: node_id.to_owned(),
    };
    let (push_tx, incoming) = mpsc::unbounded_channel();
    let config = ConnectionManagerConfig::new()
        .set_push_sender(push_tx)
        .set_automatic_resubscription()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut subscriber = client.get_connection_manager_with_config(config).await?;
    subscriber.subscribe(names.node_channel(node_id)).await?;
    subscriber.subscribe(names.all_channel()).await?;
    let plain = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let commands = client.get_connection_manager_with_config(plain).await?;
    let (tx, outgoing) = mpsc::unbounded_channel();
    let reachable = Arc::new(AtomicBool::new(true));
    let bus = Arc::new(RedisBus {
        names: names.clone(),
        outgoing: tx,
        reachable: reachable.clone(),
    });
    let link = RedisLink {
        membership: Membership {
            names,
            incarnation: 0,
            commands,
            script: redis::Script::new(HEARTBEAT_SCRIPT),
        },
        reachable,
        subscriber,
        incoming,
        outgoing,
    };
    Ok((bus, link))
}

/// The heartbeat, on Redis's clock: the node's entry is stamped with the server's `TIME` and the
/// live set read against it, so a node whose own clock is off is judged like any other. One
/// script, so the stamp, the incarnation, the pruning and the reading are never seen apart.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_after = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * dead_after)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead_after, '+inf')
return {live, redis.call('HGETALL', KEYS[2])}
";

impl Membership {
    /// Says this node is alive (and which start of it) and reads who else is.
    async fn heartbeat(&mut self) -> Result<Vec<LiveNode>, redis::RedisError> {
        let incarnations = self.names.incarnations_key();
        let (live, known): (Vec<String>, Vec<String>) = self
            .script
            .key(self.names.nodes_key())
            .key(&incarnations)
            .arg(&self.names.node_id)
            .arg(self.incarnation)
            .arg(DEAD_AFTER.as_millis() as u64)
            .invoke_async(&mut self.commands)
            .await?;
        // HGETALL's flat list of names and numbers; a number that does not parse reads as 0
        // (unknown), as an older node's would.
        let mut known: HashMap<String, u64> = known
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
            .collect();
        let stale: Vec<&String> = known.keys().filter(|id| !live.contains(id)).collect();
        if !stale.is_empty() {
            // Nodes out of the live set: a node that beats again writes its number again.
            let _: i64 = self.commands.hdel(&incarnations, stale).await?;
        }
        Ok(live
            .into_iter()
            .map(|id| LiveNode {
                incarnation: known.remove(&id).unwrap_or(0),
                id,
            })
            .collect())
    }

    /// Takes this node out of the live set (a clean stop: the others move its conversations at
    /// once instead of after the heartbeat runs out).
    async fn leave(&mut self) {
        let _: Result<(i64, i64), _> = redis::pipe()
            .zrem(self.names.nodes_key(), &self.names.node_id)
            .hdel(self.names.incarnations_key(), &self.names.node_id)
            .query_async(&mut self.commands)
            .await;
    }
}

impl RedisLink {
    /// Joins the cluster: the first heartbeat, so the node knows the live set before it serves.
    pub async fn join(&mut self, inbox: &dyn BusInbox) -> Result<(), BusError> {
        self.membership.incarnation = inbox.incarnation();
        let live = self.membership.heartbeat().await?;
        inbox.live_nodes(live);
        Ok(())
    }

    /// Whether Redis answers (for `/readyz`).
    pub fn probe(&self) -> ConnectionManager {
        self.membership.commands.clone()
    }

    /// Runs the bus for `inbox` until `stop`: delivers what arrives, publishes what is sent,
    /// beats the heart; on `stop` the node leaves the live set at once.
    pub fn run(self, inbox: Arc<dyn BusInbox>, stop: CancellationToken, tasks: &TaskTracker) {
        let RedisLink {
            mut membership,
            reachable,
            subscriber,
            mut incoming,
            mut outgoing,
        } = self;
        let receiving = inbox.clone();
        let receiving_stop = stop.clone();
        let lost = reachable.clone();
        tasks.spawn(async move {
            // Holding the subscriber keeps its connection (and subscriptions) alive.
            let _subscriber = subscriber;
            loop {
                let push = tokio::select! {
                    _ = receiving_stop.cancelled() => break,
                    push = incoming.recv() => match push {
                        Some(push) => push,
                        None => break,
                    },
                };
                match push.kind {
                    PushKind::Message => {
                        if let Some(Ok(payload)) =
                            push.data.get(1).map(redis::from_redis_value_ref::<Vec<u8>>)
                        {
                            receiving.received(&payload);
                        }
                    }
                    PushKind::Disconnection => {
                        lost.store(false, Ordering::Relaxed);
                        receiving.lost();
                        tracing::warn!("the bus lost its Redis connection; reconnecting");
                        metrics::counter!("chat_bus_disconnections_total").increment(1);
                    }
                    _ => {}
                }
            }
        });
        let mut publisher = membership.commands.clone();
        let failed = reachable.clone();
        let publishing = inbox.clone();
        tasks.spawn(async move {
            while let Some(first) = outgoing.recv().await {
                let mut pipe = redis::pipe();
                pipe.publish(first.0, first.1.as_ref()).ignore();
                let mut n = 1;
                while n < MAX_PIPELINE {
                    match outgoing.try_recv() {
                        Ok((channel, message)) => {
                            pipe.publish(channel, message.as_ref()).ignore();
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = pipe.query_async::<()>(&mut publisher).await {
                    failed.store(false, Ordering::Relaxed);
                    publishing.lost();
                    tracing::warn!(error = %e, lost = n, "bus messages lost: Redis failed");
                    metrics::counter!("chat_bus_lost_total").increment(n as u64);
                }
            }
        });
        tasks.spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => match membership.heartbeat().await {
                        Ok(live) => {
                            if reachable.swap(true, Ordering::Relaxed) {
                                inbox.live_nodes(live);
                            } else {
                                // Back after an outage. Messages may have been lost meanwhile:
                                // tell everyone again who is connected here. The live set is
                                // read from the next beat on: the others' last beats are as old
                                // as the outage, and would read as dead.
                                tracing::info!("the bus reaches Redis again; resyncing presence");
                                inbox.regained();
                            }
                        }
                        Err(e) => {
                            reachable.store(false, Ordering::Relaxed);
                            tracing::warn!(error = %e, "heartbeat failed");
                        }
                    },
                }
            }
            membership.leave().await;
        });
    }
}
