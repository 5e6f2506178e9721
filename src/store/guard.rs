//! The store as the node uses it: the SQL store behind a breaker and a read budget.
//!
//! - **Breaker.** Once the database is known down (a call failed to reach it), every call fails
//!   at once with `unavailable` instead of each waiting out the pool's acquire timeout; a probe
//!   pings the database every [`PROBE_EVERY`] and closes the breaker as soon as it answers.
//!   The pool's own acquire timeout says only that no connection came free: the database may be
//!   down, or merely busy with every connection the pool holds. A call that succeeded within the
//!   last [`ANSWERED_RECENTLY`] says busy; else one connection of our own, outside the pool,
//!   tells which ([`GuardedStore::check_reachable`]); only a database that does not answer it
//!   opens the breaker. Busy is not down: opened on a saturated pool, the breaker
//!   refused every call, writes included, and the probe, queued behind the same pool, kept it
//!   open (docs/PERFORMANCE.md, "The busy hour").
//! - **Reads on standbys.** The reads a standby may serve (history, lists, a conversation's
//!   newest message and unread count) go to one that is current when `CHAT_DATABASE_REPLICA_URLS`
//!   names some (`sql::routed`), outside the read budget below: that budget keeps the primary's
//!   connections, and a read waiting for a standby holds none.
//! - **Writes keep capacity.** Reads (history, lists, look-ups) may hold at most the pool's size
//!   less [`RESERVED_FOR_WRITES`] connections at once, so a flood of reads queues on its own
//!   budget while commits still find a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_actors::clock::now_ms;
use chat_actors::ids::{ConversationId, Mid, Seq, UserId};
use chat_actors::ports::{
    AppendBatch, Appended, ConversationRecord, HistoryRange, ListQuery, ListedConversation,
    MembershipChange, NewConversation, Purged, ReadMark, Store, StoreError,
};
use chat_actors::protocol::MessageObject;
use tokio::sync::Semaphore;

use super::sql::SqlStore;

/// How often a tripped breaker asks the database whether it is back.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pool connections reads may never take (at least one read connection is always allowed).
const RESERVED_FOR_WRITES: u32 = 4;
/// The longest a read waits for its budget (the pool's own acquire timeout is 3 s).
const READ_WAIT: Duration = Duration::from_secs(3);
/// After a connection of our own found the database answering while the pool was full, how
/// long before another pool timeout is checked the same way (a saturated pool times out many
/// calls a second; each check costs the database a new session).
const ANSWERED_HOLDS_FOR: Duration = Duration::from_secs(1);
/// A database that answered a call this recently is busy when the pool times out, not down.
const ANSWERED_RECENTLY: Duration = Duration::from_secs(2);
/// How long a connection of our own may take to answer. Longer than a probe's: a new session
/// (a process forked, authenticated) on a machine past its cores took over a second when the
/// busy hour first ran with a one-second check, and the breaker opened on a database that
/// was serving.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call was refused without reaching the database.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the database is down (breaker open)")]
    Down,
    #[error("no read capacity within {0:?}")]
    Busy(Duration),
}

/// The SQL store with a breaker and a read budget.
pub struct GuardedStore {
    inner: SqlStore,
    health: Arc<Health>,
    reads: Semaphore,
}

/// Whether the database is known down, shared with the probe.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// A connection of our own is asking whether the database answers (see `check_reachable`).
    checking: AtomicBool,
    /// When a call last succeeded (ms since the epoch).
    answered_at_ms: AtomicI64,
}

impl Health {
    fn answered_within(&self, span: Duration) -> bool {
        now_ms() - self.answered_at_ms.load(Ordering::Relaxed) < span.as_millis() as i64
    }
}

impl GuardedStore {
    /// Guards `inner`; reads get its pool size less the write reserve.
    pub fn new(inner: SqlStore) -> Arc<GuardedStore> {
        let pool = inner.pool_size();
        let reads = pool
            .saturating_sub(RESERVED_FOR_WRITES.min(pool / 2))
            .max(1);
        Arc::new(GuardedStore {
            inner,
            health: Arc::new(Health::default()),
            reads: Semaphore::new(reads as usize),
        })
    }

