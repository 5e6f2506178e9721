//! PostgreSQL specifics: connection options and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};

/// A pooled connection idle longer than this is pinged before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool whose every wait is bounded, so no request outlives PROTOCOL's 5 s.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .options([("statement_timeout", "4000"), ("lock_timeout", "3000")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        // sqlx pings every connection before handing it out: a round trip before every
        // statement, the commit's included. Only a connection that sat idle is checked now; a
        // busy one that died fails its statement, is dropped, and the batch is answered
        // `unavailable` (a retry with the same mid is safe).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
}

/// The PostgreSQL migrations, embedded in the binary.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "init".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0001_init.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "partition messages".into(),
            MigrationType::Simple,
            include_str!("../../migrations/postgres/0002_partition_messages.sql").into_sql_str(),
            false,
        ),
    ])
}
