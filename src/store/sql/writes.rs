//! The port's writes: creating a conversation, the batching writer's commits (each backend's
//! own write path, behind one retry policy), membership changes with their system message,
//! read marks, mutes and deletion marks. A conversation's order is fenced in the database as
//! well as by its owner: `last_seq` moves only from the seq a write follows.

use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, Mid, UserId};
use chat_actors::ports::{
    AppendBatch, Appended, ConversationRecord, MembershipChange, NewConversation, ReadMark,
    StoreError,
};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::pool::{Dialect, Pool, SqlStore, begin_write, on_pool};
use crate::store::postgres::{self, partitions};
use crate::store::rows::classify;
use crate::store::sqlite;

impl SqlStore {
    pub(super) async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError> {
        let r = &new.record;
        let existing: Option<Uuid> = on_pool!(self, |p, d| {
            let mut tx = begin_write!(p, d).map_err(classify)?;
            let inserted = sqlx::query(
                "INSERT INTO conversations (id, kind, name, business, unique_key, created_at, last_seq, last_activity) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, $7) ON CONFLICT (unique_key) DO NOTHING",
            )
            .bind(r.id.0)
            .bind(r.kind.as_str())
            .bind(r.name.clone())
            .bind(r.business.map(|b| b.0))
            .bind(new.unique_key.clone())
            .bind(r.created_at)
            .bind(r.last_activity)
            .execute(&mut *tx)
            .await
            .map_err(classify)?
            .rows_affected();
            if inserted == 0 {
                let id: Uuid =
                    sqlx::query_scalar("SELECT id FROM conversations WHERE unique_key = $1")
                        .bind(new.unique_key.clone())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(classify)?;
                Some(id)
            } else {
                let mut q = QueryBuilder::new(
                    "INSERT INTO members (conv_id, user_id, role, last_read, muted, joined) ",
                );
                q.push_values(&r.members, |mut row, m| {
                    row.push_bind(r.id.0)
                        .push_bind(m.user.0)
                        .push_bind(m.role.as_str())
                        .push_bind(m.last_read)
                        .push_bind(m.muted)
                        .push_bind(m.joined);
                });
                q.build().execute(&mut *tx).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                None
            }
        });
        match existing {
            None => Ok((new.record, true)),
            Some(id) => {
                let record = self
                    .load_conversation(ConversationId(id))
                    .await?
                    .ok_or(StoreError::NotFound)?;
                Ok((record, false))
            }
        }
    }

    pub(super) async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended {
        if batches.is_empty() {
            return Appended {
                batches: Vec::new(),
                marks: self.set_reads(marks).await,
            };
        }
        let mut outcome = self.append_once(batches, marks, false).await;
        if matches!(outcome, Err(StoreError::MidTaken)) {
            // Most likely a retry whose mid is in the registry's current span, which the first
            // look-up skips: the same commit again, looking everywhere, leaves its batch out
            // and stores the others in one statement (after a node's failover many resent
            // mids come at once; each must not split its commit into one statement a batch).
            outcome = self.append_once(batches, marks, true).await;
        }
        let e = match outcome {
            Ok(results) => {
                return Appended {
                    batches: results,
                    marks: Ok(()),
                };
            }
            Err(e) => e,
        };
        if !is_race(&e) {
            let why = e.to_string();
            let mut refused = Appended::refused(batches.len(), marks, || {
                StoreError::Unavailable(why.clone().into())
            });
            // The first batch tells the cause as it came.
            refused.batches[0] = Err(e);
            return refused;
        }
        // A race with another writer (two owners for a moment, or a mid stored meanwhile):
        // retry each batch alone, looking everywhere, so the others still commit and only the
        // guilty batch is refused — with SeqTaken (its conversation reloads and renumbers) or,
        // its mid now found by the look-up, DuplicateMids. The marks, which no race concerns,
        // go on their own.
        let results = if batches.len() > 1 || matches!(e, StoreError::MidTaken) {
            let mut results = Vec::with_capacity(batches.len());
            for b in batches {
                let one = self.append_once(std::slice::from_ref(b), &[], true).await;
                results.push(match one {
                    Ok(mut r) => r.pop().unwrap_or(Ok(())),
                    Err(e) => Err(e),
                });
            }
            results
        } else {
            vec![Err(e)]
        };
        Appended {
            batches: results,
            marks: self.set_reads(marks).await,
        }
    }

