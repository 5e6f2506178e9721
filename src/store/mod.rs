//! Storage: the `Store` port on PostgreSQL or embedded SQLite, chosen once from the URL scheme,
//! and the per-node batching writer in front of it.
//!
//! Both backends share the SQL in [`sql`] (sqlx binds `$N` placeholders on both) and the row
//! mapping in [`rows`]; what differs (connection options, migrations, the writer's commit,
//! expiry, PostgreSQL's partitions) lives in [`postgres`] and [`sqlite`].

pub mod guard;
pub mod keyring;
pub mod postgres;
mod rows;
pub mod sealed;
mod sql;
pub mod sqlite;
pub mod writer;

pub use guard::GuardedStore;
pub use sql::{SqlStore, StoredBody};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is neither `sqlite://` nor `postgres://`.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Scheme(String),
    /// The database refused or failed: what it said, once (sqlx's error repeats its cause in
    /// its own text, so a chain of sources would print the same words two or three times).
    #[error("cannot open the database: {0}")]
    Database(String),
    /// PostgreSQL gave no connection: where it was looked for, and why.
    #[error("cannot reach PostgreSQL at {host}:{port}: {why}")]
    Unreachable {
        /// The host (or socket folder) of the URL.
        host: String,
        /// Its port.
        port: u16,
        /// What the one attempt to connect said.
        why: String,
    },
    /// The migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(String),
    /// The SQLite file's folder cannot be made.
    #[error("cannot create the database folder")]
    Folder(#[from] std::io::Error),
    /// The SQLite file's folder does not exist (only the default's is made).
    #[error(
        "the folder {0:?} of the SQLite database does not exist: create it, or fix the path (only the default data/ is made)"
    )]
    NoFolder(String),
}

impl From<sqlx::Error> for ConnectError {
    fn from(e: sqlx::Error) -> Self {
        ConnectError::Database(match &e {
            sqlx::Error::Database(db) => db.message().to_owned(),
            other => other.to_string(),
        })
    }
}

impl From<sqlx::migrate::MigrateError> for ConnectError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        ConnectError::Migrate(e.to_string())
    }
}

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
