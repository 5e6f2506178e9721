//! Where Redis is and how to talk to it: one server (`redis://host:port`) or a Redis Cluster
//! (`redis+cluster://host:port,host:port,...`, the seed nodes). Both kinds hide behind one
//! clonable connection, so the bus and the shared profile cache say what they want once; only
//! pub/sub differs (a sharded channel on a cluster, so each node's traffic lives on one shard).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, PushInfo, RedisFuture, Value};
use tokio::sync::mpsc;

/// The scheme that names a Redis Cluster by its seed nodes.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// Why a Redis address was refused or a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisConnError {
    /// The address is not one of the two forms.
    #[error("{0}")]
    Address(String),
    /// Redis refused or failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What `CHAT_REDIS_URL` names.
#[derive(Debug, Clone)]
pub enum Target {
    /// One Redis server.
    Single(ConnectionInfo),
    /// A Redis Cluster, found through these seed nodes.
    Cluster(Vec<ConnectionInfo>),
}

impl Target {
    /// Reads `redis://...` (one server, as the redis crate reads it) or
    /// `redis+cluster://[user[:password]@]host:port[,host:port...][/]` (a cluster's seeds; any
    /// one that answers tells the rest of the cluster).
    pub fn parse(url: &str) -> Result<Target, RedisConnError> {
        let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) else {
            return Ok(Target::Single(url.into_connection_info()?));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?']) {
            return Err(RedisConnError::Address(format!(
                "{CLUSTER_SCHEME} takes seed nodes only (host:port,host:port), no database or options: {url}"
            )));
        }
        let (auth, hosts) = match rest.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), rest),
        };
        let seeds = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|host| format!("redis://{auth}{host}").into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(RedisConnError::Address(format!(
                "{CLUSTER_SCHEME} names no seed node: {url}"
            )));
        }
        Ok(Target::Cluster(seeds))
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// How long a connection attempt and an answer may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting to one server.
    pub connect: Duration,
    /// One answer (on a cluster: with its retries and redirections).
    pub response: Duration,
}

/// A self-reconnecting connection to one server or to a whole cluster. Clones share it.
#[derive(Clone)]
pub enum RedisConn {
    /// One server.
    Single(ConnectionManager),
    /// A cluster: a connection per shard, commands routed by their keys' slots.
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to `target`. With `pushes`, the connection speaks RESP3 and delivers what it is
    /// subscribed to there, and subscribes again by itself after a reconnect or a failover.
    pub async fn connect(
        target: &Target,
        timeouts: Timeouts,
        pushes: Option<mpsc::UnboundedSender<PushInfo>>,
    ) -> Result<RedisConn, RedisConnError> {
        Ok(match target {
            Target::Single(info) => {
                let resp3 = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                let client = redis::Client::open(info.clone().set_redis_settings(resp3))?;
                let mut config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeouts.connect))
                    .set_response_timeout(Some(timeouts.response));
                if let Some(pushes) = pushes {
                    config = config
                        .set_push_sender(pushes)
                        .set_automatic_resubscription();
                }
                RedisConn::Single(client.get_connection_manager_with_config(config).await?)
            }
            Target::Cluster(seeds) => {
                let mut builder = ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .connection_timeout(timeouts.connect)
                    .response_timeout(timeouts.response)
                    .overall_response_timeout(Some(timeouts.response))
                    // A dead master's slots move to its replica in seconds: a few quick
                    // retries follow the move; a longer outage fails fast instead of queueing.
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(500);
                if let Some(pushes) = pushes {
                    builder = builder.push_sender(pushes);
                }
                RedisConn::Cluster(builder.build()?.get_async_connection().await?)
            }
        })
    }

    /// Whether this speaks to a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// Subscribes to `channel`: a sharded channel on a cluster (it lives on the shard that owns
    /// its slot), a plain one on a single server.
    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            RedisConn::Single(conn) => conn.subscribe(channel).await,
            RedisConn::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// The publish command that matches [`RedisConn::subscribe`].
    pub fn publish(&self, channel: &str, message: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        });
        cmd.arg(channel).arg(message);
        cmd
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_command(cmd),
            RedisConn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(conn) => conn.get_db(),
            RedisConn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_url_is_one_server() {
        let target = Target::parse("redis://:secret@cache:6380/2").unwrap();
        let Target::Single(info) = target else {
            panic!("one server expected")
        };
        assert_eq!(info.redis_settings().db(), 2);
    }

    #[test]
    fn a_cluster_url_lists_its_seeds_with_the_shared_credentials() {
        let target =
            Target::parse("redis+cluster://app:pw@10.0.0.1:7001, 10.0.0.2:7002,10.0.0.3:7003/")
                .unwrap();
        let Target::Cluster(seeds) = target else {
            panic!("a cluster expected")
        };
        assert_eq!(seeds.len(), 3);
        for seed in &seeds {
            assert_eq!(seed.redis_settings().username(), Some("app"));
            assert_eq!(seed.redis_settings().password(), Some("pw"));
        }
        assert_eq!(seeds[1].addr().to_string(), "10.0.0.2:7002");
    }

    #[test]
    fn a_cluster_url_with_a_database_or_no_seed_is_refused() {
        assert!(Target::parse("redis+cluster://h:7001/3").is_err());
        assert!(Target::parse("redis+cluster://h:7001?protocol=resp3").is_err());
        assert!(Target::parse("redis+cluster://").is_err());
        assert!(Target::parse("redis+cluster://,").is_err());
    }
}
