//! PostgreSQL's write path: a commit of the batching writer is one statement that looks the
//! client's mids up, fences each conversation's order, stores the messages, files their mids
//! in the registry (see [`super::partitions`]) and moves the read pointers that came
//! meanwhile, so a commit is one round trip and one WAL flush.

use chat_actors::clock::now_ms;
use chat_actors::ports::{AppendBatch, ExistingMid, ReadMark, StoreError};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::partitions;
use crate::store::rows::{classify, existing_mid, leave_out_stored};

/// Moves read pointers forward (never back): the statement, its three arrays (conversations,
/// members, seqs) bound at the parameters named. One text for the pointers alone
/// ([`set_reads`]) and inside the commit's statement.
macro_rules! move_reads {
    ($convs:literal, $users:literal, $seqs:literal) => {
        concat!(
            "UPDATE members AS m SET last_read = r.seq FROM UNNEST(",
            $convs,
            "::uuid[], ",
            $users,
            "::uuid[], ",
            $seqs,
            "::int8[]) AS r(conv_id, user_id, seq) \
             WHERE m.conv_id = r.conv_id AND m.user_id = r.user_id AND m.last_read < r.seq"
        )
    };
}

/// The read pointers as the arrays [`move_reads!`] binds.
fn mark_columns(marks: &[ReadMark]) -> (Vec<Uuid>, Vec<Uuid>, Vec<i64>) {
    let (mut convs, mut users, mut seqs) = (
        Vec::with_capacity(marks.len()),
        Vec::with_capacity(marks.len()),
        Vec::with_capacity(marks.len()),
    );
    for m in marks {
        convs.push(m.conv.0);
        users.push(m.user.0);
        seqs.push(m.seq);
    }
    (convs, users, seqs)
}

/// Moves the read pointers `marks` in one statement (its own transaction, one WAL flush); the
/// columns bound as arrays keep the text the same whatever their number, prepared once.
pub async fn set_reads(pool: &PgPool, marks: &[ReadMark]) -> Result<(), StoreError> {
    let (convs, users, seqs) = mark_columns(marks);
    sqlx::query(move_reads!("$1", "$2", "$3"))
        .bind(&convs)
        .bind(&users)
        .bind(&seqs)
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(classify)
}

/// Stores the batches that none of whose `client_mids` is stored, and moves the read pointers
/// `marks`, in one statement on `pool`; answers each batch: stored, its mids found stored
/// before (`DuplicateMids`), or its conversation moved on meanwhile (`SeqTaken`). Err: the
/// statement failed as a whole (the marks with it).
/// `everywhere`: look stored mids up in the current span of the mid registry too (its unique
/// index catches them at the insert otherwise; see [`write_rows`]).
pub async fn append(
    pool: &PgPool,
    batches: &[AppendBatch],
    marks: &[ReadMark],
    client_mids: &[Uuid],
    everywhere: bool,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    // The look-up of stored mids travels in the write's own statement: a batch with one is left
    // out there and answered from the rows found. A mid stored between the look-up and the
    // insert fails the statement with a unique violation, which the caller isolates; nothing is
    // half written, as the one statement is its own transaction. A batch whose conversation
    // moved on meanwhile (another owner wrote) is left out too, and answered SeqTaken.
    let now = now_ms();
    let below = if everywhere {
        i64::MAX
    } else {
        partitions::MIDS.containing(now).start()
    };
    let (hits, fenced) = write_rows(pool, batches, marks, client_mids, now, below).await?;
    let (mut results, _) = leave_out_stored(batches, &hits);
    for (b, r) in batches.iter().zip(&mut results) {
        if r.is_ok() && fenced.contains(&b.conv.0) {
            *r = Err(StoreError::SeqTaken);
        }
    }
    Ok(results)
}

