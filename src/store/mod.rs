//! Storage: the `Store` port on PostgreSQL or embedded SQLite, chosen once from the URL scheme,
//! and the per-node batching writer in front of it.
//!
//! Both backends share the SQL in [`sql`] (sqlx binds `$N` placeholders on both) and the row
//! mapping in [`rows`]; what differs (connection options, migrations, the writer's commit,
//! expiry, PostgreSQL's partitions) lives in [`postgres`] and [`sqlite`].

mod error;
pub mod guard;
pub mod keyring;
pub mod postgres;
mod rows;
pub mod sealed;
mod sql;
pub mod sqlite;
pub mod writer;

pub use error::ConnectError;
pub use guard::GuardedStore;
pub use sql::{SqlStore, StoredBody};

/// Opens the database named by `url` (`sqlite://PATH` or `postgres://...`), applies the
/// migrations and, on PostgreSQL, makes the coming weeks' message partitions. SQLite commits are
/// durable ([`sqlite::Durability::Full`]).
pub async fn connect(url: &str, max_connections: u32) -> Result<SqlStore, ConnectError> {
    connect_with(url, max_connections, sqlite::Durability::Full).await
}

/// [`connect`], with SQLite's commits as durable as `durability` says.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    durability: sqlite::Durability,
) -> Result<SqlStore, ConnectError> {
    let store = if url.starts_with("sqlite:") {
        SqlStore::sqlite(sqlite::connect(url, durability).await?)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let (requests, commits) = postgres::connect(url, max_connections).await?;
        SqlStore::postgres(requests).with_commit_pool(commits)
    } else {
        return Err(ConnectError::Scheme(crate::config::redact_url(url)));
    };
    store.migrate().await?;
    store.prepare_partitions().await?;
    Ok(store)
}
