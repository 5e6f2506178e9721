//! PostgreSQL specifics: connection options and the embedded migrations.

pub mod commit;
pub mod failover;
pub mod partitions;
pub mod replicas;

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, SqlSafeStr};

use crate::store::error::ConnectError;
use failover::Failover;
use replicas::Replicas;

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
///
/// A URL with several hosts (see [`failover`]) opens the pools on the one that is the primary,
/// and a watcher moves them when another becomes it.
pub async fn connect(url: &str, max_connections: u32) -> Result<(PgPool, PgPool), ConnectError> {
    let hosts = failover::split_hosts(url)?;
    let failover = Arc::new(Failover::new(&hosts, &BOUNDED)?);
    if failover.has_choice() && failover.find_primary().await.is_none() {
        return Err(ConnectError::Database(format!(
            "none of the {} hosts of CHAT_DATABASE_URL answers as a primary",
            hosts.len()
        )));
    }
    let bounded = failover.current();
    let failover = failover.has_choice().then_some(failover);
    if failover.is_some() {
        metrics::counter!("chat_db_failovers_total").absolute(0);
    }
    let pools = open_pools(&bounded, max_connections, failover.clone()).await;
    if let (Some(failover), Ok((requests, commits))) = (failover, &pools) {
        tokio::spawn(failover.watch(vec![
            (requests.clone(), Vec::new()),
            (commits.clone(), vec![GENERIC_PLANS]),
        ]));
    }
    if let Ok((requests, _)) = &pools {
        warn_without_autovacuum(requests).await;
    }
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

/// Says so in the log when the server's autovacuum is off. Then nothing keeps the planner's
/// statistics in step with the tables: a week's message partition starts empty, and as it
/// fills, conversation lists and unread counts stay planned as scans of the whole partition. A
/// 50,000-user run on such a server saturated PostgreSQL within four minutes
/// (docs/PERFORMANCE.md, "The seed's 50,000 users").
async fn warn_without_autovacuum(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SHOW autovacuum").fetch_one(pool).await;
    if matches!(setting.as_deref(), Ok("off")) {
        tracing::warn!(
            "PostgreSQL's autovacuum is off: table statistics will not follow the tables' growth \
             and reads will slow down as they grow; turn it on, or run ANALYZE regularly"
        );
    }
}

/// The standbys at `urls`, reading for a node whose primary pool is `primary` (pools of its
/// size, sessions bounded as the primary's), and the task that keeps knowing which of them are
/// current. A standby down at start is skipped until it answers.
pub fn replicas(
    urls: &[String],
    primary: &PgPool,
    max_lag: Duration,
) -> Result<Arc<Replicas>, ConnectError> {
    let size = primary.options().get_max_connections();
    let replicas = Arc::new(Replicas::new(
        urls,
        &BOUNDED,
        size,
        primary.clone(),
        max_lag,
    )?);
    tokio::spawn(replicas.clone().run_rounds());
    Ok(replicas)
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

/// Every session's bounds: no request outlives PROTOCOL's 5 s.
const BOUNDED: [(&str, &str); 2] = [("statement_timeout", "4000"), ("lock_timeout", "3000")];

/// The commit connections' session setting (see [`connect`]).
const GENERIC_PLANS: (&str, &str) = ("plan_cache_mode", "force_generic_plan");

/// The two pools over `bounded`; with `failover`, connections opened before a move of the
/// primary are retired.
async fn open_pools(
    bounded: &PgConnectOptions,
    max_connections: u32,
    failover: Option<Arc<Failover>>,
) -> Result<(PgPool, PgPool), sqlx::Error> {
    let bounded = bounded.clone();
    let commits = pool(
        bounded.clone().options([GENERIC_PLANS]),
        COMMIT_CONNECTIONS,
        failover.clone(),
    );
    let requests = pool(
        bounded,
        max_connections.saturating_sub(COMMIT_CONNECTIONS).max(1),
        failover,
    );
    tokio::try_join!(requests, commits)
}

async fn pool(
    options: PgConnectOptions,
    size: u32,
    failover: Option<Arc<Failover>>,
) -> Result<PgPool, sqlx::Error> {
    let released = failover.clone();
    PgPoolOptions::new()
        .max_connections(size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        // sqlx pings every connection before handing it out: a round trip before every
        // statement, the commit's included. Only a connection that sat idle is checked now; a
        // busy one that died fails its statement, is dropped, and the batch is answered
        // `unavailable` (a retry with the same mid is safe).
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            let stale = failover.as_ref().is_some_and(|f| f.is_stale(meta.age));
            Box::pin(async move {
                if stale {
                    return Ok(false);
                }
                if meta.idle_for > PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_release(move |_, meta| {
            let keep = !released.as_ref().is_some_and(|f| f.is_stale(meta.age));
            Box::pin(async move { Ok(keep) })
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
