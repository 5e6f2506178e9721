//! Why the store could not be opened, said once and without credentials.

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
