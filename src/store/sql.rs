//! The `Store` port in SQL shared by both backends.
//!
//! Each method is written once and expanded for both pools by [`on_pool!`], so the code stays
//! concrete (no generic where-clause towers) and the two backends cannot drift apart. Where the
//! dialects differ, the arm's [`Dialect`] picks the text.

use std::collections::HashMap;

use async_trait::async_trait;
use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, Mid, Seq, UserId};
use chat_actors::ports::{
    AppendBatch, ConversationRecord, ExistingMid, HistoryRange, ListQuery, ListedConversation,
    MemberRecord, MembershipChange, NewConversation, Purged, Store, StoreError,
};
use chat_actors::protocol::{ConversationKind, MessageObject, Role};
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};
use uuid::Uuid;

use super::partitions;

/// The most rows in one multi-row statement (SQLite allows 32766 parameters).
const ROWS_PER_STATEMENT: usize = 2000;

/// PostgreSQL: narrows a `WHERE … mid = …` on `messages` to where that message is, found in
/// the registry of mids (or among the rows kept from before partitioning): weeks have no mid
/// index of their own, and the `at` found names the one week to look in (an init-plan, so
/// PostgreSQL prunes the others when it runs the statement).
fn push_located<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, mid: Mid)
where
    for<'t> Uuid: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    q.push(" AND (conv_id, seq, at) = (SELECT conv_id, seq, at FROM message_mids WHERE mid = ")
        .push_bind(mid.0)
        .push(" UNION ALL SELECT conv_id, seq, at FROM messages_default WHERE mid = ")
        .push_bind(mid.0)
        .push(" LIMIT 1)");
}

/// The columns of a message, in the order [`message!`] reads them. A deleted body is hidden.
const MESSAGE_COLUMNS: &str = "conv_id, seq, mid, sender, kind, \
     CASE WHEN deleted_at IS NULL THEN body END AS body, at, deleted_at";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Pg,
    Lite,
}

#[derive(Clone)]
enum Pool {
    Pg(PgPool),
    Lite(SqlitePool),
}

/// The SQL store over one of the two pools.
#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    /// PostgreSQL: where the writer's commits go, when not on `pool` (see `postgres::connect`).
    commits: Option<PgPool>,
}

/// Runs `$body` with `$p` bound to the concrete pool and `$d` to its dialect.
macro_rules! on_pool {
    ($store:expr, |$p:ident, $d:ident| $body:expr) => {
        match &$store.pool {
            Pool::Pg($p) => {
                #[allow(unused_variables)]
                let $d = Dialect::Pg;
                $body
            }
            Pool::Lite($p) => {
                #[allow(unused_variables)]
                let $d = Dialect::Lite;
                $body
            }
        }
    };
}

/// Begins a write transaction: on SQLite `BEGIN IMMEDIATE` takes the write lock up front, so two
/// writers queue on the busy timeout instead of failing at commit.
macro_rules! begin_write {
    ($p:expr, $d:expr) => {
        match $d {
            Dialect::Lite => $p.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Pg => $p.begin().await,
        }
    };
}

/// Reads a message from a row selected with [`MESSAGE_COLUMNS`].
macro_rules! message {
    ($row:expr) => {{
        let row = $row;
        MessageObject {
            conv: ConversationId(row.try_get::<Uuid, _>(0)?),
            seq: row.try_get::<i64, _>(1)?,
            mid: Mid(row.try_get::<Uuid, _>(2)?),
            from: UserId(row.try_get::<Uuid, _>(3)?),
            kind: row.try_get::<String, _>(4)?,
            body: row.try_get::<Option<String>, _>(5)?,
            at: row.try_get::<i64, _>(6)?,
            deleted_at: row.try_get::<Option<i64>, _>(7)?,
        }
    }};
}

/// Reads a conversation (without members) from `id, kind, name, business, created_at, last_seq,
/// last_activity`.
macro_rules! conversation {
    ($row:expr) => {{
        let row = $row;
        let kind: String = row.try_get(1)?;
        ConversationRecord {
            id: ConversationId(row.try_get::<Uuid, _>(0)?),
            kind: ConversationKind::parse(&kind).ok_or_else(|| corrupt("conversation kind"))?,
            name: row.try_get::<Option<String>, _>(2)?,
            business: row.try_get::<Option<Uuid>, _>(3)?.map(UserId),
            created_at: row.try_get::<i64, _>(4)?,
            last_seq: row.try_get::<i64, _>(5)?,
            last_activity: row.try_get::<i64, _>(6)?,
            members: Vec::new(),
        }
    }};
}

