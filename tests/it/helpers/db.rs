//! Fresh databases: a SQLite file in a temp dir, or a PostgreSQL database of its own, dropped
//! with the test; and the admin statements that cut a test's database off and let it back.

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::{SECONDS_5, eventually};

/// The two storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL admin URL the tests create databases with.
pub fn pg_admin_url() -> String {
    std::env::var("CHAT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database, removed when dropped.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/chat.db", dir.path().display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("chat_test_{}", Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("PostgreSQL must run for the tests");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let base = admin.rsplit_once('/').unwrap().0;
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&pg_admin_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// Runs one statement as the PostgreSQL admin.
pub async fn admin(sql: String) {
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Cuts the node off its database (only this test's database: others go on), or lets it back.
pub async fn outage(db_name: &str, down: bool) {
    admin(format!(
        "ALTER DATABASE {db_name} WITH ALLOW_CONNECTIONS {}",
        !down
    ))
    .await;
    if !down {
        return;
    }
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}'"
    ))
    .await;
    // Termination is a signal: wait until every backend of the database is gone.
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    let gone = async || {
        let left: i64 = sqlx::query("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(db_name)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    };
    let terminated = "every backend of the database is gone";
    eventually(SECONDS_5, Duration::from_millis(20), terminated, gone).await;
    pool.close().await;
}
