//! PostgreSQL's partitioned tables, made ahead by the nodes and dropped whole by the expiry job
//! once everything they can hold is past retention, so that expiring a week of a busy service is
//! a catalog change instead of millions of row deletes.
//!
//! - `messages`: one table per week (`messages_YYYYMMDD`, the Monday, UTC). Weeks, not days: a
//!   history page reads every partition a conversation may have rows in, and each costs about
//!   13 µs per statement here. The price: a week is removed when its newest possible message
//!   is past retention, so a message lives up to a week longer than `CHAT_RETENTION_DAYS`.
//! - `message_mids`: every stored mid with where its message is, filed by the time it was
//!   stored, one table per thirteen weeks. A unique index cannot span partitions, so the commit
//!   looks a client's mids up before storing them: in the one or two older spans of this
//!   registry (the current one's unique index refuses a stored mid at the insert) instead of
//!   every week of messages: sixteen weeks of look-ups doubled PostgreSQL's CPU per message at
//!   1,000 msgs/s, as every week's index is probed with a random key for every message. A span
//!   goes a week after its newest possible message's week did, so ids (never a body) outlive
//!   their messages by fourteen weeks at most; narrower spans would mean more probes.
//!
//! The table the first migration made is `messages`' DEFAULT partition, `messages_default`: it
//! holds the rows from before partitioning (their mids are looked up there, through its own
//! index) and anything dated before the first week (an import, back-dated rows), bounded by a
//! CHECK so attaching a later week never scans it. Rows expire from it in small rounds, as they
//! did before.

use std::time::Duration;

use chat_actors::ids::Mid;
use chat_actors::ports::Purged;
use sqlx::{AssertSqlSafe, PgPool, QueryBuilder, Row};
use time::{Date, Month, OffsetDateTime};
use uuid::Uuid;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1969-12-29, a Monday: spans run from Monday 00:00 UTC.
const FIRST_MONDAY_MS: i64 = -3 * DAY_MS;
/// How far ahead of now the nodes keep spans ready, so a node's clock or a week of no
/// maintenance never leaves a row without its table.
const AHEAD_MS: i64 = 2 * WEEK_MS;
/// `messages`' partition that is not a week.
pub const DEFAULT_PARTITION: &str = "messages_default";
/// The expiry job's advisory lock: one node at a time runs it.
const EXPIRY_LOCK: i64 = 7321;
/// Creating spans: two nodes starting together create each once.
const MAINTENANCE_LOCK: i64 = 7322;
/// How long a detach waits for the parent table before it gives way: while it waits, every
/// statement on the table queues behind it, sends included.
const DETACH_LOCK_TIMEOUT: &str = "100ms";
/// Detach attempts in one run before the span is left to the next run.
const DETACH_ATTEMPTS: u32 = 20;

/// Narrows a `WHERE … mid = …` on `messages` to where that message is, found in
/// the registry of mids (or among the rows kept from before partitioning): weeks have no mid
/// index of their own, and the `at` found names the one week to look in (an init-plan, so
/// PostgreSQL prunes the others when it runs the statement).
pub fn push_located<DB: sqlx::Database>(q: &mut QueryBuilder<DB>, mid: Mid)
where
    for<'t> Uuid: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    q.push(" AND (conv_id, seq, at) = (SELECT conv_id, seq, at FROM message_mids WHERE mid = ")
        .push_bind(mid.0)
        .push(" UNION ALL SELECT conv_id, seq, at FROM messages_default WHERE mid = ")
        .push_bind(mid.0)
        .push(" LIMIT 1)");
}

/// A partitioned table: how wide its spans are and the indexes each span gets.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    parent: &'static str,
    width: i64,
    /// Each span's indexes, `{t}` standing for its table.
    indexes: &'static [&'static str],
    /// How long after retention's cut-off passes a span's end it is dropped.
    kept_past_retention: i64,
}

/// Messages, by week of `at`.
pub const MESSAGES: Layout = Layout {
    parent: "messages",
    width: WEEK_MS,
    indexes: &[
        "UNIQUE INDEX {t}_seq ON {t} (conv_id, seq)",
        "INDEX {t}_deleted_at ON {t} (deleted_at) WHERE deleted_at IS NOT NULL",
    ],
    kept_past_retention: 0,
};

