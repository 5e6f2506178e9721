//! PostgreSQL specifics: connection options and the embedded migrations.

pub mod commit;
pub mod partitions;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};

use crate::store::error::ConnectError;

/// A pooled connection idle longer than this is pinged before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The connections of a node's pool that its batching writer commits on (as many as the
/// writer's commits in flight, `SqlStore::write_concurrency`).
pub const COMMIT_CONNECTIONS: u32 = 2;

/// The node's two pools, `max_connections` in all: one for the writer's commits
/// ([`COMMIT_CONNECTIONS`]), the rest for everything else. Every wait is bounded, so no request
/// outlives PROTOCOL's 5 s.
///
/// The commit connections always use a generic plan. A commit is one statement over whole
/// columns bound as arrays; left to choose, PostgreSQL planned it afresh for every commit (its
/// custom plans look cheaper, as they know the arrays' lengths), and `perf` showed the planner
/// (copyObject, expression_tree_walker, the join paths over the partitions) as the better part
/// of PostgreSQL's CPU at 1,000 msgs/s: ~170 µs a message with planning, 92–120 without
/// (docs/PERFORMANCE.md, "The commit's plan"). Other statements keep PostgreSQL's choice: a
/// read's best plan may depend on its parameters.
pub async fn connect(url: &str, max_connections: u32) -> Result<(PgPool, PgPool), ConnectError> {
    let bounded = PgConnectOptions::from_str(url)?
        .options([("statement_timeout", "4000"), ("lock_timeout", "3000")]);
    let pools = open_pools(&bounded, max_connections).await;
    match pools {
        // The pool says only that it waited: one connection of our own says why.
        Err(sqlx::Error::PoolTimedOut) => Err(unreachable(&bounded).await),
        Err(sqlx::Error::Io(e)) => Err(ConnectError::Unreachable {
            host: bounded.get_host().to_owned(),
            port: bounded.get_port(),
            why: e.to_string(),
        }),
        other => Ok(other?),
    }
}

/// Why PostgreSQL at `options` cannot be reached, from one connection attempt: refused, host
/// not found, timed out (the host and port, never the credentials).
async fn unreachable(options: &PgConnectOptions) -> ConnectError {
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        sqlx::PgConnection::connect_with(options),
    )
    .await;
    let why = match attempt {
        Err(_) => "no answer within 3 s".to_owned(),
        Ok(Err(sqlx::Error::Io(e))) => e.to_string(),
        Ok(Err(sqlx::Error::Database(db))) => db.message().to_owned(),
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => "it answers now, but gave no connection within 3 s before".to_owned(),
    };
    ConnectError::Unreachable {
        host: options.get_host().to_owned(),
        port: options.get_port(),
        why,
    }
}

/// The two pools over `bounded`.
async fn open_pools(
    bounded: &PgConnectOptions,
    max_connections: u32,
) -> Result<(PgPool, PgPool), sqlx::Error> {
    let bounded = bounded.clone();
    let commits = pool(
        bounded
            .clone()
            .options([("plan_cache_mode", "force_generic_plan")]),
        COMMIT_CONNECTIONS,
    );
    let requests = pool(
        bounded,
        max_connections.saturating_sub(COMMIT_CONNECTIONS).max(1),
    );
    tokio::try_join!(requests, commits)
}

async fn pool(options: PgConnectOptions, size: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(size)
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
            include_str!("../../../migrations/postgres/0001_init.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "partition messages".into(),
            MigrationType::Simple,
            include_str!("../../../migrations/postgres/0002_partition_messages.sql").into_sql_str(),
            false,
        ),
    ])
}
