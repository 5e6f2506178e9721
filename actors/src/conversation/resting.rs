//! Conversations at rest: the record of a conversation whose actor stopped for want of use, kept
//! for a while so that its next use starts the actor without a trip to the database.
//!
//! At people's pace a conversation talks every few minutes. Keeping its actor up between talks
//! holds ~5 KiB (ractor's channels and task, the window of `mid`s); letting it stop costs a
//! statement to load it again, and that was a third of the database's statements in the people
//! scenario. The record alone is a few hundred bytes, so the actor stops sooner and the record
//! waits here.
//!
//! A record handed over at an idle stop is what the database holds, as long as this node has
//! owned the conversation without a break: every change of a conversation goes through its
//! owner's actor. Whatever may break that starts a new epoch ([`Resting::forget_all`]): a change
//! of the live set (the conversation may have moved away and back) and a bus outage (the other
//! nodes may have counted this one out meanwhile). A record is only taken back in the epoch it
//! was loaded in. What is left (two nodes that both believe they own a conversation for a moment)
//! is the database's to fence, as for live actors: a stale `seq` conflicts and the actor reloads.
//!
//! A map and a sweep, not a cache crate: moka's entry costs ~390 bytes over the record (its
//! deques, its entry info, its key twice), twice what the map costs, and the records are here
//! to save memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::ids::ConversationId;
use crate::ports::ConversationRecord;

/// Records kept at most, whatever their age (~300 bytes each for a direct conversation): a node
/// that holds this many keeps no more until the sweep drops the old ones.
const MOST_RESTING: usize = 200_000;

/// A record at rest: the epoch it was loaded in, and since when it rests.
struct AtRest {
    epoch: u64,
    since: Instant,
    record: ConversationRecord,
}

/// The node's conversations at rest.
pub struct Resting {
    /// How long a record is kept; zero keeps none.
    keep: Duration,
    records: DashMap<ConversationId, AtRest>,
    epoch: AtomicU64,
}

impl Resting {
    /// Keeps each record for `keep` after its actor stopped; zero keeps none.
    pub fn new(keep: Duration) -> Resting {
        Resting {
            keep,
            records: DashMap::new(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The epoch now: read it before loading a record from the database, and hand it back with
    /// the record.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Keeps the record of a conversation whose actor stopped idle, loaded in `epoch`. A record
    /// of an earlier epoch is dropped: it may be stale.
    pub fn put(&self, epoch: u64, record: ConversationRecord) {
        if self.keep.is_zero() || epoch != self.epoch() || self.records.len() >= MOST_RESTING {
            return;
        }
        let since = Instant::now();
        self.records.insert(
            record.id,
            AtRest {
                epoch,
                since,
                record,
            },
        );
    }

    /// Takes the record of `conv` back, if one rests here from the present epoch and is not
    /// older than the time records are kept.
    pub fn take(&self, conv: ConversationId) -> Option<ConversationRecord> {
        let (_, at_rest) = self.records.remove(&conv)?;
        // An insert may have raced a `forget_all`: the epoch inside tells.
        if at_rest.epoch != self.epoch() || at_rest.since.elapsed() > self.keep {
            return None;
        }
        metrics::counter!("chat_conversation_rests_taken_total").increment(1);
        Some(at_rest.record)
    }

    /// Starts a new epoch: no record kept so far is handed out again.
    pub fn forget_all(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.records.clear();
    }

    /// Drops the records kept longer than their time (the node runs it now and then).
    pub fn sweep(&self) {
        let epoch = self.epoch();
        let keep = self.keep;
        self.records
            .retain(|_, at_rest| at_rest.epoch == epoch && at_rest.since.elapsed() <= keep);
    }

    /// How many records rest here.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none rests here.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ConversationKind;

    fn record() -> ConversationRecord {
        ConversationRecord {
            id: ConversationId::random(),
            kind: ConversationKind::Direct,
            name: None,
            business: None,
            created_at: 1,
            last_seq: 7,
            last_activity: 2,
            members: Vec::new(),
        }
    }

    #[test]
    fn a_record_put_back_is_taken_once() {
        let resting = Resting::new(Duration::from_secs(60));
        let r = record();
        resting.put(resting.epoch(), r.clone());
        let back = resting.take(r.id).map(|b| (b.id, b.last_seq));
        assert_eq!(back, Some((r.id, 7)));
        assert!(resting.take(r.id).is_none());
    }

    #[test]
    fn a_new_epoch_hands_out_nothing_loaded_before_it() {
        let resting = Resting::new(Duration::from_secs(60));
        let (kept, late) = (record(), record());
        let loaded_in = resting.epoch();
        resting.put(loaded_in, kept.clone());
        resting.forget_all();
        // An actor loaded before the change stops after it: its record is not kept.
        resting.put(loaded_in, late.clone());
        assert!(resting.take(kept.id).is_none());
        assert!(resting.take(late.id).is_none());
        let fresh = record();
        resting.put(resting.epoch(), fresh.clone());
        assert!(resting.take(fresh.id).is_some());
    }

    #[test]
    fn a_record_past_its_time_is_neither_taken_nor_kept_by_the_sweep() {
        let resting = Resting::new(Duration::from_millis(40));
        let (old, young) = (record(), record());
        resting.put(resting.epoch(), old.clone());
        std::thread::sleep(Duration::from_millis(60));
        assert!(resting.take(old.id).is_none());
        resting.put(resting.epoch(), old.clone());
        std::thread::sleep(Duration::from_millis(60));
        resting.put(resting.epoch(), young.clone());
        resting.sweep();
        assert_eq!(resting.len(), 1);
        assert!(resting.take(young.id).is_some());
    }

    #[test]
    fn zero_keeps_nothing() {
        let resting = Resting::new(Duration::ZERO);
        let r = record();
        resting.put(resting.epoch(), r.clone());
        assert!(resting.take(r.id).is_none());
        assert!(resting.is_empty());
    }
}
