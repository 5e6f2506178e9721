//! The `Store` port in SQL, on PostgreSQL or SQLite.
//!
//! Reads ([`reads`]) and most writes ([`writes`]) are written once and expanded for both pools by
//! [`on_pool!`], so the code stays concrete (no generic where-clause towers) and the two backends
//! cannot drift apart; where the dialects differ, the arm's [`Dialect`] picks the text. The hot
//! path is the exception: each backend commits the batching writer's batches its own way
//! ([`postgres::commit`], [`sqlite::commit`]), and expires old messages its own way (dropping
//! week partitions, or deleting in rounds). Rekeying lives in [`maintenance`].

use std::collections::HashMap;

use async_trait::async_trait;
use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, Mid, Seq, UserId};
use chat_actors::ports::{
    AppendBatch, Appended, ConversationRecord, HistoryRange, ListQuery, ListedConversation,
    MembershipChange, NewConversation, Purged, ReadMark, Store, StoreError,
};
use chat_actors::protocol::MessageObject;
use sqlx::{PgPool, SqlitePool};

use super::postgres::{self, partitions};
use super::rows::classify;
use super::sqlite;

/// Rows one round of the expiry job touches in one transaction: small enough that a send never
/// waits long behind it (on SQLite the writer and the job share one write lock), large enough
/// that a backlog clears quickly.
const PURGE_BATCH: u64 = 1000;

mod any_of;
mod maintenance;
mod pool;
mod reads;
mod routed;
mod writes;

pub use maintenance::StoredBody;
pub use pool::SqlStore;
use pool::{Pool, on_pool};

impl SqlStore {
    /// A store on PostgreSQL.
    pub fn postgres(pool: PgPool) -> Self {
        SqlStore {
            pool: Pool::Pg(pool),
            commits: None,
            replicas: None,
        }
    }

    /// The same store, committing the writer's batches on `commits`.
    pub fn with_commit_pool(self, commits: PgPool) -> Self {
        SqlStore {
            commits: Some(commits),
            ..self
        }
    }

    /// A store on SQLite.
    pub fn sqlite(pool: SqlitePool) -> Self {
        SqlStore {
            pool: Pool::Lite(pool),
            commits: None,
            replicas: None,
        }
    }

    /// Applies the backend's migrations (PostgreSQL takes an advisory lock, so nodes starting
    /// together are safe).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.pool {
            Pool::Pg(p) => postgres::migrator().run(p).await,
            Pool::Lite(p) => sqlite::migrator().run(p).await,
        }
    }

    /// Closes the pools (after the writer drained).
    pub async fn close(&self) {
        if let Some(commits) = &self.commits {
            commits.close().await;
        }
        on_pool!(self, |p, d| p.close().await)
    }

    /// How many commits the batching writer may have in flight: PostgreSQL commits on several
    /// connections at once; SQLite has one writer, and a second would only wait for its lock.
    pub fn write_concurrency(&self) -> usize {
        match self.pool {
            Pool::Pg(_) => postgres::COMMIT_CONNECTIONS as usize,
            Pool::Lite(_) => 1,
        }
    }

    /// The connection limit of the pool for everything but the writer's commits.
    pub fn pool_size(&self) -> u32 {
        on_pool!(self, |p, d| p.options().get_max_connections())
    }

    /// Whether the database answers a connection of its own, opened outside the pool (which may
    /// be full with calls the database is still serving); closed again at once.
    pub async fn ping_outside_pool(&self) -> Result<(), StoreError> {
        use sqlx::{ConnectOptions, Connection};
        on_pool!(self, |p, d| {
            let mut alone = p.connect_options().connect().await.map_err(classify)?;
            let answered = sqlx::query("SELECT 1").execute(&mut alone).await;
            let _ = alone.close().await;
            answered.map(|_| ()).map_err(classify)
        })
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Lite(_) => "sqlite",
        }
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |p, d| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ())
            .map_err(classify))
    }

    async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        SqlStore::load_conversation(self, id).await
    }

    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError> {
        SqlStore::create_conversation(self, new).await
    }

    async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended {
        SqlStore::append(self, batches, marks).await
    }

    async fn change_members(
        &self,
        conv: ConversationId,
        change: &MembershipChange,
    ) -> Result<(), StoreError> {
        SqlStore::change_members(self, conv, change).await
    }

    async fn set_reads(&self, marks: &[ReadMark]) -> Result<(), StoreError> {
        SqlStore::set_reads(self, marks).await
    }

    async fn set_muted(
        &self,
        conv: ConversationId,
        user: UserId,
        on: bool,
    ) -> Result<(), StoreError> {
        SqlStore::set_muted(self, conv, user, on).await
    }

    async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        SqlStore::history(self, conv, range, limit).await
    }

    async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError> {
        SqlStore::find_message(self, mid).await
    }

    async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError> {
        SqlStore::mark_deleted(self, mid, at).await
    }

    async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        SqlStore::last_message_and_unread(self, conv, user, last_read).await
    }

    async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        SqlStore::list_conversations(self, user, query).await
    }

    async fn agent_loads(&self, agents: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError> {
        SqlStore::agent_loads(self, agents).await
    }

    async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        SqlStore::businesses_among(self, ids).await
    }

    async fn purge(&self, retention_cutoff: i64, audit_cutoff: i64) -> Result<Purged, StoreError> {
        match &self.pool {
            // Weeks ahead first: the job is also what keeps them ready on a long-running node.
            Pool::Pg(p) => {
                partitions::prepare(p, now_ms()).await.map_err(classify)?;
                partitions::expire(p, retention_cutoff, audit_cutoff, PURGE_BATCH)
                    .await
                    .map_err(classify)
            }
            Pool::Lite(p) => {
                sqlite::expiry::purge(p, retention_cutoff, audit_cutoff, PURGE_BATCH).await
            }
        }
    }
}
