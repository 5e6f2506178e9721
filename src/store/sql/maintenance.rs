//! Maintenance over the whole table, outside the hot path: re-encrypting stored bodies under a
//! new key in rounds (`chat-backend rekey` and the node's background rekey), and keeping
//! PostgreSQL's week partitions ready ahead of the clock.

use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, Mid, Seq};
use sqlx::Row;
use uuid::Uuid;

use super::pool::{Pool, SqlStore, begin_write, on_pool};
use crate::store::postgres::partitions;

/// A stored body, for re-encryption.
pub struct StoredBody {
    /// Where it is.
    pub conv: ConversationId,
    /// Where it is.
    pub seq: Seq,
    /// Its message's mid (the associated data of a sealed body).
    pub mid: Mid,
    /// Its message's time: on PostgreSQL, which week partition holds it.
    pub at: i64,
    /// As stored: sealed, or in the clear.
    pub body: String,
}

impl SqlStore {
    /// Up to `limit` bodies after `after` (in primary-key order) that do not begin with
    /// `prefix` (the current key's, [`crate::store::keyring::Keyring::current_prefix`]), with the
    /// position to continue from: one pass over the table for a whole rekey.
    pub async fn bodies_not_sealed_with(
        &self,
        prefix: &str,
        after: Option<(ConversationId, Seq)>,
        limit: u64,
    ) -> Result<Vec<StoredBody>, sqlx::Error> {
        let (conv, seq) = after.map_or((Uuid::nil(), 0), |(c, s)| (c.0, s));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        on_pool!(self, |p, _d| {
            let rows = sqlx::query(
                "SELECT conv_id, seq, mid, body, at FROM messages \
                 WHERE (conv_id, seq) > ($1, $2) AND body IS NOT NULL \
                 AND substr(body, 1, $3) <> $4 ORDER BY conv_id, seq LIMIT $5",
            )
            .bind(conv)
            .bind(seq)
            .bind(i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX))
            .bind(prefix)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredBody {
                        conv: ConversationId(row.try_get::<Uuid, _>(0)?),
                        seq: row.try_get(1)?,
                        mid: Mid(row.try_get::<Uuid, _>(2)?),
                        body: row.try_get(3)?,
                        at: row.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    /// Replaces each of `rows`' bodies with the matching one of `bodies`, in one transaction,
    /// where the body is still what was read (one erased or removed meanwhile stays so);
    /// returns how many changed.
    pub async fn replace_bodies(
        &self,
        rows: &[StoredBody],
        bodies: &[String],
    ) -> Result<u64, sqlx::Error> {
        on_pool!(self, |p, d| {
            let mut tx = begin_write!(p, d)?;
            let mut changed = 0;
            for (row, body) in rows.iter().zip(bodies) {
                changed += sqlx::query(
                    "UPDATE messages SET body = $1 WHERE conv_id = $2 AND seq = $3 AND body = $4 \
                     AND at = $5",
                )
                .bind(body)
                .bind(row.conv.0)
                .bind(row.seq)
                .bind(&row.body)
                .bind(row.at)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Creates PostgreSQL's week partitions up to two weeks ahead (nothing on SQLite): before a
    /// node serves, so every message it stores has its table.
    pub async fn prepare_partitions(&self) -> Result<u64, sqlx::Error> {
        match &self.pool {
            Pool::Pg(p) => partitions::prepare(p, now_ms()).await,
            Pool::Lite(_) => Ok(0),
        }
    }
}