    /// Whether the breaker is closed (the database answered last time).
    pub fn is_up(&self) -> bool {
        !self.health.down.load(Ordering::Acquire)
    }

    fn refuse_when_down(&self) -> Result<(), StoreError> {
        if self.is_up() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(Box::new(Refused::Down)))
        }
    }

    /// Notes the outcome of a call: a failure to reach the database opens the breaker; a pool
    /// that gave no connection in time has the database asked directly.
    fn observe<T>(&self, outcome: Result<T, StoreError>) -> Result<T, StoreError> {
        match &outcome {
            Ok(_) => self
                .health
                .answered_at_ms
                .store(now_ms(), Ordering::Relaxed),
            Err(e) => match verdict(e) {
                Verdict::Unreachable => trip(&self.inner, &self.health, e),
                Verdict::PoolFull if self.health.answered_within(ANSWERED_RECENTLY) => {
                    metrics::counter!("chat_database_pool_full_total").increment(1);
                }
                Verdict::PoolFull => self.check_reachable(),
                Verdict::Answered => {}
            },
        }
        outcome
    }

    /// Asks the database on a connection of its own whether it answers, once at a time, and
    /// opens the breaker only if it does not.
    fn check_reachable(&self) {
        if !self.is_up() || self.health.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inner, health) = (self.inner.clone(), self.health.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(CHECK_TIMEOUT, inner.ping_outside_pool()).await {
                Ok(Ok(())) => {
                    metrics::counter!("chat_database_pool_full_total").increment(1);
                    tracing::debug!("the pool is full but the database answers: busy, not down");
                    tokio::time::sleep(ANSWERED_HOLDS_FOR).await;
                }
                Ok(Err(e)) => trip(&inner, &health, &e),
                Err(_) => trip(
                    &inner,
                    &health,
                    &format!("no answer within {CHECK_TIMEOUT:?}"),
                ),
            }
            health.checking.store(false, Ordering::Release);
        });
    }

    /// Runs a write.
    async fn write<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.refuse_when_down()?;
        self.observe(call.await)
    }

    /// Runs a read within the read budget.
    async fn read<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.refuse_when_down()?;
        let _permit = match tokio::time::timeout(READ_WAIT, self.reads.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                return Err(StoreError::Unavailable(Box::new(Refused::Busy(READ_WAIT))));
            }
        };
        let outcome = call.await;
        if let Err(e) = &outcome {
            // The client hears only `unavailable`; the operator needs the store's reason.
            tracing::warn!(error = %e, "a read failed");
        }
        self.observe(outcome)
    }
}

impl GuardedStore {
    /// Runs a read a standby may serve: on a current standby (outside the read budget, which
    /// keeps the primary's connections for its writes), else on the primary as any read. A
    /// read that fails on the standby is read again from the primary.
    async fn routed<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(SqlStore) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let arrived = Instant::now();
        if let Some(standby) = self.inner.standby().await {
            match read(standby.store.clone()).await {
                Err(StoreError::Unavailable(e)) => standby.failed(&e),
                answer => {
                    standby.served();
                    return answer;
                }
            }
        }
        let answer = self.read(read(self.inner.clone())).await;
        self.inner.read_on_primary(arrived);
        answer
    }
}

/// Opens the breaker (if it is not already) and starts the probe that closes it.
fn trip(inner: &SqlStore, health: &Arc<Health>, why: &dyn std::fmt::Display) {
    if !health.down.swap(true, Ordering::AcqRel) {
        tracing::warn!(error = %why, "database unreachable: failing fast until it answers");
        metrics::gauge!("chat_database_up").set(0.0);
        tokio::spawn(probe(inner.clone(), health.clone()));
    }
}

/// Pings until the database answers, then closes the breaker.
async fn probe(store: SqlStore, health: Arc<Health>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
            health.down.store(false, Ordering::Release);
            metrics::gauge!("chat_database_up").set(1.0);
            tracing::info!("database answers again");
            return;
        }
    }
}

