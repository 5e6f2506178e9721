//! Which shard of a Redis Cluster carries which channel, for the operators' count of publishes by
//! shard: a channel's slot (CRC16 of its name, as Redis computes it) and the cluster's slot
//! ranges, read with `CLUSTER SLOTS` at start and every few seconds (a failover moves them).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::redis_conn::RedisConn;

/// How often the slot ranges are read again.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// The slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The cluster's slot ranges and the master (`host:port`) that serves each.
#[derive(Debug, Default)]
pub(super) struct Shards {
    ranges: RwLock<Vec<(u16, u16, Arc<str>)>>,
}

/// The slot of `key` (a channel's name), hash tags included: `{x}y` hashes `x` alone.
pub(super) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

impl Shards {
    /// The master serving `slot`, when known.
    pub(super) fn master_of(&self, slot: u16) -> Option<Arc<str>> {
        let ranges = self.ranges.read().ok()?;
        ranges
            .iter()
            .find(|(from, to, _)| (*from..=*to).contains(&slot))
            .map(|(_, _, master)| master.clone())
    }

    /// Reads the slot ranges again.
    async fn refresh(&self, conn: &mut RedisConn) -> redis::RedisResult<()> {
        let answer: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await?;
        let ranges = parse_slots(&answer);
        if let Ok(mut held) = self.ranges.write() {
            *held = ranges;
        }
        Ok(())
    }

    /// Keeps the slot ranges current until `stop`.
    pub(super) async fn run(self: Arc<Self>, mut conn: RedisConn, stop: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {
                    if let Err(e) = self.refresh(&mut conn).await {
                        tracing::debug!(error = %e, "CLUSTER SLOTS failed");
                    }
                }
            }
        }
    }
}

/// `CLUSTER SLOTS`: one entry per range, `[from, to, [host, port, id, ...], replicas...]`.
fn parse_slots(answer: &Value) -> Vec<(u16, u16, Arc<str>)> {
    let Value::Array(entries) = answer else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(fields) = entry else {
                return None;
            };
            let (Value::Int(from), Value::Int(to), Value::Array(master)) =
                (fields.first()?, fields.get(1)?, fields.get(2)?)
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else {
                return None;
            };
            let name: Arc<str> = Arc::from(format!("{host}:{port}"));
            Some((u16::try_from(*from).ok()?, u16::try_from(*to).ok()?, name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // `CLUSTER KEYSLOT` on Redis 7 gives these.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("chat:node:node-1"), 8889);
        assert_eq!(slot("{chat}:nodes"), slot("chat"));
        assert_eq!(slot("{chat}:incarnations"), slot("{chat}:nodes"));
        assert_eq!(slot("{}x"), slot("{}x"));
        assert_ne!(slot("{}x"), slot("x"));
    }

    #[test]
    fn cluster_slots_read_as_ranges_and_their_masters() {
        let entry = |from: i64, to: i64, port: i64| {
            Value::Array(vec![
                Value::Int(from),
                Value::Int(to),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(port),
                    Value::BulkString(b"id".to_vec()),
                ]),
                Value::Array(vec![
                    Value::BulkString(b"127.0.0.1".to_vec()),
                    Value::Int(port + 3),
                ]),
            ])
        };
        let shards = Shards::default();
        *shards.ranges.write().unwrap() = parse_slots(&Value::Array(vec![
            entry(0, 5460, 7001),
            entry(5461, 16383, 7002),
        ]));
        assert_eq!(shards.master_of(0).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(shards.master_of(5461).as_deref(), Some("127.0.0.1:7002"));
        assert_eq!(shards.master_of(16383).as_deref(), Some("127.0.0.1:7002"));
    }
}
