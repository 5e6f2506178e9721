//! Read replicas (`CHAT_DATABASE_REPLICA_URLS`): which standby, if any, may serve a read now.
//!
//! A reader must never see less than it was already told (`sent`, `ok`, a push, an HTTP 2xx),
//! on any node. Whatever it was told of was committed before it asked, so a standby that has
//! replayed the primary's WAL up to a position taken *after* the read arrived holds it. That
//! position is the fence: one `pg_current_wal_insert_lsn()` on the primary serves every read that
//! arrived before it was asked (a round, run by one task per node while reads wait, and once a
//! second for the lag), then each standby's `pg_last_wal_replay_lsn()` says whether it is past
//! the fence. A read goes to a standby past a fence taken after it arrived, waits for one at most
//! [`CATCH_UP_WAIT`], and otherwise goes to the primary. A standby whose replay lags the
//! primary's WAL by more than the bound (default 1 s), or that failed to answer, is skipped until
//! it catches up (asked once a second meanwhile).
//!
//! The fence costs the primary one trivial statement per round, whatever the number of reads in
//! it; the reads themselves (history pages, conversation lists with their unread counts) are
//! the primary's work taken away.

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{Notify, watch};

use crate::store::error::ConnectError;

/// How long a read waits for a standby to replay past its fence before it goes to the primary.
/// With streaming replication a standby replays within a millisecond or two of the primary's
/// commit; a standby further behind serves the read no sooner than the primary would.
pub const CATCH_UP_WAIT: Duration = Duration::from_millis(20);
/// How often a standby is asked again while a read waits for it.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(1);
/// How often a round runs with no read waiting, to keep the lag known (and a skipped standby
/// asked whether it came back).
const IDLE_ROUND_EVERY: Duration = Duration::from_secs(1);
/// How long the primary or a standby may take to say where its WAL is.
const ASK_WITHIN: Duration = Duration::from_secs(1);
/// Fences remembered, to tell how far behind a standby is from its replay position.
const FENCES_KEPT: usize = 256;

/// The standbys a node reads from, and the rounds that tell which are current.
pub struct Replicas {
    primary: PgPool,
    replicas: Vec<Replica>,
    max_lag: Duration,
    rounds: Mutex<Rounds>,
    /// Woken by a read that wants a round.
    wanted: Notify,
    /// Bumped at every step of a round: waiting reads look again.
    progress: watch::Sender<u64>,
    /// Spreads the reads over the standbys that may serve them.
    next: AtomicUsize,
    /// `chat_db_reads_total` and `chat_db_read_seconds` by target: the primary, then a standby.
    served: [(Counter, Histogram); 2],
}

/// One standby.
pub struct Replica {
    /// Its pool.
    pub pool: PgPool,
    /// `host:port`, the label of its metrics.
    pub name: String,
    state: Mutex<ReplicaState>,
    /// `chat_db_replica_lag_milliseconds` and `chat_db_replica_usable` for it, registered once:
    /// they are set at every answer, each millisecond while reads wait.
    shown_lag: Gauge,
    shown_usable: Gauge,
}

#[derive(Default)]
struct ReplicaState {
    /// When the newest fence it replayed past was taken.
    fresh_as_of: Option<Instant>,
    /// The oldest fence it has not replayed past (when taken, and where), kept until it does
    /// even when the fence is no longer remembered.
    behind: Option<(Instant, u64)>,
    /// How far behind it was last seen when it was not: the time from a fence to its replay.
    last_lag: Duration,
    /// It failed a read or a question; skipped until it answers again.
    down: bool,
}

#[derive(Default)]
struct Rounds {
    /// The fences of recent rounds, oldest first: when taken, and the primary's WAL position.
    fences: VecDeque<(Instant, u64)>,
    /// When the newest finished round's fence was taken.
    finished: Option<Instant>,
}

