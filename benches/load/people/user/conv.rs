//! One conversation as a member's app holds it: every message up to a mark, those above it
//! that arrived early, and what was read.

use std::collections::BTreeSet;

use uuid::Uuid;

/// One conversation as a member's app holds it.
pub(super) struct Conv {
    pub(super) id: Uuid,
    /// Every message up to here is held.
    pub(super) mark: u64,
    /// Held messages above `mark` (a push that skipped one, or our own `sent` arriving early).
    pub(super) ahead: BTreeSet<u64>,
    /// A `history` `after` in flight for this conversation, and the highest seq it must reach.
    pub(super) fetching: Option<u64>,
    /// The seq a catch-up in progress needs held here (0: none): the list's `last_seq` when
    /// it was behind.
    pub(super) owed: u64,
    /// The newest seq of others' messages seen, and the newest we said we read.
    pub(super) unread_to: u64,
    pub(super) read_to: u64,
}

impl Conv {
    pub(super) fn new(id: Uuid, mark: u64) -> Conv {
        Conv {
            id,
            mark,
            ahead: BTreeSet::new(),
            fetching: None,
            owed: 0,
            unread_to: mark,
            read_to: mark,
        }
    }

    /// Whether a catch-up in progress still waits for this conversation.
    pub(super) fn owing(&self) -> bool {
        self.mark < self.owed
    }

    /// Takes in a held seq; true if it was new.
    pub(super) fn hold(&mut self, seq: u64) -> bool {
        if seq <= self.mark || self.ahead.contains(&seq) {
            return false;
        }
        if seq == self.mark + 1 {
            self.mark = seq;
            while self.ahead.remove(&(self.mark + 1)) {
                self.mark += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        true
    }
}