/// The mid registry, by thirteen weeks of filing time. A mid is filed when its message is
/// stored, so the span it is in ends after its message's week; a week later that week is surely
/// gone.
pub const MIDS: Layout = Layout {
    parent: "message_mids",
    width: 13 * WEEK_MS,
    indexes: &["UNIQUE INDEX {t}_mid ON {t} (mid)"],
    kept_past_retention: WEEK_MS,
};

const LAYOUTS: [&Layout; 2] = [&MESSAGES, &MIDS];

impl Layout {
    /// The span holding `at` (ms).
    pub fn containing(&'static self, at: i64) -> Span {
        Span {
            layout: self,
            start: FIRST_MONDAY_MS + (at - FIRST_MONDAY_MS).div_euclid(self.width) * self.width,
        }
    }

    /// The span a table of this layout is named for; None for any other name (and for a date
    /// on which no span of this layout starts).
    pub fn from_table(&'static self, name: &str) -> Option<Span> {
        let digits = name.strip_prefix(self.parent)?.strip_prefix('_')?;
        if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i32 = digits[..4].parse().ok()?;
        let month = Month::try_from(digits[4..6].parse::<u8>().ok()?).ok()?;
        let day: u8 = digits[6..].parse().ok()?;
        let date = Date::from_calendar_date(year, month, day).ok()?;
        let start = date.midnight().assume_utc().unix_timestamp() * 1000;
        let span = self.containing(start);
        (span.start == start).then_some(span)
    }
}

/// One partition of a layout, by the Monday it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    layout: &'static Layout,
    /// Monday 00:00 UTC, in ms since the epoch: the first key it holds.
    start: i64,
}

impl Span {
    /// The first key it holds.
    pub fn start(self) -> i64 {
        self.start
    }

    /// The first key past it.
    pub fn end(self) -> i64 {
        self.start + self.layout.width
    }

    /// The span after.
    pub fn next(self) -> Span {
        Span {
            layout: self.layout,
            start: self.end(),
        }
    }

    /// Its table: `<parent>_YYYYMMDD`, the Monday's date (UTC).
    pub fn table(self) -> String {
        let parent = self.layout.parent;
        match OffsetDateTime::from_unix_timestamp(self.start.div_euclid(1000)) {
            Ok(t) => {
                let d = t.date();
                format!(
                    "{parent}_{:04}{:02}{:02}",
                    d.year(),
                    u8::from(d.month()),
                    d.day()
                )
            }
            // Outside years -9999..=9999: no clock gives such a time; a name still results.
            Err(_) => format!("{parent}_at_{}", self.start),
        }
    }

    /// The statements that create the span's table with its indexes and attach it: attaching
    /// takes a lock that lets sends go on (creating it as `PARTITION OF` would not).
    fn create_sql(self) -> String {
        // The table is new and empty: its indexes cost nothing to build, and attaching need
        // not scan `messages`' default partition, whose CHECK already excludes later weeks.
        let (t, parent) = (self.table(), self.layout.parent);
        let mut sql =
            format!("CREATE TABLE {t} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS); ");
        for index in self.layout.indexes {
            sql.push_str("CREATE ");
            sql.push_str(&index.replace("{t}", &t));
            sql.push_str("; ");
        }
        sql.push_str(&format!(
            "ALTER TABLE {parent} ATTACH PARTITION {t} FOR VALUES FROM ({}) TO ({})",
            self.start,
            self.end()
        ));
        sql
    }
}

/// A span's table in `messages`' schema: attached (a partition) or left detached by a run
/// that stopped between detaching and dropping it.
struct Table {
    span: Span,
    attached: bool,
}

