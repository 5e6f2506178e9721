//! Storage: the `Store` port on PostgreSQL or embedded SQLite, chosen once from the URL scheme,
//! and the per-node batching writer in front of it.
//!
//! Both backends share the SQL in [`sql`] (sqlx binds `$N` placeholders on both); what differs —
//! connection options, migrations, a few statements — lives in [`postgres`] and [`sqlite`].

pub mod guard;
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod writer;

pub use guard::GuardedStore;
pub use sql::SqlStore;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is neither `sqlite://` nor `postgres://`.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    Scheme(String),
    /// The database refused or failed.
    #[error("cannot open the database: {0}")]
    Database(#[from] sqlx::Error),
    /// The migrations failed.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite file's folder cannot be made.
    #[error("cannot create the database folder: {0}")]
    Folder(#[from] std::io::Error),
}

/// Opens the database named by `url` (`sqlite://PATH` or `postgres://...`) and applies the
/// migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<SqlStore, ConnectError> {
    let store = if url.starts_with("sqlite:") {
        SqlStore::sqlite(sqlite::connect(url).await?)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        SqlStore::postgres(postgres::connect(url, max_connections).await?)
    } else {
        return Err(ConnectError::Scheme(crate::config::redact_url(url)));
    };
    store.migrate().await?;
    Ok(store)
}