/// What a failed call says of the database.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It could not be reached.
    Unreachable,
    /// The pool gave no connection in time: the database is down, or only busy.
    PoolFull,
    /// It answered, and refused this one request (or nothing reached it for another reason).
    Answered,
}

/// Reads a failed call's error.
fn verdict(e: &StoreError) -> Verdict {
    let StoreError::Unavailable(source) = e else {
        return Verdict::Answered;
    };
    match source.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::PoolTimedOut) => Verdict::PoolFull,
        Some(
            sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed,
        ) => Verdict::Unreachable,
        // Class 08: connection exception; 57P01-03: the server shuts down or is starting.
        Some(sqlx::Error::Database(db))
            if db.code().is_some_and(|c| {
                c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")
            }) =>
        {
            Verdict::Unreachable
        }
        _ => Verdict::Answered,
    }
}

#[async_trait]
impl Store for GuardedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(self.inner.ping()).await
    }

    async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.read(self.inner.load_conversation(id)).await
    }

    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError> {
        self.write(self.inner.create_conversation(new)).await
    }

    async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended {
        if !self.is_up() {
            return Appended::refused(batches.len(), marks, || {
                StoreError::Unavailable(Box::new(Refused::Down))
            });
        }
        let appended = self.inner.append(batches, marks).await;
        Appended {
            batches: appended
                .batches
                .into_iter()
                .map(|o| self.observe(o))
                .collect(),
            marks: self.observe(appended.marks),
        }
    }

    async fn change_members(
        &self,
        conv: ConversationId,
        change: &MembershipChange,
    ) -> Result<(), StoreError> {
        self.write(self.inner.change_members(conv, change)).await
    }

    async fn set_reads(&self, marks: &[ReadMark]) -> Result<(), StoreError> {
        self.write(self.inner.set_reads(marks)).await
    }

    async fn set_muted(
        &self,
        conv: ConversationId,
        user: UserId,
        on: bool,
    ) -> Result<(), StoreError> {
        self.write(self.inner.set_muted(conv, user, on)).await
    }

    async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        self.routed(|s| async move { s.history(conv, range, limit).await })
            .await
    }

    async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError> {
        self.read(self.inner.find_message(mid)).await
    }

    async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError> {
        self.write(self.inner.mark_deleted(mid, at)).await
    }

    async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        self.routed(|s| async move { s.last_message_and_unread(conv, user, last_read).await })
            .await
    }

    async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        self.routed(|s| async move { s.list_conversations(user, query).await })
            .await
    }

    async fn agent_loads(&self, agents: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError> {
        self.read(self.inner.agent_loads(agents)).await
    }

    async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        self.read(self.inner.businesses_among(ids)).await
    }

    async fn purge(&self, retention_cutoff: i64, audit_cutoff: i64) -> Result<Purged, StoreError> {
        self.read(self.inner.purge(retention_cutoff, audit_cutoff))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Unavailable(Box::new(e))
    }

    #[test]
    fn a_full_pool_is_checked_before_the_database_is_called_down() {
        assert_eq!(
            verdict(&unavailable(sqlx::Error::PoolTimedOut)),
            Verdict::PoolFull
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            verdict(&unavailable(sqlx::Error::Io(refused))),
            Verdict::Unreachable
        );
        assert_eq!(
            verdict(&unavailable(sqlx::Error::PoolClosed)),
            Verdict::Unreachable
        );
    }

    #[test]
    fn a_refused_request_or_our_own_refusal_says_nothing_of_the_database() {
        assert_eq!(
            verdict(&unavailable(sqlx::Error::RowNotFound)),
            Verdict::Answered
        );
        assert_eq!(verdict(&unavailable(Refused::Down)), Verdict::Answered);
        assert_eq!(
            verdict(&unavailable(Refused::Busy(READ_WAIT))),
            Verdict::Answered
        );
    }
}
