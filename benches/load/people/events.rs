//! What a people run counts and times, per worker (one shared tally, borrowed briefly by each
//! user's task: the worker is one thread) and merged in the parent.

use std::collections::{BTreeMap, HashMap};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::{Quantiles, quantiles};
use crate::tally::{histogram, pairs};

/// The kinds of timed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Timed {
    /// Scheduled send → `sent`.
    SendAck,
    /// Scheduled send → `message` push, sender on the receiver's node.
    DeliverySameNode,
    /// Scheduled send → `message` push, sender on another node.
    DeliveryCrossNode,
    /// `typing` sent → `typing` push (sender and receiver in the same worker: a sample).
    Typing,
    /// `read` sent → `receipt` push (likewise sampled).
    Receipt,
    /// The start of a reconnect → every conversation caught up.
    Reconnect,
    /// A connection the server ended (a node's death) → every conversation caught up again,
    /// on whichever node took the user (the pause before reconnecting and any refused connects
    /// included).
    Failover,
    /// Connect started → the reply to the first request (the conversation list).
    Connect,
    /// `conversations` request → reply.
    List,
    /// `history` request → reply.
    History,
}

/// The plain counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Count {
    Sent,
    Acked,
    /// Messages pushed live to a member.
    DeliveredLive,
    /// Messages a member found by `history` (a gap, a reconnect, the final check) rather than live.
    CaughtUp,
    /// History fetches made because a pushed `seq` skipped one.
    GapFetches,
    TypingSent,
    /// Typing started and stopped without a send.
    TypingAbandoned,
    TypingPushes,
    ReadsSent,
    ReceiptPushes,
    PresencePushes,
    Drops,
    Leaves,
    Reconnects,
    /// Connections the server ended or broke (a node's death, a slow consumer cut off), not the
    /// user's own drops.
    Lost,
    TokenRefreshes,
    ConnectFailures,
    /// Sends still unanswered when their connection ended (the user dropped off the network or
    /// left, or the server ended the connection): their `sent` went nowhere.
    SendsCutOff,
    /// A `history` page that skipped a `seq` below the newest: a hole in what was stored.
    HistoryHoles,
    /// Users whose last catch-up did not finish within a minute (left out of the loss check).
    FinalCheckUnfinished,
    /// Times a user's timer woke its task: a few a message (typing, the send, reads, retries);
    /// hundreds would mean a task woken with nothing due, spinning.
    TimerWakes,
}

/// One worker's tally.
pub(crate) struct Events {
    timed: BTreeMap<Timed, Histogram<u64>>,
    pub(crate) counts: BTreeMap<Count, u64>,
    /// Error replies by code.
    pub(crate) errors: BTreeMap<String, u64>,
}

impl Events {
    pub(crate) fn new() -> Events {
        Events {
            timed: BTreeMap::new(),
            counts: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub(crate) fn time(&mut self, kind: Timed, us: u64) {
        let _ = self
            .timed
            .entry(kind)
            .or_insert_with(histogram)
            .record(us.max(1));
    }

    pub(crate) fn count(&mut self, kind: Count) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub(crate) fn add(&mut self, kind: Count, n: u64) {
        *self.counts.entry(kind).or_default() += n;
    }

    pub(crate) fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub(crate) fn tally(&self) -> EventTally {
        EventTally {
            timed: self.timed.iter().map(|(k, h)| (*k, pairs(h))).collect(),
            counts: self.counts.clone(),
            errors: self.errors.clone(),
            ..EventTally::default()
        }
    }
}

/// What a worker sends the parent (and what the parent merges).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct EventTally {
    pub(crate) timed: BTreeMap<Timed, Vec<(u64, u64)>>,
    pub(crate) counts: BTreeMap<Count, u64>,
    pub(crate) errors: BTreeMap<String, u64>,
    /// Users connected at the end.
    pub(crate) connected: u64,
    /// Per conversation: the highest `seq` acknowledged to a sender of this worker.
    pub(crate) acked_max: HashMap<String, u64>,
    /// Per conversation: the lowest `seq` up to which a connected member of this worker holds
    /// every message, after the final catch-up.
    pub(crate) held_min: HashMap<String, u64>,
}

/// The merged tally of every worker.
pub(crate) struct Merged {
    pub(crate) timed: BTreeMap<Timed, Histogram<u64>>,
    pub(crate) counts: BTreeMap<Count, u64>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) connected: u64,
    acked_max: HashMap<String, u64>,
    held_min: HashMap<String, u64>,
}

impl Merged {
    pub(crate) fn new() -> Merged {
        Merged {
            timed: BTreeMap::new(),
            counts: BTreeMap::new(),
            errors: BTreeMap::new(),
            connected: 0,
            acked_max: HashMap::new(),
            held_min: HashMap::new(),
        }
    }

    pub(crate) fn add(&mut self, t: EventTally) {
        for (k, ps) in t.timed {
            let h = self.timed.entry(k).or_insert_with(histogram);
            for (v, n) in ps {
                let _ = h.record_n(v, n);
            }
        }
        for (k, n) in t.counts {
            *self.counts.entry(k).or_default() += n;
        }
        for (k, n) in t.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.connected += t.connected;
        for (c, s) in t.acked_max {
            let e = self.acked_max.entry(c).or_default();
            *e = (*e).max(s);
        }
        for (c, s) in t.held_min {
            let e = self.held_min.entry(c).or_insert(u64::MAX);
            *e = (*e).min(s);
        }
    }

    pub(crate) fn get(&self, kind: Count) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub(crate) fn quantiles(&self, kinds: &[Timed]) -> Quantiles {
        let mut h = histogram();
        for k in kinds {
            if let Some(x) = self.timed.get(k) {
                let _ = h.add(x);
            }
        }
        quantiles(&h)
    }

    /// Acknowledged messages that some connected member holds neither from a push nor from a
    /// catch-up, counted per conversation by the widest such gap: must be 0.
    pub(crate) fn acked_lost(&self) -> u64 {
        self.acked_max
            .iter()
            .filter_map(|(c, acked)| {
                let held = *self.held_min.get(c)?;
                Some(acked.saturating_sub(held))
            })
            .sum()
    }
}
