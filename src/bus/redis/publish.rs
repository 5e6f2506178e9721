//! Publishing. Each destination (a node's channel, or the channel for all) has its own queue and
//! task: messages to one node stay in order and go out in pipelines, and a part of the bus that
//! is down (on a Redis Cluster, the shard that owns one node's channel) holds up only the
//! messages bound there. While a channel cannot be published to, what is queued for it is
//! dropped (pub/sub is at most once; clients fill gaps from history) and a cheap command on the
//! channel's slot probes it until it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_actors::ports::BusInbox;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::health::Health;
use super::names::Names;
use super::shards::{self, Shards};
use crate::redis_conn::RedisConn;

/// The most bus messages in one pipeline.
const MAX_PIPELINE: usize = 256;
/// A destination's task retires after this long without a message.
const RETIRE_AFTER: Duration = Duration::from_secs(60);
/// How often a channel that could not be published to is tried again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Where a message goes: one node (by name), or every node.
pub(super) type Destination = Option<String>;

/// Hands each message to its destination's task, starting the task on first use. `shards`, on a
/// Redis Cluster: where each channel lives, for counting publishes by shard.
pub(super) fn spawn(
    conn: RedisConn,
    names: Names,
    health: Arc<Health>,
    inbox: Arc<dyn BusInbox>,
    shards: Option<Arc<Shards>>,
    mut outgoing: mpsc::UnboundedReceiver<(Destination, Bytes)>,
    tasks: &TaskTracker,
) {
    let workers = tasks.clone();
    tasks.spawn(async move {
        let mut queues: HashMap<Destination, Queue> = HashMap::new();
        while let Some((to, message)) = outgoing.recv().await {
            let message = match queues.get(&to) {
                Some(queue) => match queue.tx.send(message) {
                    Ok(()) => continue,
                    Err(mpsc::error::SendError(message)) => message,
                },
                None => message,
            };
            // No queue yet, or its task retired, idle: a new one takes the message, once the
            // old one has published what it still held (order per destination is kept).
            let retired = queues.remove(&to).map(|queue| queue.task);
            let (tx, rx) = mpsc::unbounded_channel();
            let name = match &to {
                Some(node) => names.node_channel(node),
                None => names.all_channel(),
            };
            let channel = Channel {
                shard: shards.clone().map(|shards| (shards::slot(&name), shards)),
                shard_counter: None,
                name,
                node: to.clone(),
                conn: conn.clone(),
                health: health.clone(),
                inbox: inbox.clone(),
            };
            let task = workers.spawn(async move {
                if let Some(retired) = retired {
                    let _ = retired.await;
                }
                channel.run(rx).await;
            });
            let _ = tx.send(message);
            queues.insert(to, Queue { tx, task });
        }
    });
}

/// A destination's queue and the task that publishes from it.
struct Queue {
    tx: mpsc::UnboundedSender<Bytes>,
    task: JoinHandle<()>,
}

/// One destination's publisher.
struct Channel {
    name: String,
    node: Destination,
    /// On a Redis Cluster: the channel's slot, and who serves which slot.
    shard: Option<(u16, Arc<Shards>)>,
    /// The publishes-by-shard counter of the master last seen serving the slot (looked up in
    /// the registry only when the master changes, not for every pipeline).
    shard_counter: Option<(Arc<str>, metrics::Counter)>,
    conn: RedisConn,
    health: Arc<Health>,
    inbox: Arc<dyn BusInbox>,
}

impl Channel {
    /// Publishes what arrives on `queue`, in order, until the bus is dropped or the queue has
    /// been idle for [`RETIRE_AFTER`] (a node that left for good, or one that restarted under a
    /// new name, leaves no task behind; the next message to it starts a new one).
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Bytes>) {
        loop {
            let first = match tokio::time::timeout(RETIRE_AFTER, queue.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => return,
                // Closed first, so that nothing sent meanwhile is left behind: what is queued
                // still comes out of `recv`, then `None`.
                Err(_) => {
                    queue.close();
                    continue;
                }
            };
            let mut pipe = redis::pipe();
            pipe.add_command(self.conn.publish(&self.name, &first))
                .ignore();
            let mut n = 1;
            while n < MAX_PIPELINE {
                match queue.try_recv() {
                    Ok(message) => {
                        pipe.add_command(self.conn.publish(&self.name, &message))
                            .ignore();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            match pipe.query_async::<()>(&mut self.conn).await {
                Ok(()) => self.count_by_shard(n),
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.name, lost = n, "bus messages lost: Redis failed");
                    metrics::counter!("chat_bus_lost_total").increment(n as u64);
                    self.wait_until_it_answers(&mut queue).await;
                }
            }
        }
    }

    /// Counts `n` publishes on the shard that serves this channel (on a Redis Cluster).
    fn count_by_shard(&mut self, n: usize) {
        let Some((slot, shards)) = &self.shard else {
            return;
        };
        let Some(master) = shards.master_of(*slot) else {
            return;
        };
        let counter = match &self.shard_counter {
            Some((known, counter)) if *known == master => counter,
            _ => {
                let counter = metrics::counter!("chat_bus_shard_publishes_total", "shard" => master.to_string());
                &self.shard_counter.insert((master, counter)).1
            }
        };
        counter.increment(n as u64);
    }

    /// The channel could not be published to: what waits for its node will not hear back, and
    /// nothing more is sent there until a probe on its slot answers.
    async fn wait_until_it_answers(&mut self, queue: &mut mpsc::UnboundedReceiver<Bytes>) {
        if let Some(node) = &self.node {
            self.health.failing(node);
            self.inbox.unreachable(node);
        }
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let mut dropped = 0u64;
            while queue.try_recv().is_ok() {
                dropped += 1;
            }
            metrics::counter!("chat_bus_lost_total").increment(dropped);
            // A key named like the channel lives on the channel's slot: answered by the shard
            // that carries it.
            let probe = redis::cmd("EXISTS")
                .arg(&self.name)
                .query_async::<i64>(&mut self.conn)
                .await;
            if probe.is_ok() {
                break;
            }
        }
        tracing::info!(channel = %self.name, "the bus carries to this channel again");
        match &self.node {
            Some(node) => self.health.recovered(node),
            // Broadcasts (presence, rosters, hellos) were lost: everyone hears again who is
            // connected here.
            None => self.inbox.regained(),
        }
    }
}