/// Every span table of both layouts, oldest first.
async fn tables(conn: impl sqlx::PgExecutor<'_>) -> Result<Vec<Table>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text, c.relispartition FROM pg_class c \
         WHERE c.relkind = 'r' AND c.relname LIKE 'message%' \
         AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'messages'::regclass)",
    )
    .fetch_all(conn)
    .await?;
    let mut tables = Vec::new();
    for row in &rows {
        let name: String = row.try_get(0)?;
        if let Some(span) = LAYOUTS.iter().find_map(|l| l.from_table(&name)) {
            tables.push(Table {
                span,
                attached: row.try_get(1)?,
            });
        }
    }
    tables.sort_by_key(|t| t.span.start);
    Ok(tables)
}

/// Creates every span of both layouts from the newest one that exists up to the one holding
/// two weeks past `now`; answers how many it created. Runs at start (before a node serves) and
/// with each expiry run.
pub async fn prepare(pool: &PgPool, now: i64) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MAINTENANCE_LOCK)
        .execute(&mut *tx)
        .await?;
    let existing = tables(&mut *tx).await?;
    let mut created = 0;
    for layout in LAYOUTS {
        // Contiguous from the newest span: never below `messages`' default partition's bound,
        // whose rows a week dated inside it would have to be checked against.
        let mut span = existing
            .iter()
            .filter(|t| t.attached && t.span.layout == layout)
            .map(|t| t.span)
            .max_by_key(|s| s.start)
            .map_or_else(|| layout.containing(now), Span::next);
        let last = layout.containing(now + AHEAD_MS);
        while span.start <= last.start {
            create(&mut tx, span).await?;
            span = span.next();
            created += 1;
        }
    }
    tx.commit().await?;
    Ok(created)
}

/// Creates `span`'s table and attaches it. A week before `messages`' default partition's bound
/// (an import of old history) is checked against the default's rows first, and refused if any
/// belongs to it.
pub async fn create(conn: &mut sqlx::PgConnection, span: Span) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(span.create_sql()))
        .execute(&mut *conn)
        .await?;
    tracing::info!(table = %span.table(), "partition created");
    Ok(())
}

/// Drops every span whose end is at or before `retention_cutoff` (the registry's a week
/// later), then removes the default partition's rows older than it and erases bodies deleted
/// before `audit_cutoff`, in rounds of `round` rows. Another node running the job makes this
/// run stop where it is.
pub async fn expire(
    pool: &PgPool,
    retention_cutoff: i64,
    audit_cutoff: i64,
    round: u64,
) -> Result<Purged, sqlx::Error> {
    let mut done = Purged::default();
    let tables = tables(pool).await?;
    let expired = |s: Span| s.end() + s.layout.kept_past_retention <= retention_cutoff;
    for t in tables.iter().filter(|t| expired(t.span)) {
        let table = t.span.table();
        if t.attached && !detach(pool, t.span.layout.parent, &table).await? {
            return Ok(done);
        }
        sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
            .execute(pool)
            .await?;
        tracing::info!(table, "partition dropped");
        done.partitions += 1;
    }
    let remove = format!(
        "DELETE FROM {DEFAULT_PARTITION} WHERE (conv_id, seq) IN (SELECT conv_id, seq \
         FROM {DEFAULT_PARTITION} WHERE at < $1 LIMIT $2)"
    );
    let (removed, ours) = in_rounds(pool, &remove, retention_cutoff, round).await?;
    done.removed = removed;
    if !ours {
        return Ok(done);
    }
    // Deleted bodies are few: each partition is asked on its own, through its own index.
    let kept = tables
        .iter()
        .filter(|t| t.attached && t.span.layout == &MESSAGES && !expired(t.span))
        .map(|t| t.span.table())
        .chain([DEFAULT_PARTITION.to_owned()]);
    for table in kept {
        let erase = format!(
            "UPDATE {table} SET body = NULL WHERE (conv_id, seq) IN (SELECT conv_id, seq \
             FROM {table} WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
             AND body IS NOT NULL LIMIT $2)"
        );
        let (erased, ours) = in_rounds(pool, &erase, audit_cutoff, round).await?;
        done.erased += erased;
        if !ours {
            break;
        }
    }
    Ok(done)
}