/// Reads a member from `user_id, role, last_read, muted, joined`, starting at column `$at`.
macro_rules! member {
    ($row:expr, $at:expr) => {{
        let row = $row;
        let role: String = row.try_get($at + 1)?;
        MemberRecord {
            user: UserId(row.try_get::<Uuid, _>($at)?),
            role: Role::parse(&role).ok_or_else(|| corrupt("member role"))?,
            last_read: row.try_get::<i64, _>($at + 2)?,
            muted: row.try_get::<bool, _>($at + 3)?,
            joined: row.try_get::<i64, _>($at + 4)?,
        }
    }};
}

/// Reads an `ExistingMid` from `mid, conv_id, sender, seq, at`.
macro_rules! existing_mid {
    ($row:expr) => {{
        let row = $row;
        let read = || -> Result<ExistingMid, sqlx::Error> {
            Ok(ExistingMid {
                mid: Mid(row.try_get(0)?),
                conv: ConversationId(row.try_get(1)?),
                sender: UserId(row.try_get(2)?),
                seq: row.try_get(3)?,
                at: row.try_get(4)?,
            })
        };
        read().map_err(classify)
    }};
}

fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {what} in the database").into())
}

/// Converts a driver error once, by what the caller does next. A unique violation is told apart
/// by the constraint it broke: PostgreSQL names it (a partition's index: `messages_20261130_mid`,
/// `message_mids_20261130_mid`, `messages_default_pkey`); SQLite names the columns in its
/// message.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            let named = |suffixes: &[&str], columns: &str| {
                db.constraint().is_some_and(|c| {
                    c.starts_with("message") && suffixes.iter().any(|s| c.ends_with(s))
                }) || db.message().contains(columns)
            };
            if named(&["_pkey", "_seq"], "messages.conv_id, messages.seq") {
                StoreError::SeqTaken
            } else if named(&["_mid"], "messages.mid") {
                StoreError::MidTaken
            } else {
                StoreError::Refused(db.message().to_owned())
            }
        }
        // A rule of the data (foreign key, check, not null): retrying cannot help.
        sqlx::Error::Database(db) if db.is_foreign_key_violation() || db.is_check_violation() => {
            StoreError::Refused(db.message().to_owned())
        }
        sqlx::Error::RowNotFound => StoreError::NotFound,
        _ => StoreError::Unavailable(Box::new(e)),
    }
}

/// Whether a failed commit is a race with another writer over one batch's rows, which retrying
/// each batch alone isolates (and, for a mid, answers from the stored row).
fn is_race(e: &StoreError) -> bool {
    matches!(e, StoreError::SeqTaken | StoreError::MidTaken)
}

impl SqlStore {
    /// A store on PostgreSQL.
    pub fn postgres(pool: PgPool) -> Self {
        SqlStore {
            pool: Pool::Pg(pool),
            commits: None,
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
        }
    }

