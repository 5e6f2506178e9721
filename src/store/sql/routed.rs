//! Which database a read runs on: a standby that holds everything committed before the read
//! arrived ([`postgres::replicas::Replicas::current`]), else the primary. A read that fails on a standby is asked
//! again of the primary, and the standby is skipped until it answers again: a standby going
//! away costs no failed request.

use std::time::{Duration, Instant};

use chat_actors::ports::StoreError;

use super::pool::{Pool, SqlStore};
use crate::store::error::ConnectError;
use crate::store::postgres;

impl SqlStore {
    /// The same store, serving the reads a standby may serve from the standbys at `urls`
    /// (skipped while their replay lags the primary by more than `max_lag`). PostgreSQL only.
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

    /// Runs `read` on a current standby, or on the primary.
    pub(super) async fn routed<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(SqlStore) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let Some(replicas) = &self.replicas else {
            return read(self.clone()).await;
        };
        let started = Instant::now();
        if let Some(replica) = replicas.current().await {
            let on_replica = SqlStore {
                pool: Pool::Pg(replica.pool.clone()),
                commits: None,
                replicas: None,
            };
            match read(on_replica).await {
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(replica = %replica.name, error = %e,
                        "a read failed on a standby: skipping it, reading from the primary");
                    replicas.failed(replica);
                }
                answer => {
                    replicas.served(true, started);
                    return answer;
                }
            }
        }
        let answer = read(self.clone()).await;
        replicas.served(false, started);
        answer
    }
}