    pub(super) async fn change_members(
        &self,
        conv: ConversationId,
        change: &MembershipChange,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let mut tx = begin_write!(p, d).map_err(classify)?;
            for user in &change.remove {
                sqlx::query("DELETE FROM members WHERE conv_id = $1 AND user_id = $2")
                    .bind(conv.0)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            for m in &change.add {
                sqlx::query(
                    "INSERT INTO members (conv_id, user_id, role, last_read, muted, joined) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(conv.0)
                .bind(m.user.0)
                .bind(m.role.as_str())
                .bind(m.last_read)
                .bind(m.muted)
                .bind(m.joined)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            }
            for (user, role) in &change.roles {
                sqlx::query("UPDATE members SET role = $1 WHERE conv_id = $2 AND user_id = $3")
                    .bind(role.as_str())
                    .bind(conv.0)
                    .bind(user.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
            }
            if let Some(m) = &change.system {
                // The same fence as a commit's: `last_seq` moves only from the seq before this
                // message; another owner who wrote meanwhile makes this change SeqTaken (the
                // transaction rolls back when dropped).
                let moved = sqlx::query(
                    "UPDATE conversations SET last_seq = $1, last_activity = $2 \
                     WHERE id = $3 AND last_seq = $4",
                )
                .bind(m.seq)
                .bind(m.at)
                .bind(conv.0)
                .bind(m.seq - 1)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
                if moved == 0 {
                    return Err(StoreError::SeqTaken);
                }
                sqlx::query(
                    "INSERT INTO messages (conv_id, seq, mid, sender, kind, body, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(conv.0)
                .bind(m.seq)
                .bind(m.mid.0)
                .bind(m.sender.0)
                .bind(m.kind.clone())
                .bind(m.body.clone())
                .bind(m.at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                if d == Dialect::Pg {
                    sqlx::query(
                        "INSERT INTO message_mids (mid, conv_id, sender, seq, at, filed) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(m.mid.0)
                    .bind(conv.0)
                    .bind(m.sender.0)
                    .bind(m.seq)
                    .bind(m.at)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                }
            }
            tx.commit().await.map_err(classify)
        })
    }

    pub(super) async fn set_reads(&self, marks: &[ReadMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        match &self.pool {
            Pool::Pg(p) => postgres::commit::set_reads(p, marks).await,
            Pool::Lite(p) => {
                let mut tx = begin_write!(p, Dialect::Lite).map_err(classify)?;
                sqlite::commit::move_reads(&mut tx, marks)
                    .await
                    .map_err(classify)?;
                tx.commit().await.map_err(classify)
            }
        }
    }

    pub(super) async fn set_muted(
        &self,
        conv: ConversationId,
        user: UserId,
        on: bool,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p, d| sqlx::query(
            "UPDATE members SET muted = $1 WHERE conv_id = $2 AND user_id = $3"
        )
        .bind(on)
        .bind(conv.0)
        .bind(user.0)
        .execute(p)
        .await
        .map(|_| ())
        .map_err(classify))
    }

    pub(super) async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new("UPDATE messages SET deleted_at = ");
            q.push_bind(at)
                .push(" WHERE deleted_at IS NULL AND mid = ")
                .push_bind(mid.0);
            if d == Dialect::Pg {
                partitions::push_located(&mut q, mid);
            }
            q.build().execute(p).await.map(|_| ()).map_err(classify)
        })
    }

    /// One transaction for the batches and the marks on the backend's write path; Err means the
    /// whole transaction failed. `everywhere`: see [`postgres::commit::append`].
    async fn append_once(
        &self,
        batches: &[AppendBatch],
        marks: &[ReadMark],
        everywhere: bool,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // Client-chosen mids may be stored already (a retry, or a clash): find them first, so
        // the batches they belong to are left out instead of failing the transaction.
        let client_mids: Vec<Uuid> = batches
            .iter()
            .flat_map(|b| b.messages.iter())
            .filter(|m| m.client_mid)
            .map(|m| m.mid.0)
            .collect();
        match &self.pool {
            Pool::Pg(p) => {
                let commits = self.commits.as_ref().unwrap_or(p);
                postgres::commit::append(commits, batches, marks, &client_mids, everywhere).await
            }
            Pool::Lite(p) => sqlite::commit::append(p, batches, marks, &client_mids).await,
        }
    }
}

/// Whether a failed commit is a race with another writer over one batch's rows, which retrying
/// each batch alone isolates (and, for a mid, answers from the stored row).
fn is_race(e: &StoreError) -> bool {
    matches!(e, StoreError::SeqTaken | StoreError::MidTaken)
}
