//! What is counted and timed: per connection, per worker (sent to the parent as JSON) and in
//! the report; the clock and the histograms every part uses.

use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What is counted, per connection, per worker and in the report.
#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) connections: u64,
    pub(crate) connect_errors: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    pub(crate) expected_deliveries: u64,
    pub(crate) errors: u64,
    pub(crate) rate_limited: u64,
    /// `history` and `conversations` answered (with `--reads-per-msg`).
    #[serde(default)]
    pub(crate) reads: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.connections += o.connections;
        self.connect_errors += o.connect_errors;
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.expected_deliveries += o.expected_deliveries;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
        self.reads += o.reads;
    }
}

/// What each worker reports: its counts and its histograms as (value, count) pairs.
#[derive(Serialize, Deserialize, Default, Debug)]
pub(crate) struct Tally {
    #[serde(flatten)]
    pub(crate) counts: Counts,
    pub(crate) ack_us: Vec<(u64, u64)>,
    pub(crate) delivery_us: Vec<(u64, u64)>,
    #[serde(default)]
    pub(crate) delivery_local_us: Vec<(u64, u64)>,
    #[serde(default)]
    pub(crate) delivery_cross_us: Vec<(u64, u64)>,
    #[serde(default)]
    pub(crate) read_us: Vec<(u64, u64)>,
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Points `timer` at `wake_us` (µs since the epoch, the clock every schedule here keeps).
pub(crate) fn aim(timer: std::pin::Pin<&mut tokio::time::Sleep>, wake_us: u64, now_us: u64) {
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_micros(wake_us.saturating_sub(now_us));
    if timer.deadline() != deadline {
        timer.reset(deadline);
    }
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// A histogram as (value, count) pairs, for a worker's report.
pub(crate) fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}