impl Replicas {
    /// Pools on the standbys of `urls` (each with the session settings `extra`, `size`
    /// connections at most); fences are taken on `primary`. The pools open lazily: a standby
    /// that is down at start is only skipped.
    pub fn new(
        urls: &[String],
        extra: &[(&str, &str)],
        size: u32,
        primary: PgPool,
        max_lag: Duration,
    ) -> Result<Replicas, ConnectError> {
        let replicas = urls
            .iter()
            .map(|url| {
                let options = PgConnectOptions::from_str(url)?.options(extra.iter().copied());
                let name = format!("{}:{}", options.get_host(), options.get_port());
                let pool = PgPoolOptions::new()
                    .max_connections(size)
                    .min_connections(0)
                    // A standby that went away costs one read this long, then is skipped.
                    .acquire_timeout(Duration::from_secs(1))
                    .test_before_acquire(false)
                    .connect_lazy_with(options);
                let shown_lag =
                    metrics::gauge!("chat_db_replica_lag_milliseconds", "replica" => name.clone());
                let shown_usable =
                    metrics::gauge!("chat_db_replica_usable", "replica" => name.clone());
                shown_usable.set(0.0);
                Ok(Replica {
                    pool,
                    name,
                    state: Mutex::new(ReplicaState::default()),
                    shown_lag,
                    shown_usable,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let served = ["primary", "replica"].map(|target| {
            (
                metrics::counter!("chat_db_reads_total", "target" => target),
                metrics::histogram!("chat_db_read_seconds", "target" => target),
            )
        });
        for (reads, _) in &served {
            reads.increment(0);
        }
        metrics::counter!("chat_db_replica_read_failures_total").increment(0);
        Ok(Replicas {
            primary,
            replicas,
            max_lag,
            rounds: Mutex::new(Rounds::default()),
            wanted: Notify::new(),
            progress: watch::Sender::new(0),
            next: AtomicUsize::new(0),
            served,
        })
    }

    /// A standby that holds every change committed before this call, or None when none does
    /// within [`CATCH_UP_WAIT`] (or none is usable): the read goes to the primary.
    pub async fn current(&self) -> Option<&Replica> {
        let arrived = Instant::now();
        if !self.replicas.iter().any(|r| self.usable(r, arrived)) {
            return None;
        }
        let mut progress = self.progress.subscribe();
        self.wanted.notify_one();
        let give_up = tokio::time::sleep(CATCH_UP_WAIT + ASK_WITHIN);
        tokio::pin!(give_up);
        loop {
            if let Some(replica) = self.fresh_since(arrived) {
                return Some(replica);
            }
            let finished = self.rounds.lock().ok().and_then(|r| r.finished);
            if finished.is_some_and(|f| f >= arrived) {
                return None;
            }
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { return None },
                () = &mut give_up => return None,
            }
        }
    }

    /// A read that arrived at `arrived` was answered, on a standby or on the primary.
    pub fn served(&self, on_replica: bool, arrived: Instant) {
        let (reads, seconds) = &self.served[usize::from(on_replica)];
        reads.increment(1);
        seconds.record(arrived.elapsed().as_secs_f64());
    }

    /// A read on `replica` failed: it is skipped until it answers again.
    pub fn failed(&self, replica: &Replica) {
        metrics::counter!("chat_db_replica_read_failures_total").increment(1);
        if let Ok(mut state) = replica.state.lock() {
            state.down = true;
        }
        replica.shown_usable.set(0.0);
    }

    /// Runs rounds for as long as the process runs: when a read waits, and once a second; a
    /// skipped standby is asked once a second, apart, so one that does not answer holds up no
    /// round.
    pub async fn run_rounds(self: Arc<Self>) {
        let mut rechecked = Instant::now();
        loop {
            let _ = tokio::time::timeout(IDLE_ROUND_EVERY, self.wanted.notified()).await;
            self.round().await;
            self.progress.send_modify(|n| *n = n.wrapping_add(1));
            // After the round, against the fence it just took: before it, on an idle node the
            // newest fence was a second old, so a standby that had caught up was seen lagging by
            // that second, over the 1 s bound, and stayed skipped until reads came.
            if rechecked.elapsed() >= IDLE_ROUND_EVERY {
                rechecked = Instant::now();
                tokio::spawn(self.clone().recheck());
            }
        }
    }

    /// One round: a fence on the primary, then the usable standbys asked until each is past it
    /// or [`CATCH_UP_WAIT`] is over.
    async fn round(&self) {
        let taken = Instant::now();
        let Some(fence) = wal_position(&self.primary, PRIMARY_POSITION).await else {
            // No fence, no standby is known current: the reads go to the primary (which
            // answers them, or not, as it does every other request).
            self.finish(taken);
            return;
        };
        if let Ok(mut rounds) = self.rounds.lock() {
            if rounds.fences.len() == FENCES_KEPT {
                rounds.fences.pop_front();
            }
            rounds.fences.push_back((taken, fence));
        }
        loop {
            let now = Instant::now();
            let asked: Vec<&Replica> = self
                .replicas
                .iter()
                .filter(|r| self.usable(r, now) && fresh_as_of(r).is_none_or(|f| f < taken))
                .collect();
            if asked.is_empty() {
                break;
            }
            let positions = futures_util::future::join_all(
                asked.iter().map(|r| wal_position(&r.pool, REPLAY_POSITION)),
            )
            .await;
            let mut past = false;
            for (replica, position) in asked.into_iter().zip(positions) {
                past |= self.seen(replica, position, fence);
            }
            if past {
                self.progress.send_modify(|n| *n = n.wrapping_add(1));
            }
            if taken.elapsed() >= CATCH_UP_WAIT {
                break;
            }
            tokio::time::sleep(ASK_AGAIN_AFTER).await;
        }
        self.finish(taken);
    }

    /// Asks each skipped standby where its replay is, against the newest fence.
    async fn recheck(self: Arc<Self>) {
        let now = Instant::now();
        let Some(fence) = self
            .rounds
            .lock()
            .ok()
            .and_then(|r| r.fences.back().map(|(_, f)| *f))
        else {
            return;
        };
        let me = &*self;
        let skipped = me.replicas.iter().filter(|r| !me.usable(r, now));
        let asked = skipped.map(|r| async move {
            let position = wal_position(&r.pool, REPLAY_POSITION).await;
            me.seen(r, position, fence);
        });
        futures_util::future::join_all(asked).await;
    }

    fn finish(&self, taken: Instant) {
        if let Ok(mut rounds) = self.rounds.lock() {
            rounds.finished = Some(taken);
        }
    }

    /// Records what `replica` answered (its replay position, or nothing); whether it is past
    /// `fence`.
    fn seen(&self, replica: &Replica, position: Option<u64>, fence: u64) -> bool {
        let now = Instant::now();
        // The newest fence it is past, and the oldest it is not.
        let (reached, behind) = match (position, self.rounds.lock()) {
            (Some(position), Ok(rounds)) => {
                let reached = rounds
                    .fences
                    .iter()
                    .rev()
                    .find(|(_, f)| *f <= position)
                    .map(|(at, _)| *at);
                let behind = rounds.fences.iter().find(|(_, f)| *f > position).copied();
                (reached, behind)
            }
            _ => (None, None),
        };
        let Ok(mut state) = replica.state.lock() else {
            return false;
        };
        match position {
            // Its lag stays as last seen; `usable` says it is skipped.
            None => state.down = true,
            Some(position) => {
                state.down = false;
                if let Some(at) = reached {
                    if state.fresh_as_of.is_none_or(|f| f < at) {
                        state.fresh_as_of = Some(at);
                    }
                    if position >= fence {
                        // It was behind until now at most: the time since that fence was taken.
                        state.last_lag = now.saturating_duration_since(at);
                    }
                }
                let still_behind = state.behind.filter(|(_, f)| position < *f);
                state.behind = still_behind.or(behind);
            }
        }
        let lag = state.lag(now);
        let usable = !state.down && lag <= self.max_lag;
        drop(state);
        replica.shown_lag.set(lag.as_secs_f64() * 1000.0);
        replica.shown_usable.set(if usable { 1.0 } else { 0.0 });
        position.is_some_and(|p| p >= fence)
    }

    /// Whether `replica` may serve reads: it answers, and lags no more than the bound.
    fn usable(&self, replica: &Replica, now: Instant) -> bool {
        replica
            .state
            .lock()
            .is_ok_and(|s| !s.down && s.lag(now) <= self.max_lag)
    }

    /// A usable standby past a fence taken at or after `arrived`, the next in turn.
    fn fresh_since(&self, arrived: Instant) -> Option<&Replica> {
        let now = Instant::now();
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| fresh_as_of(r).is_some_and(|f| f >= arrived) && self.usable(r, now))
    }
}

impl ReplicaState {
    /// How far behind the primary the standby is, as last seen: since the oldest fence it has
    /// not replayed past, or (when it is past them all) how long it took to reach the last.
    fn lag(&self, now: Instant) -> Duration {
        match self.behind {
            Some((since, _)) => now.saturating_duration_since(since),
            None => self.last_lag,
        }
    }
}

fn fresh_as_of(replica: &Replica) -> Option<Instant> {
    replica.state.lock().ok().and_then(|s| s.fresh_as_of)
}

/// Every WAL record inserted on the primary so far: a commit acknowledged before this was asked
/// is below it (whatever `synchronous_commit` says of when it reaches the disk).
const PRIMARY_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint";
/// How far a standby has replayed; NULL on a server that is not in recovery (never read from as
/// a standby: it may be an old primary that came back on its own).
const REPLAY_POSITION: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint";

/// The WAL position `query` gives on `pool`, within [`ASK_WITHIN`].
async fn wal_position(pool: &PgPool, query: &'static str) -> Option<u64> {
    let asked = sqlx::query_scalar::<_, Option<i64>>(query).fetch_one(pool);
    let position = tokio::time::timeout(ASK_WITHIN, asked).await.ok()?.ok()??;
    u64::try_from(position).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two standbys that are never connected to (pools open lazily), on a primary likewise.
    fn two_standbys() -> Replicas {
        let urls = [
            "postgres://u@127.0.0.1:1/chat",
            "postgres://u@127.0.0.1:2/chat",
        ]
        .map(String::from);
        let primary = PgPoolOptions::new()
            .connect_lazy_with(PgConnectOptions::new().host("127.0.0.1").port(3));
        Replicas::new(&urls, &[], 1, primary, Duration::from_secs(1)).unwrap()
    }

    fn fence(replicas: &Replicas, taken: Instant, position: u64) {
        replicas
            .rounds
            .lock()
            .unwrap()
            .fences
            .push_back((taken, position));
    }

    fn picked(replicas: &Replicas, arrived: Instant) -> Vec<String> {
        (0..4)
            .map(|_| {
                replicas
                    .fresh_since(arrived)
                    .map(|r| r.name.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test]
    async fn reads_spread_over_the_standbys_past_a_fence_taken_after_they_arrived() {
        let replicas = two_standbys();
        let [first, second] = [&replicas.replicas[0], &replicas.replicas[1]];
        let arrived = Instant::now();
        // No fence since the read arrived: no standby may serve it.
        assert!(replicas.fresh_since(arrived).is_none());

        let taken = Instant::now();
        fence(&replicas, taken, 100);
        assert!(replicas.seen(first, Some(150), 100));
        assert!(replicas.seen(second, Some(100), 100));
        let mut names = picked(&replicas, arrived);
        names.sort();
        assert_eq!(
            names,
            ["127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:2"]
        );

        // A later read: only the standby past the newer fence serves it; the other is behind.
        let later = Instant::now();
        fence(&replicas, Instant::now(), 200);
        assert!(replicas.seen(first, Some(250), 200));
        assert!(!replicas.seen(second, Some(150), 200));
        assert_eq!(picked(&replicas, later), ["127.0.0.1:1"; 4]);
        // The earlier read may still go to either.
        assert_eq!(picked(&replicas, arrived).len(), 4);
        assert!(replicas.usable(second, Instant::now()));
    }

    #[tokio::test]
    async fn a_standby_too_far_behind_failing_or_not_in_recovery_is_skipped() {
        let replicas = two_standbys();
        let [first, second] = [&replicas.replicas[0], &replicas.replicas[1]];
        let long_ago = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        fence(&replicas, long_ago, 100);
        let arrived = Instant::now();
        fence(&replicas, Instant::now(), 200);
        replicas.seen(first, Some(50), 200);
        // Behind the fence of two seconds ago: over the bound.
        assert!(!replicas.usable(first, Instant::now()));
        // It catches up: usable again.
        assert!(replicas.seen(first, Some(200), 200));
        assert!(replicas.usable(first, Instant::now()));
        assert_eq!(picked(&replicas, arrived), ["127.0.0.1:1"; 4]);

        // A read failed on it: skipped until it answers again.
        replicas.failed(first);
        assert!(!replicas.usable(first, Instant::now()));
        assert!(replicas.fresh_since(arrived).is_none());
        replicas.seen(first, Some(200), 200);
        assert!(replicas.usable(first, Instant::now()));

        // No replay position (not in recovery, or no answer): skipped.
        replicas.seen(second, None, 200);
        assert!(!replicas.usable(second, Instant::now()));
    }
}
