//! SQLite's write path: a commit of the batching writer is one `BEGIN IMMEDIATE` transaction
//! (SQLite has one writer) that looks the client's mids up, then stores the other batches'
//! messages and moves their conversations' `last_seq` with multi-row statements, and the read
//! pointers that came meanwhile.

use chat_actors::ids::ConversationId;
use chat_actors::ports::{AppendBatch, ExistingMid, NewMessage, ReadMark, StoreError};
use sqlx::{QueryBuilder, Row, SqlitePool};
use uuid::Uuid;

use crate::store::rows::{classify, existing_mid, leave_out_stored};

/// The most rows in one multi-row statement (SQLite allows 32766 parameters).
const ROWS_PER_STATEMENT: usize = 2000;

/// Stores the batches none of whose `client_mids` is stored, and moves the read pointers
/// `marks`, in one transaction on `pool`; answers each batch: stored, or its mids found stored
/// before (`DuplicateMids`). Err: the transaction failed as a whole (the marks with it).
pub async fn append(
    pool: &SqlitePool,
    batches: &[AppendBatch],
    marks: &[ReadMark],
    client_mids: &[Uuid],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?;
    let mut hits: Vec<ExistingMid> = Vec::new();
    for chunk in client_mids.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::new("SELECT mid, conv_id, sender, seq, at FROM messages WHERE mid IN (");
        let mut list = q.separated(", ");
        for mid in chunk {
            list.push_bind(*mid);
        }
        q.push(")");
        let rows = q.build().fetch_all(&mut *tx).await.map_err(classify)?;
        for row in &rows {
            hits.push(existing_mid!(row)?);
        }
    }
    let (results, kept) = leave_out_stored(batches, &hits);
    write_rows(&mut tx, &kept).await.map_err(classify)?;
    move_reads(&mut tx, marks).await.map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    Ok(results)
}

/// Moves read pointers forward (never back) inside the caller's transaction. SQLite has no
/// arrays to bind; statements are cheap in-process, the commit is not.
pub async fn move_reads(
    conn: &mut sqlx::SqliteConnection,
    marks: &[ReadMark],
) -> Result<(), sqlx::Error> {
    for m in marks {
        sqlx::query(
            "UPDATE members SET last_read = $1 \
             WHERE conv_id = $2 AND user_id = $3 AND last_read < $1",
        )
        .bind(m.seq)
        .bind(m.conv.0)
        .bind(m.user.0)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The rows, in process: multi-row `VALUES`, inside the caller's `BEGIN IMMEDIATE` transaction.
async fn write_rows(
    conn: &mut sqlx::SqliteConnection,
    kept: &[&AppendBatch],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(ConversationId, &NewMessage)> = kept
        .iter()
        .flat_map(|b| b.messages.iter().map(move |m| (b.conv, m)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q =
            QueryBuilder::new("INSERT INTO messages (conv_id, seq, mid, sender, kind, body, at) ");
        q.push_values(chunk, |mut row, (conv, m)| {
            row.push_bind(conv.0)
                .push_bind(m.seq)
                .push_bind(m.mid.0)
                .push_bind(m.sender.0)
                .push_bind(m.kind.as_str())
                .push_bind(m.body.as_str())
                .push_bind(m.at);
        });
        q.build().execute(&mut *conn).await?;
    }
    for chunk in kept.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::new(
            "UPDATE conversations SET last_seq = v.column2, last_activity = v.column3 FROM (",
        );
        q.push_values(chunk, |mut row, b| {
            let last = b.messages.last();
            row.push_bind(b.conv.0)
                .push_bind(last.map(|m| m.seq).unwrap_or(0))
                .push_bind(last.map(|m| m.at).unwrap_or(0));
        });
        q.push(") AS v WHERE conversations.id = v.column1");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
