//! The heartbeat: this node's entry in the live set, stamped with Redis's own clock, and the
//! reading of who else is alive (and which start of each), once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chat_actors::ports::{BusInbox, LiveNode};
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::names::Names;
use crate::redis_conn::RedisConn;

/// How often a node says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node silent for this long is out of the live set.
const DEAD_AFTER: Duration = Duration::from_secs(3);

/// The heartbeat, on Redis's clock: the node's entry is stamped with the server's `TIME` and the
/// live set read against it, so a node whose own clock is off is judged like any other. One
/// script, so the stamp, the incarnation, the pruning and the reading are never seen apart;
/// incarnations of nodes out of the live set are dropped there too (a node that beats again
/// writes its number again). Sent whole (`EVAL`, not `EVALSHA`): on a cluster a replica just
/// promoted may not have the script cached, and a load would go to every shard.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead_after = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * dead_after)
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - dead_after, '+inf')
local alive = {}
for _, id in ipairs(live) do alive[id] = true end
local known = redis.call('HGETALL', KEYS[2])
local kept = {}
for i = 1, #known, 2 do
  if alive[known[i]] then
    kept[#kept + 1] = known[i]
    kept[#kept + 1] = known[i + 1]
  else
    redis.call('HDEL', KEYS[2], known[i])
  end
end
return {live, kept}
";

/// This node's membership.
pub(super) struct Membership {
    pub(super) names: Names,
    /// This process's incarnation (from the node, when it joins).
    pub(super) incarnation: u64,
    pub(super) commands: RedisConn,
}

impl Membership {
    /// Says this node is alive (and which start of it) and reads who else is.
    pub(super) async fn beat(&mut self) -> Result<Vec<LiveNode>, redis::RedisError> {
        let (live, known): (Vec<String>, Vec<String>) = redis::cmd("EVAL")
            .arg(HEARTBEAT_SCRIPT)
            .arg(2)
            .arg(self.names.nodes_key())
            .arg(self.names.incarnations_key())
            .arg(self.names.node_id())
            .arg(self.incarnation)
            .arg(DEAD_AFTER.as_millis() as u64)
            .query_async(&mut self.commands)
            .await?;
        // HGETALL's flat list of names and numbers; a number that does not parse reads as 0
        // (unknown), as an older node's would.
        let mut known: HashMap<String, u64> = known
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
            .collect();
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
            .zrem(self.names.nodes_key(), self.names.node_id())
            .hdel(self.names.incarnations_key(), self.names.node_id())
            .query_async(&mut self.commands)
            .await;
    }

    /// Beats until `stop`, telling `inbox` who is alive; then leaves the live set.
    pub(super) async fn run(
        mut self,
        health: Arc<Health>,
        inbox: Arc<dyn BusInbox>,
        stop: CancellationToken,
    ) {
        let mut every = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => match self.beat().await {
                    Ok(live) => {
                        if health.set_heartbeat(true) {
                            inbox.live_nodes(live);
                        } else {
                            // Back after an outage. Messages may have been lost meanwhile:
                            // tell everyone again who is connected here. The live set is read
                            // from the next beat on: the others' last beats are as old as the
                            // outage, and would read as dead.
                            tracing::info!("the heartbeat reaches Redis again; resyncing presence");
                            inbox.regained();
                        }
                    }
                    Err(e) => {
                        health.set_heartbeat(false);
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                },
            }
        }
        self.leave().await;
    }
}
