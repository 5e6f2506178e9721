//! Which database a read a standby may serve runs on: the standbys of `CHAT_DATABASE_REPLICA_URLS`
//! ([`postgres::replicas`]) offer one that holds everything committed before the read arrived;
//! the caller ([`crate::store::GuardedStore`]) reads there, or on the primary within its read
//! budget when none is offered or the standby fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pool::{Pool, SqlStore};
use crate::store::error::ConnectError;
use crate::store::postgres;
use crate::store::postgres::replicas::{Replica, Replicas};

/// A standby chosen for one read, and the store on it.
pub struct Standby<'a> {
    /// The store on the standby (no writer, no standbys of its own).
    pub store: SqlStore,
    replica: &'a Replica,
    replicas: &'a Replicas,
    arrived: Instant,
}

impl Standby<'_> {
    /// The read was answered here.
    pub fn served(&self) {
        self.replicas.served(true, self.arrived);
    }

    /// The read failed here (the standby went away): it is skipped until it answers again.
    pub fn failed(&self, why: &dyn std::fmt::Display) {
        tracing::warn!(replica = %self.replica.name, error = %why,
            "a read failed on a standby: skipping it, reading from the primary");
        self.replicas.failed(self.replica);
    }
}

impl SqlStore {
    /// The same store, offering the standbys at `urls` for reads (skipped while their replay
    /// lags the primary by more than `max_lag`). PostgreSQL only.
    pub fn reading_from(self, urls: &[String], max_lag: Duration) -> Result<Self, ConnectError> {
        let Pool::Pg(primary) = &self.pool else {
            return Err(ConnectError::Database(
                "read replicas are PostgreSQL standbys: CHAT_DATABASE_URL is not PostgreSQL"
                    .to_owned(),
            ));
        };
        let replicas = postgres::replicas(urls, primary, max_lag)?;
        Ok(SqlStore {
            replicas: Some(replicas),
            ..self
        })
    }

    /// A standby holding every change committed before this call (waiting for one at most
    /// [`postgres::replicas::CATCH_UP_WAIT`] and a round trip), or None: read on the primary.
    pub async fn standby(&self) -> Option<Standby<'_>> {
        let replicas: &Arc<Replicas> = self.replicas.as_ref()?;
        let arrived = Instant::now();
        let replica = replicas.current().await?;
        Some(Standby {
            store: SqlStore {
                pool: Pool::Pg(replica.pool.clone()),
                commits: None,
                replicas: None,
            },
            replica,
            replicas,
            arrived,
        })
    }

    /// A read that could have gone to a standby, asked at `arrived`, was answered by the primary.
    pub fn read_on_primary(&self, arrived: Instant) {
        if let Some(replicas) = &self.replicas {
            replicas.served(false, arrived);
        }
    }
}
