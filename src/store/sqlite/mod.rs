//! SQLite specifics: the embedded default. WAL, one writer at a time (`BEGIN IMMEDIATE`), each
//! commit on disk before it is acknowledged (unless the operator chose otherwise), and the
//! file's folder made on first start.

pub mod commit;
pub mod expiry;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, SqlSafeStr};

use crate::store::error::ConnectError;

/// The folder of the default database (`sqlite://data/chat.db`), made on first start.
const DEFAULT_FOLDER: &str = "data";

/// When a SQLite commit counts as done (`CHAT_SQLITE_SYNCHRONOUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit, so a commit that was acknowledged
    /// survives a power loss or an OS crash. The writer gathers many messages in one commit, so
    /// this is one fsync per commit, not per message.
    #[default]
    Full,
    /// `synchronous=NORMAL`: the WAL is fsynced only at checkpoints. A killed process loses
    /// nothing, but a power loss or an OS crash may roll back the last commits, messages that
    /// were already acknowledged `sent` included.
    Normal,
}

impl Durability {
    /// Reads the setting's value: `full` or `normal`.
    pub fn parse(value: &str) -> Option<Durability> {
        match value.to_ascii_lowercase().as_str() {
            "full" => Some(Durability::Full),
            "normal" => Some(Durability::Normal),
            _ => None,
        }
    }
}

/// Opens (creating when missing) the database file of a `sqlite://PATH` URL.
pub async fn connect(url: &str, durability: Durability) -> Result<SqlitePool, ConnectError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        // Only the default's folder is made: a typo in a configured path must not quietly give
        // a fresh, empty database.
        if dir != std::path::Path::new(DEFAULT_FOLDER) {
            return Err(ConnectError::NoFolder(dir.display().to_string()));
        }
        std::fs::create_dir_all(dir)?;
    }
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(Duration::from_secs(3))
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        // A connection to a local file does not go stale; sqlx's ping before every acquire
        // was a trip through the connection's worker thread before every statement.
        .test_before_acquire(false)
        // A commit that fails on I/O (a full disk) makes SQLite roll the transaction back by
        // itself; sqlx's own rollback then finds none and leaves the connection marked as in
        // a transaction for good, so every later write on it would fail ("begin_with at
        // non-zero transaction depth"). Such a connection is closed here instead of reused.
        .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
        .connect_with(options)
        .await?)
}

/// The SQLite migrations, embedded in the binary.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../../migrations/sqlite/0001_init.sql").into_sql_str(),
        false,
    )])
}