/// Runs `sql` (binding `cutoff` and a limit of `round` rows) round after round until one
/// touches fewer; answers the rows touched and whether the job stayed this node's throughout.
async fn in_rounds(
    pool: &PgPool,
    sql: &str,
    cutoff: i64,
    round: u64,
) -> Result<(u64, bool), sqlx::Error> {
    let limit = i64::try_from(round).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let Some(n) = locked_round(pool, sql, cutoff, limit).await? else {
            return Ok((total, false));
        };
        total += n;
        if n < round {
            return Ok((total, true));
        }
    }
}

/// One round, its own transaction, under the job's lock: None when another node holds it.
async fn locked_round(
    pool: &PgPool,
    sql: &str,
    cutoff: i64,
    limit: i64,
) -> Result<Option<u64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !try_lock(&mut tx).await? {
        return Ok(None);
    }
    let n = sqlx::query(AssertSqlSafe(sql))
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(Some(n))
}

async fn try_lock(tx: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(EXPIRY_LOCK)
        .fetch_one(tx)
        .await
}

/// Detaches `table` from `parent`. Detaching locks the whole parent for a moment; it gives
/// way after a short wait (a long read holds the parent) and tries again, so sends queue
/// behind it for at most that wait. False when the job is another node's or the parent stayed
/// busy through every attempt (the week is left for the next run).
async fn detach(pool: &PgPool, parent: &str, table: &str) -> Result<bool, sqlx::Error> {
    for _ in 0..DETACH_ATTEMPTS {
        let mut tx = pool.begin().await?;
        if !try_lock(&mut tx).await? {
            return Ok(false);
        }
        let detached = sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'; \
             ALTER TABLE {parent} DETACH PARTITION {table}"
        )))
        .execute(&mut *tx)
        .await;
        match detached {
            Ok(_) => {
                tx.commit().await?;
                return Ok(true);
            }
            // The parent stayed busy: the transaction rolls back when dropped.
            Err(e) if is_lock_timeout(&e) => drop(tx),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(
        table,
        "message partition still in use; it is dropped next run"
    );
    Ok(false)
}

fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_utc_and_name_their_table_by_that_date() {
        // 2026-11-30 is a Monday; 2026-12-06 23:59:59.999 is the Sunday after.
        let monday = 1_795_996_800_000;
        let w = MESSAGES.containing(monday + 7 * DAY_MS - 1);
        assert_eq!(w.start(), monday);
        assert_eq!(w.table(), "messages_20261130");
        assert_eq!(MESSAGES.containing(monday - 1).table(), "messages_20261123");
        assert_eq!(MESSAGES.containing(monday + WEEK_MS), w.next());
        // Before the epoch too (a back-dated import).
        assert_eq!(MESSAGES.containing(0).table(), "messages_19691229");
        assert_eq!(MESSAGES.containing(-1).table(), "messages_19691229");
    }

    #[test]
    fn registry_spans_are_thirteen_weeks_from_the_first_monday() {
        let monday = 1_795_996_800_000;
        let span = MIDS.containing(monday);
        assert_eq!(span.end() - span.start(), 13 * WEEK_MS);
        assert!(span.start() <= monday && monday < span.end());
        assert_eq!((span.start() - FIRST_MONDAY_MS) % (13 * WEEK_MS), 0);
        assert!(span.table().starts_with("message_mids_"));
        assert_eq!(MIDS.from_table(&span.table()), Some(span));
        // A week that is not a span's first names no registry table.
        let second_week = MESSAGES.containing(span.start()).next();
        let name = format!("message_mids_{}", &second_week.table()["messages_".len()..]);
        assert_eq!(MIDS.from_table(&name), None);
    }

    #[test]
    fn a_table_name_reads_back_as_its_span_and_nothing_else_does() {
        let w = MESSAGES.containing(1_795_996_800_000);
        assert_eq!(MESSAGES.from_table(&w.table()), Some(w));
        assert_eq!(MIDS.from_table(&w.table()), None);
        for other in [
            "messages_default",
            "messages_20261201", // a Tuesday
            "messages_20261332",
            "messages_2026113",
            "messages_2026113x",
            "messages_+2026113",
            "message_mids_20261130x",
            "members",
        ] {
            assert_eq!(MESSAGES.from_table(other), None, "{other}");
            assert_eq!(MIDS.from_table(other), None, "{other}");
        }
    }
}