/// The write: the stored rows of `client_mids`, the messages of every batch none of whose
/// mids is stored, those conversations' new `last_seq` and the read pointers `marks`, in one
/// statement: one round trip and
/// one implicit transaction per commit. Whole columns are bound as arrays, so the statement text
/// is the same whatever the batch size: prepared once and cached. Answers the stored mids found
/// and the conversations whose `last_seq` was no longer the one the batch follows.
async fn write_rows(
    pool: &PgPool,
    batches: &[AppendBatch],
    marks: &[ReadMark],
    client_mids: &[Uuid],
    now: i64,
    filed_below: i64,
) -> Result<(Vec<ExistingMid>, Vec<Uuid>), StoreError> {
    let n: usize = batches.iter().map(|b| b.messages.len()).sum();
    let (mut convs, mut seqs, mut mids, mut senders) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut kinds, mut bodies, mut ats) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut ids = Vec::with_capacity(batches.len());
    let mut lasts = Vec::with_capacity(batches.len());
    let mut times = Vec::with_capacity(batches.len());
    let mut follows = Vec::with_capacity(batches.len());
    for b in batches {
        for m in &b.messages {
            convs.push(b.conv.0);
            seqs.push(m.seq);
            mids.push(m.mid.0);
            senders.push(m.sender.0);
            kinds.push(m.kind.as_str());
            bodies.push(m.body.as_str());
            ats.push(m.at);
        }
        if let (Some(first), Some(last)) = (b.messages.first(), b.messages.last()) {
            ids.push(b.conv.0);
            lasts.push(last.seq);
            times.push(last.at);
            follows.push(first.seq - 1);
        }
    }
    // A data-modifying WITH runs exactly once, whether or not the outer statement reads it, and
    // sees the table as it was before the statement: `hits` finds only rows stored earlier.
    // A batch is left out whole when one of its mids is stored (each commit names a
    // conversation once, so its conversation names it). The conversations are found with
    // `id = ANY(..)` (an index scan whatever the plan cache decides; a join with the unnested
    // ids was planned as a hash join over a sequential scan of the whole table while the table
    // was small).
    //
    // The order of a conversation is fenced here: its `last_seq` moves only from the seq the
    // batch follows (a compare-and-set), and its messages go in only where it moved. Two owners
    // for a moment both write the row; the second waits for the first's commit, then finds
    // `last_seq` changed and stores nothing. (The messages' own (conv_id, seq) index is unique
    // only within a week's partition.)
    //
    // Stored mids are looked up in the registry of mids (`message_mids`, [`super::partitions`])
    // and in the rows kept from before partitioning; every mid stored is filed there in the same
    // statement. The look-up skips the registry's current span (`filed_below`): its unique
    // index refuses a stored mid at the insert, which fails the statement (MidTaken) and makes
    // `append` run the commit again, looking everywhere. A retry the conversation's own cache
    // did not answer is rare; a probe of a large index with random keys for every message is
    // not (each span probed cost ~20 µs a message at 1,000 msgs/s).
    //
    // The read pointers ride along (`reads`): a commit of their own cost PostgreSQL a round trip
    // and a WAL flush each. They touch only `members`, which nothing else here writes; one
    // commit in flight at a time carries marks (the writer sees to it), so two of this node's
    // commits never lock the same members' rows.
    let (read_convs, read_users, read_seqs) = mark_columns(marks);
    let rows = sqlx::query(concat!(
        "WITH hits AS (\
           SELECT mid, conv_id, sender, seq, at FROM message_mids WHERE mid = ANY($11::uuid[]) AND filed < $14 \
           UNION SELECT mid, conv_id, sender, seq, at FROM messages_default WHERE mid = ANY($11::uuid[])), \
         guilty AS (\
           SELECT r.conv_id FROM UNNEST($3::uuid[], $1::uuid[]) AS r(mid, conv_id) \
           JOIN hits h ON h.mid = r.mid), \
         updated AS (\
           UPDATE conversations SET last_seq = ($9::int8[])[array_position($8::uuid[], id)], \
             last_activity = ($10::int8[])[array_position($8::uuid[], id)] \
           WHERE id = ANY($8::uuid[]) AND last_seq = ($12::int8[])[array_position($8::uuid[], id)] \
             AND id NOT IN (SELECT conv_id FROM guilty) \
           RETURNING id), \
         inserted AS (\
           INSERT INTO messages (conv_id, seq, mid, sender, kind, body, at) \
           SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::int8[]) \
             AS r(conv_id, seq, mid, sender, kind, body, at) \
           WHERE r.conv_id IN (SELECT id FROM updated)), \
         filed AS (\
           INSERT INTO message_mids (mid, conv_id, sender, seq, at, filed) \
           SELECT r.mid, r.conv_id, r.sender, r.seq, r.at, $13 \
           FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $7::int8[]) AS r(conv_id, seq, mid, sender, at) \
           WHERE r.conv_id IN (SELECT id FROM updated)), \
         reads AS (",
        move_reads!("$15", "$16", "$17"),
        ") \
         SELECT mid, conv_id, sender, seq, at FROM hits \
         UNION ALL \
         SELECT NULL::uuid, f.id, NULL::uuid, NULL::int8, NULL::int8 FROM UNNEST($8::uuid[]) AS f(id) \
         WHERE f.id NOT IN (SELECT id FROM updated) AND f.id NOT IN (SELECT conv_id FROM guilty)",
    ))
    .bind(&convs)
    .bind(&seqs)
    .bind(&mids)
    .bind(&senders)
    .bind(&kinds)
    .bind(&bodies)
    .bind(&ats)
    .bind(&ids)
    .bind(&lasts)
    .bind(&times)
    .bind(client_mids)
    .bind(&follows)
    .bind(now)
    .bind(filed_below)
    .bind(&read_convs)
    .bind(&read_users)
    .bind(&read_seqs)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    let mut hits = Vec::new();
    let mut fenced = Vec::new();
    for row in &rows {
        // A fenced conversation's row has no mid.
        match row.try_get::<Option<Uuid>, _>(0).map_err(classify)? {
            Some(_) => hits.push(existing_mid!(row)?),
            None => fenced.push(row.try_get::<Uuid, _>(1).map_err(classify)?),
        }
    }
    Ok((hits, fenced))
}
