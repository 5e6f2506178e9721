//! SQLite's expiry: bodies of deleted messages erased after the audit period and messages past
//! retention removed, in rounds of their own transactions so the writer, which shares SQLite's
//! one write lock, never waits long behind the job.

use chat_actors::ports::{Purged, StoreError};
use sqlx::SqlitePool;

use crate::store::rows::classify;

/// Runs rounds of up to `batch` rows each until a round finds less than a full batch.
pub async fn purge(
    pool: &SqlitePool,
    retention_cutoff: i64,
    audit_cutoff: i64,
    batch: u64,
) -> Result<Purged, StoreError> {
    let mut done = Purged::default();
    loop {
        let (erased, removed) = purge_round(pool, retention_cutoff, audit_cutoff, batch).await?;
        done.erased += erased;
        done.removed += removed;
        if erased < batch && removed < batch {
            return Ok(done);
        }
    }
}

/// One round of the expiry job, its own transaction: erases up to `limit` deleted
/// bodies past the audit period and removes up to `limit` messages past retention.
async fn purge_round(
    pool: &SqlitePool,
    retention_cutoff: i64,
    audit_cutoff: i64,
    limit: u64,
) -> Result<(u64, u64), StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?;
    let erased = sqlx::query(
        "UPDATE messages SET body = NULL WHERE (conv_id, seq) IN (SELECT conv_id, seq \
         FROM messages WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
         AND body IS NOT NULL LIMIT $2)",
    )
    .bind(audit_cutoff)
    .bind(limit)
    .execute(&mut *tx)
    .await
    .map_err(classify)?
    .rows_affected();
    let removed = sqlx::query(
        "DELETE FROM messages WHERE (conv_id, seq) IN (SELECT conv_id, seq \
         FROM messages WHERE at < $1 LIMIT $2)",
    )
    .bind(retention_cutoff)
    .bind(limit)
    .execute(&mut *tx)
    .await
    .map_err(classify)?
    .rows_affected();
    tx.commit().await.map_err(classify)?;
    Ok((erased, removed))
}