    /// Applies the backend's migrations (PostgreSQL takes an advisory lock, so nodes starting
    /// together are safe).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.pool {
            Pool::Pg(p) => super::postgres::migrator().run(p).await,
            Pool::Lite(p) => super::sqlite::migrator().run(p).await,
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
            Pool::Pg(_) => super::postgres::COMMIT_CONNECTIONS as usize,
            Pool::Lite(_) => 1,
        }
    }

    /// The connection limit of the pool for everything but the writer's commits.
    pub fn pool_size(&self) -> u32 {
        on_pool!(self, |p, d| p.options().get_max_connections())
    }

    /// Which backend this is, for logs.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Pg(_) => "postgres",
            Pool::Lite(_) => "sqlite",
        }
    }

    async fn load_members(
        &self,
        convs: &[ConversationId],
    ) -> Result<HashMap<ConversationId, Vec<MemberRecord>>, sqlx::Error> {
        let mut out: HashMap<ConversationId, Vec<MemberRecord>> = HashMap::new();
        if convs.is_empty() {
            return Ok(out);
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT conv_id, user_id, role, last_read, muted, joined FROM members WHERE conv_id IN (",
            );
            let mut list = q.separated(", ");
            for c in convs {
                list.push_bind(c.0);
            }
            q.push(") ORDER BY joined");
            for row in q.build().fetch_all(p).await? {
                let conv = ConversationId(row.try_get::<Uuid, _>(0)?);
                out.entry(conv).or_default().push(member!(&row, 1));
            }
            Ok(out)
        })
    }

    /// One transaction for the batches; Err means the whole transaction failed. `everywhere`:
    /// look stored mids up in the current span of PostgreSQL's mid registry too (its unique
    /// index catches them at insert otherwise; see `pg_write_rows`).
    async fn append_once(
        &self,
        batches: &[AppendBatch],
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
                // The look-up of stored mids travels in the write's own statement: a batch with
                // one is left out there and answered from the rows found. A mid stored between
                // the look-up and the insert fails the statement with a unique violation, which
                // `append` isolates; nothing is half written, as the one statement is its own
                // transaction. A batch whose conversation moved on meanwhile (another owner
                // wrote) is left out too, and answered SeqTaken.
                let now = now_ms();
                let below = if everywhere {
                    i64::MAX
                } else {
                    partitions::MIDS.containing(now).start()
                };
                let commits = self.commits.as_ref().unwrap_or(p);
                let (hits, fenced) =
                    pg_write_rows(commits, batches, &client_mids, now, below).await?;
                let (mut results, _) = leave_out_stored(batches, &hits);
                for (b, r) in batches.iter().zip(&mut results) {
                    if r.is_ok() && fenced.contains(&b.conv.0) {
                        *r = Err(StoreError::SeqTaken);
                    }
                }
                Ok(results)
            }
            Pool::Lite(p) => {
                let mut tx = begin_write!(p, Dialect::Lite).map_err(classify)?;
                let mut hits: Vec<ExistingMid> = Vec::new();
                for chunk in client_mids.chunks(ROWS_PER_STATEMENT) {
                    let mut q = QueryBuilder::new(
                        "SELECT mid, conv_id, sender, seq, at FROM messages WHERE mid IN (",
                    );
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
                lite_write_rows(&mut tx, &kept).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(results)
            }
        }
    }
}

/// Splits the batches into those to write and, for each batch, its result: a batch with a mid
/// already stored is answered with those mids and not written.
fn leave_out_stored<'a>(
    batches: &'a [AppendBatch],
    hits: &[ExistingMid],
) -> (Vec<Result<(), StoreError>>, Vec<&'a AppendBatch>) {
    let mut results = Vec::with_capacity(batches.len());
    let mut kept = Vec::with_capacity(batches.len());
    for b in batches {
        let mine: Vec<ExistingMid> = hits
            .iter()
            .filter(|h| b.messages.iter().any(|m| m.mid == h.mid))
            .cloned()
            .collect();
        if mine.is_empty() {
            kept.push(b);
            results.push(Ok(()));
        } else {
            results.push(Err(StoreError::DuplicateMids(mine)));
        }
    }
    (results, kept)
}

/// PostgreSQL: the stored rows of `client_mids`, the messages of every batch none of whose
/// mids is stored, and those conversations' new `last_seq`, in one statement: one round trip and
/// one implicit transaction per commit. Whole columns are bound as arrays, so the statement text
/// is the same whatever the batch size: prepared once and cached. Answers the stored mids found
/// and the conversations whose `last_seq` was no longer the one the batch follows.
async fn pg_write_rows(
    pool: &PgPool,
    batches: &[AppendBatch],
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
    // Stored mids are looked up in the registry of mids (`message_mids`, src/store/partitions.rs)
    // and in the rows kept from before partitioning; every mid stored is filed there in the same
    // statement. The look-up skips the registry's current span (`filed_below`): its unique
    // index refuses a stored mid at the insert, which fails the statement (MidTaken) and makes
    // `append` run the commit again, looking everywhere. A retry the conversation's own cache
    // did not answer is rare; a probe of a large index with random keys for every message is
    // not (each span probed cost ~20 µs a message at 1,000 msgs/s).
    let rows = sqlx::query(
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
           WHERE r.conv_id IN (SELECT id FROM updated)) \
         SELECT mid, conv_id, sender, seq, at FROM hits \
         UNION ALL \
         SELECT NULL::uuid, f.id, NULL::uuid, NULL::int8, NULL::int8 FROM UNNEST($8::uuid[]) AS f(id) \
         WHERE f.id NOT IN (SELECT id FROM updated) AND f.id NOT IN (SELECT conv_id FROM guilty)",
    )
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

