//! Whether this node is past what its cores can serve, and what share of new requests to refuse.
//!
//! The signal is the runtime's own lateness: a task asks to wake every [`TICK`] and notes how
//! late it woke. A busy node still wakes it on time; a node given more work than its cores can do
//! leaves it in the run queue behind everything else, and every request waits there too. Past
//! the configured lag the door ([`super::budget`]) refuses a share of new requests `unavailable`
//! before any work is done for them, growing to all of them at [`FULL_SHED_TIMES`] that lag, so
//! that what the node does is what it can finish in time. Without it, an overload of three times
//! (the busy hour, docs/PERFORMANCE.md) had every request queue until its deadline: the work done
//! for it was thrown away, the clients asked again, and timers (the cluster's heartbeat among
//! them) fired seconds late.
//!
//! The lag is smoothed over about [`SMOOTHING`] ticks, and one sample counts for at most a few
//! times the configured lag, so one stall (a page fault, the process descheduled once, a test's
//! thread busy for a second) refuses nothing however long it was; only lag that lasts does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often the lag is sampled.
const TICK: Duration = Duration::from_millis(25);
/// The weight of the newest sample is 1 / SMOOTHING.
const SMOOTHING: u64 = 8;
/// At this many times the configured lag, every new request is refused.
const FULL_SHED_TIMES: u64 = 5;

/// The node's lag and the share of new requests it refuses.
#[derive(Debug)]
pub struct Overload {
    /// Lag at which refusing starts (µs); 0: never refuse.
    from_us: u64,
    /// The smoothed lag, µs.
    lag_us: AtomicU64,
    /// Of each 1,000 new requests, how many to refuse.
    shed_per_mille: AtomicU32,
    /// Counts requests while refusing, to spread the refusals evenly.
    turn: AtomicU32,
}

impl Overload {
    /// Refuses from a smoothed lag of `from` on (zero: never).
    pub fn new(from: Duration) -> Overload {
        Overload {
            from_us: from.as_micros() as u64,
            lag_us: AtomicU64::new(0),
            shed_per_mille: AtomicU32::new(0),
            turn: AtomicU32::new(0),
        }
    }

    /// Whether to refuse this new request.
    pub fn shed(&self) -> bool {
        let share = self.shed_per_mille.load(Ordering::Relaxed);
        if share == 0 {
            return false;
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let refuse = refused_turn(turn, share);
        if refuse {
            metrics::counter!("chat_overload_refused_total").increment(1);
        }
        refuse
    }

    /// Samples the lag until `stop`.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        if self.from_us == 0 {
            return;
        }
        loop {
            let asked = Instant::now();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let late = asked.elapsed().saturating_sub(TICK).as_micros() as u64;
            self.sample(late);
        }
    }

    /// Takes in one sample of lateness (µs).
    fn sample(&self, late_us: u64) {
        let late_us = late_us.min(self.from_us * (FULL_SHED_TIMES - 1));
        let old = self.lag_us.load(Ordering::Relaxed);
        let lag = (old * (SMOOTHING - 1) + late_us) / SMOOTHING;
        self.lag_us.store(lag, Ordering::Relaxed);
        let share = shed_share(lag, self.from_us);
        let was = self.shed_per_mille.swap(share, Ordering::Relaxed);
        if (was == 0) != (share == 0) {
            if share > 0 {
                tracing::warn!(lag_ms = lag / 1000, "overloaded: refusing new requests");
            } else {
                tracing::info!("load back within what this node serves");
            }
        }
        metrics::gauge!("chat_runtime_lag_seconds").set(lag as f64 / 1e6);
    }
}

/// Of each 1,000 new requests, how many to refuse at a smoothed lag of `lag_us`: none up to
/// `from_us`, then growing in proportion to all at `FULL_SHED_TIMES` times it.
fn shed_share(lag_us: u64, from_us: u64) -> u32 {
    if from_us == 0 || lag_us <= from_us {
        return 0;
    }
    let span = from_us * (FULL_SHED_TIMES - 1);
    ((lag_us - from_us) * 1000 / span).min(1000) as u32
}

/// Whether the `turn`th request is among the `share` per mille refused: turns are spread over
/// the thousand by a step prime to it, so refusals come evenly, not in runs.
fn refused_turn(turn: u32, share: u32) -> bool {
    (u64::from(turn) * 619 % 1000) < u64::from(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_refused_up_to_the_lag_then_a_growing_share_then_all() {
        let from = 100_000;
        assert_eq!(shed_share(0, from), 0);
        assert_eq!(shed_share(from, from), 0);
        assert_eq!(shed_share(from * 3, from), 500);
        assert_eq!(shed_share(from * 5, from), 1000);
        assert_eq!(shed_share(from * 50, from), 1000);
        assert_eq!(shed_share(u64::MAX / 2000, 0), 0, "0 turns it off");
    }

    #[test]
    fn refusals_are_the_share_asked_and_spread_evenly() {
        for share in [0, 1, 250, 500, 999, 1000] {
            let refused = (0..1000).filter(|t| refused_turn(*t, share)).count();
            assert_eq!(refused, share as usize);
        }
        // at a half, no run of more than a few refusals in a row
        let longest = (0..1000)
            .map(|t| refused_turn(t, 500))
            .fold((0, 0), |(run, best), r| {
                let run = if r { run + 1 } else { 0 };
                (run, best.max(run))
            })
            .1;
        assert!(longest <= 3, "{longest}");
    }

    #[test]
    fn one_stall_refuses_nothing_a_lasting_lag_does() {
        let o = Overload::new(Duration::from_millis(100));
        o.sample(10_000_000);
        for _ in 0..4 {
            o.sample(0);
        }
        assert_eq!(o.shed_per_mille.load(Ordering::Relaxed), 0);
        for _ in 0..40 {
            o.sample(400_000);
        }
        assert!(o.shed_per_mille.load(Ordering::Relaxed) > 500);
        assert!((0..100).filter(|_| o.shed()).count() > 50);
    }
}
