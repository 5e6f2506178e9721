//! The cluster's tier of the profile cache: Redis, shared by every node, behind each node's own
//! in-process tier. A profile one node fetched is found by the others without asking the user
//! service again, and outlives a node's restart. Entries carry the time they were fetched, so
//! every node judges freshness alike; a failed Redis call is a miss, never an error.

use std::time::Duration;

use chat_actors::ids::UserId;
use chat_actors::protocol::Profile;
use futures_util::future::join_all;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use crate::redis_conn::{RedisConn, RedisConnError, Target, Timeouts};

/// The tier answers in time or not at all: a miss costs one user service call, a slow Redis
/// would cost every request.
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    response: Duration::from_millis(200),
};

/// Users and businesses are kept apart (a UUID could name either).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A user's profile.
    User,
    /// A business's profile.
    Business,
}

/// One stored entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// None: the service answered without this id.
    profile: Option<Profile>,
    /// When it was fetched, ms since the epoch.
    at_ms: u64,
}

/// The Redis tier.
#[derive(Clone)]
pub struct SharedProfiles {
    conn: RedisConn,
    prefix: String,
    /// How long an entry is kept at all (served stale past its freshness).
    keep_for: Duration,
}

fn now_ms() -> u64 {
    u64::try_from(chat_actors::clock::now_ms()).unwrap_or(0)
}

impl SharedProfiles {
    /// Connects to the Redis `url` names (one server or a cluster); keys go under `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        keep_for: Duration,
    ) -> Result<SharedProfiles, RedisConnError> {
        let conn = RedisConn::connect(&Target::parse(url)?, TIMEOUTS, None).await?;
        Ok(SharedProfiles {
            conn,
            prefix: prefix.to_owned(),
            keep_for,
        })
    }

    fn key(&self, kind: Kind, id: UserId) -> String {
        let k = match kind {
            Kind::User => 'u',
            Kind::Business => 'b',
        };
        format!("{}:profile:{k}:{id}", self.prefix)
    }

    /// What Redis holds for each key: the entry and its age; None where it holds nothing (or
    /// did not answer).
    pub async fn get_many(
        &self,
        keys: &[(Kind, UserId)],
    ) -> Vec<Option<(Option<Profile>, Duration)>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let names: Vec<String> = keys.iter().map(|(k, id)| self.key(*k, *id)).collect();
        let mut conn = self.conn.clone();
        let found: Vec<Option<Vec<u8>>> = match conn.mget(&names).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "shared profile cache unavailable");
                return vec![None; keys.len()];
            }
        };
        let now = now_ms();
        found
            .into_iter()
            .map(|raw| {
                let stored: Stored = serde_json::from_slice(&raw?).ok()?;
                let age = Duration::from_millis(now.saturating_sub(stored.at_ms));
                Some((stored.profile, age))
            })
            .collect()
    }

    /// Stores what the service just answered.
    pub async fn put_many(&self, entries: &[((Kind, UserId), Option<Profile>)]) {
        if entries.is_empty() {
            return;
        }
        let at_ms = now_ms();
        let ttl = self.keep_for.as_millis() as u64;
        // One command each, all at once on the multiplexed connection: on a cluster the keys
        // live on different shards, where a pipeline must stay on one slot.
        let writes = entries.iter().filter_map(|((kind, id), profile)| {
            let stored = Stored {
                profile: profile.clone(),
                at_ms,
            };
            let value = serde_json::to_vec(&stored).ok()?;
            let key = self.key(*kind, *id);
            let mut conn = self.conn.clone();
            Some(async move { conn.pset_ex::<_, _, ()>(key, value, ttl).await })
        });
        if let Some(Err(e)) = join_all(writes).await.into_iter().find(Result::is_err) {
            tracing::debug!(error = %e, "shared profile cache not written");
        }
    }

    /// Forgets `id` (the user service said it changed).
    pub async fn forget(&self, id: UserId) {
        let keys = [self.key(Kind::User, id), self.key(Kind::Business, id)];
        let mut conn = self.conn.clone();
        let _: Result<i64, _> = conn.del(&keys).await;
    }
}
