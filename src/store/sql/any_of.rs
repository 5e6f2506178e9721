//! A set of ids in a query's condition, said the way each database prepares best.
//!
//! An `IN ($1, $2, …)` list is a different statement for every length: a conversation list of
//! 5–90 conversations made ~90 texts of each of its queries, more than a connection's cache of
//! prepared statements holds, so on PostgreSQL most lists were parsed, planned and described
//! again (an extra round trip each). `= ANY($1)` with one array is one statement whatever the
//! count, prepared once per connection. SQLite has no arrays and prepares in-process, so it keeps
//! the list.

use sqlx::{Postgres, QueryBuilder, Sqlite};
use uuid::Uuid;

/// Pushes ` = ANY(array)` on PostgreSQL or ` IN (…)` on SQLite after a column.
pub(super) trait PushAnyOf {
    /// `ids` must not be empty (an empty IN list is not SQL); callers answer early instead.
    fn push_any_of(&mut self, ids: impl Iterator<Item = Uuid>);
}

impl PushAnyOf for QueryBuilder<Postgres> {
    fn push_any_of(&mut self, ids: impl Iterator<Item = Uuid>) {
        self.push(" = ANY(")
            .push_bind(ids.collect::<Vec<Uuid>>())
            .push(")");
    }
}

impl PushAnyOf for QueryBuilder<Sqlite> {
    fn push_any_of(&mut self, ids: impl Iterator<Item = Uuid>) {
        self.push(" IN (");
        let mut list = self.separated(", ");
        for id in ids {
            list.push_bind(id);
        }
        self.push(")");
    }
}
