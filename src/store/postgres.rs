//! PostgreSQL specifics: connection options and the embedded migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// A pool whose every wait is bounded, so no request outlives PROTOCOL's 5 s.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .options([("statement_timeout", "4000"), ("lock_timeout", "3000")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(options)
        .await
}

/// The PostgreSQL migrations, embedded in the binary.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "init".into(),
        MigrationType::Simple,
        include_str!("../../migrations/postgres/0001_init.sql").into_sql_str(),
        false,
    )])
}