/// SQLite, in process: multi-row `VALUES`, inside the caller's `BEGIN IMMEDIATE` transaction.
async fn lite_write_rows(
    conn: &mut sqlx::SqliteConnection,
    kept: &[&AppendBatch],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(ConversationId, &chat_actors::ports::NewMessage)> = kept
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

/// SQLite: one round of the expiry job, its own transaction: erases up to `limit` deleted
/// bodies past the audit period and removes up to `limit` messages past retention.
async fn lite_purge_round(
    pool: &SqlitePool,
    retention_cutoff: i64,
    audit_cutoff: i64,
    limit: u64,
) -> Result<(u64, u64), StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut tx = begin_write!(pool, Dialect::Lite).map_err(classify)?;
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
        let found = on_pool!(self, |p, d| {
            let row = sqlx::query(
                "SELECT id, kind, name, business, created_at, last_seq, last_activity \
                 FROM conversations WHERE id = $1",
            )
            .bind(id.0)
            .fetch_optional(p)
            .await
            .map_err(classify)?;
            match row {
                Some(row) => {
                    let read =
                        || -> Result<ConversationRecord, sqlx::Error> { Ok(conversation!(&row)) };
                    Some(read().map_err(classify)?)
                }
                None => None,
            }
        });
        let Some(mut record) = found else {
            return Ok(None);
        };
        let mut members = self.load_members(&[id]).await.map_err(classify)?;
        record.members = members.remove(&id).unwrap_or_default();
        Ok(Some(record))
    }

    async fn create_conversation(
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

    async fn append(&self, batches: &[AppendBatch]) -> Vec<Result<(), StoreError>> {
        let mut outcome = self.append_once(batches, false).await;
        if matches!(outcome, Err(StoreError::MidTaken)) {
            // Most likely a retry whose mid is in the registry's current span, which the first
            // look-up skips: the same commit again, looking everywhere, leaves its batch out
            // and stores the others in one statement (after a node's failover many resent
            // mids come at once; each must not split its commit into one statement a batch).
            outcome = self.append_once(batches, true).await;
        }
        match outcome {
            Ok(results) => results,
            // A race with another writer (two owners for a moment, or a mid stored meanwhile):
            // retry each batch alone, looking everywhere, so the others still commit and only
            // the guilty batch is refused — with SeqTaken (its conversation reloads and
            // renumbers) or, its mid now found by the look-up, DuplicateMids.
            Err(e) if is_race(&e) && (batches.len() > 1 || matches!(e, StoreError::MidTaken)) => {
                let mut results = Vec::with_capacity(batches.len());
                for b in batches {
                    let one = self.append_once(std::slice::from_ref(b), true).await;
                    results.push(match one {
                        Ok(mut r) => r.pop().unwrap_or(Ok(())),
                        Err(e) => Err(e),
                    });
                }
                results
            }
            Err(e) => {
                let why = e.to_string();
                let mut results = vec![Err(e)];
                results.extend(
                    (1..batches.len()).map(|_| Err(StoreError::Unavailable(why.clone().into()))),
                );
                results
            }
        }
    }

    async fn change_members(
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

    async fn set_read(
        &self,
        conv: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            sqlx::query(
            "UPDATE members SET last_read = $1 WHERE conv_id = $2 AND user_id = $3 AND last_read < $1"
        )
        .bind(seq)
        .bind(conv.0)
        .bind(user.0)
        .execute(p)
        .await
        .map(|_| ())
        .map_err(classify)
        })
    }

    async fn set_muted(
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

    async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        let fetch = limit as i64 + 1;
        let mut messages = on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_id = "
            ));
            q.push_bind(conv.0);
            match range {
                HistoryRange::After(a, below) => {
                    q.push(" AND seq > ").push_bind(a);
                    if let Some(b) = below {
                        q.push(" AND seq < ").push_bind(b);
                    }
                    q.push(" ORDER BY seq ASC");
                }
                HistoryRange::Before(b) => {
                    q.push(" AND seq < ")
                        .push_bind(b)
                        .push(" ORDER BY seq DESC");
                }
                HistoryRange::Newest => {
                    q.push(" ORDER BY seq DESC");
                }
            }
            q.push(" LIMIT ").push_bind(fetch);
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            let read = || -> Result<Vec<MessageObject>, sqlx::Error> {
                rows.iter().map(|r| Ok(message!(r))).collect()
            };
            read().map_err(classify)?
        });
        let more = messages.len() > limit;
        messages.truncate(limit);
        if !matches!(range, HistoryRange::After(..)) {
            messages.reverse();
        }
        Ok((messages, more))
    }

    async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError> {
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE mid = "
            ));
            q.push_bind(mid.0);
            if d == Dialect::Pg {
                push_located(&mut q, mid);
            }
            let row = q.build().fetch_optional(p).await.map_err(classify)?;
            match row {
                Some(row) => {
                    let read = || -> Result<MessageObject, sqlx::Error> { Ok(message!(&row)) };
                    Ok(Some(read().map_err(classify)?))
                }
                None => Ok(None),
            }
        })
    }

    async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new("UPDATE messages SET deleted_at = ");
            q.push_bind(at)
                .push(" WHERE deleted_at IS NULL AND mid = ")
                .push_bind(mid.0);
            if d == Dialect::Pg {
                push_located(&mut q, mid);
            }
            q.build().execute(p).await.map(|_| ()).map_err(classify)
        })
    }

    async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        on_pool!(self, |p, d| {
            // The newest message, as in `lasts_and_unreads`: one partition looked in.
            let row = sqlx::query(
                "SELECT msg.conv_id, msg.seq, msg.mid, msg.sender, msg.kind, \
                 CASE WHEN msg.deleted_at IS NULL THEN msg.body END, msg.at, msg.deleted_at \
                 FROM conversations c JOIN messages msg ON msg.conv_id = c.id \
                 AND msg.seq = c.last_seq AND msg.at = c.last_activity WHERE c.id = $1",
            )
            .bind(conv.0)
            .fetch_optional(p)
            .await
            .map_err(classify)?;
            let last = match row {
                Some(row) => {
                    let read = || -> Result<MessageObject, sqlx::Error> { Ok(message!(&row)) };
                    Some(read().map_err(classify)?)
                }
                None => None,
            };
            let unread: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages WHERE conv_id = $1 AND seq > $2 AND sender <> $3 \
                 AND deleted_at IS NULL AND kind <> 'system'",
            )
            .bind(conv.0)
            .bind(last_read)
            .bind(user.0)
            .fetch_one(p)
            .await
            .map_err(classify)?;
            Ok((last, unread))
        })
    }

    async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        let fetch = query.limit as i64 + 1;
        let mut records = on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT c.id, c.kind, c.name, c.business, c.created_at, c.last_seq, c.last_activity \
                 FROM members m JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = ",
            );
            q.push_bind(user.0);
            if let Some(before) = query.before {
                q.push(" AND c.last_activity < ").push_bind(before);
            }
            if let Some(since) = query.since {
                q.push(" AND c.last_activity > ").push_bind(since);
            }
            q.push(" ORDER BY c.last_activity DESC, c.id DESC LIMIT ")
                .push_bind(fetch);
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            let read = || -> Result<Vec<ConversationRecord>, sqlx::Error> {
                rows.iter().map(|row| Ok(conversation!(row))).collect()
            };
            read().map_err(classify)?
        });
        let more = records.len() > query.limit;
        records.truncate(query.limit);
        let ids: Vec<ConversationId> = records.iter().map(|r| r.id).collect();
        let mut members = self.load_members(&ids).await.map_err(classify)?;
        let (mut last, unread) = self.lasts_and_unreads(user, &ids).await.map_err(classify)?;
        let listed = records
            .into_iter()
            .map(|mut record| {
                record.members = members.remove(&record.id).unwrap_or_default();
                ListedConversation {
                    last_message: last.remove(&record.id),
                    unread: unread.get(&record.id).copied().unwrap_or(0),
                    record,
                }
            })
            .collect();
        Ok((listed, more))
    }

    async fn agent_loads(&self, agents: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError> {
        let mut loads = HashMap::new();
        if agents.is_empty() {
            return Ok(loads);
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT user_id, COUNT(*) FROM members WHERE role = 'agent' AND user_id IN (",
            );
            let mut list = q.separated(", ");
            for a in agents {
                list.push_bind(a.0);
            }
            q.push(") GROUP BY user_id");
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            for row in rows {
                let read = || -> Result<(Uuid, i64), sqlx::Error> {
                    Ok((row.try_get(0)?, row.try_get(1)?))
                };
                let (user, n) = read().map_err(classify)?;
                loads.insert(UserId(user), n);
            }
            Ok(loads)
        })
    }

    async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |p, _d| {
            let mut q = QueryBuilder::new(
                "SELECT DISTINCT user_id FROM members WHERE role = 'business' AND user_id IN (",
            );
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id.0);
            }
            q.push(")");
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            rows.iter()
                .map(|row| row.try_get::<Uuid, _>(0).map(UserId))
                .collect::<Result<Vec<_>, _>>()
                .map_err(classify)
        })
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
                let mut done = Purged::default();
                loop {
                    let (erased, removed) =
                        lite_purge_round(p, retention_cutoff, audit_cutoff, PURGE_BATCH).await?;
                    done.erased += erased;
                    done.removed += removed;
                    if erased < PURGE_BATCH && removed < PURGE_BATCH {
                        return Ok(done);
                    }
                }
            }
        }
    }
}

