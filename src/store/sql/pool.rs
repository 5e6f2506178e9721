//! The store's two pools, and the macros that expand one piece of SQL for either: the bottom of
//! `sql/`, shared by the reads, the writes and maintenance.

use std::sync::Arc;

use sqlx::{PgPool, SqlitePool};

use crate::store::postgres::replicas::Replicas;

/// Which SQL a statement is written in, where the two differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Pg,
    Lite,
}

/// The pool the store reads and writes on.
#[derive(Clone)]
pub(super) enum Pool {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// The SQL store over one of the two pools.
#[derive(Clone)]
pub struct SqlStore {
    pub(super) pool: Pool,
    /// PostgreSQL: where the writer's commits go, when not on `pool` (see `postgres::connect`).
    pub(super) commits: Option<PgPool>,
    /// PostgreSQL: the standbys that serve reads (see `routed`).
    pub(super) replicas: Option<Arc<Replicas>>,
}

/// Runs `$body` with `$p` bound to the concrete pool and `$d` to its dialect.
macro_rules! on_pool {
    ($store:expr, |$p:ident, $d:ident| $body:expr) => {
        match &$store.pool {
            $crate::store::sql::pool::Pool::Pg($p) => {
                #[allow(unused_variables)]
                let $d = $crate::store::sql::pool::Dialect::Pg;
                $body
            }
            $crate::store::sql::pool::Pool::Lite($p) => {
                #[allow(unused_variables)]
                let $d = $crate::store::sql::pool::Dialect::Lite;
                $body
            }
        }
    };
}
pub(super) use on_pool;

/// Begins a write transaction: on SQLite `BEGIN IMMEDIATE` takes the write lock up front, so two
/// writers queue on the busy timeout instead of failing at commit.
macro_rules! begin_write {
    ($p:expr, $d:expr) => {
        match $d {
            $crate::store::sql::pool::Dialect::Lite => $p.begin_with("BEGIN IMMEDIATE").await,
            $crate::store::sql::pool::Dialect::Pg => $p.begin().await,
        }
    };
}
pub(super) use begin_write;