/// Rows one round of the expiry job touches in one transaction: small enough that a send never
/// waits long behind it (on SQLite the writer and the job share one write lock), large enough
/// that a backlog clears quickly.
const PURGE_BATCH: u64 = 1000;

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
    /// `prefix` (the current key's, [`super::keyring::Keyring::current_prefix`]), with the
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

    /// The newest message of each conversation and `user`'s unread count in each. The newest is
    /// found by `last_seq` and, as the two are written together, `last_activity` is its `at`:
    /// on PostgreSQL that names the one week partition to look in.
    async fn lasts_and_unreads(
        &self,
        user: UserId,
        convs: &[ConversationId],
    ) -> Result<
        (
            HashMap<ConversationId, MessageObject>,
            HashMap<ConversationId, i64>,
        ),
        sqlx::Error,
    > {
        let mut last = HashMap::new();
        let mut unread = HashMap::new();
        if convs.is_empty() {
            return Ok((last, unread));
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT msg.conv_id, msg.seq, msg.mid, msg.sender, msg.kind, \
                 CASE WHEN msg.deleted_at IS NULL THEN msg.body END, msg.at, msg.deleted_at \
                 FROM conversations c JOIN messages msg ON msg.conv_id = c.id AND msg.seq = c.last_seq \
                 AND msg.at = c.last_activity WHERE c.id IN (",
            );
            let mut list = q.separated(", ");
            for c in convs {
                list.push_bind(c.0);
            }
            q.push(")");
            for row in q.build().fetch_all(p).await? {
                let m = message!(&row);
                last.insert(m.conv, m);
            }
            let mut q = QueryBuilder::new(
                "SELECT mb.conv_id, COUNT(msg.seq) FROM members mb JOIN messages msg \
                 ON msg.conv_id = mb.conv_id AND msg.seq > mb.last_read AND msg.sender <> mb.user_id \
                 AND msg.deleted_at IS NULL AND msg.kind <> 'system' WHERE mb.user_id = ",
            );
            q.push_bind(user.0).push(" AND mb.conv_id IN (");
            let mut list = q.separated(", ");
            for c in convs {
                list.push_bind(c.0);
            }
            q.push(") GROUP BY mb.conv_id");
            for row in q.build().fetch_all(p).await? {
                unread.insert(
                    ConversationId(row.try_get::<Uuid, _>(0)?),
                    row.try_get::<i64, _>(1)?,
                );
            }
            Ok((last, unread))
        })
    }
}
