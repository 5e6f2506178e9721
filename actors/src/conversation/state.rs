//! The pure part of a conversation actor: the window of recently committed `mid`s, numbering,
//! and membership look-ups. Tested without an actor.

use std::collections::{HashMap, VecDeque};

use crate::ids::{Mid, Seq, UserId};
use crate::ports::{ConversationRecord, MemberRecord};
use crate::protocol::{Rejection, Role};

/// How many committed `mid`s a live conversation remembers; older retries are caught by the
/// database's unique `mid`.
const RECENT_MIDS: usize = 256;

/// Where a committed `mid` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its sender.
    pub sender: UserId,
    /// Its seq.
    pub seq: Seq,
    /// Its time.
    pub at: i64,
}

/// What a `send` with a known `mid` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same sender retried: answer the first result.
    Same(Committed),
    /// Another sender used the same `mid`: `conflict`.
    Clash,
}

/// A bounded window of recently committed `mid`s.
#[derive(Debug, Default)]
pub struct RecentMids {
    by_mid: HashMap<Mid, Committed>,
    order: VecDeque<Mid>,
}

impl RecentMids {
    /// Remembers a committed message, forgetting the oldest beyond the window.
    pub fn insert(&mut self, mid: Mid, committed: Committed) {
        if self.by_mid.insert(mid, committed).is_none() {
            self.order.push_back(mid);
            if self.order.len() > RECENT_MIDS
                && let Some(old) = self.order.pop_front()
            {
                self.by_mid.remove(&old);
            }
        }
    }

    /// What a send of `mid` by `sender` gets, if the window knows the `mid`.
    pub fn check(&self, mid: Mid, sender: UserId) -> Option<Retry> {
        self.by_mid.get(&mid).map(|c| {
            if c.sender == sender {
                Retry::Same(*c)
            } else {
                Retry::Clash
            }
        })
    }
}

/// The member record of `user`, or `forbidden`. In a business conversation only the customer
/// and the member agents act; the business's own member row is not a person.
pub fn member(record: &ConversationRecord, user: UserId) -> Result<&MemberRecord, Rejection> {
    record
        .members
        .iter()
        .find(|m| m.user == user && m.role != Role::Business)
        .ok_or_else(|| Rejection::forbidden("not a member of this conversation"))
}

/// The time for a new message: now, but never before the previous one, so `at` follows `seq`.
pub fn next_at(now: i64, previous: i64) -> i64 {
    now.max(previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_mid_returns_the_first_result_and_another_sender_clashes() {
        let mut w = RecentMids::default();
        let (a, b, mid) = (UserId::random(), UserId::random(), Mid::random());
        let first = Committed {
            sender: a,
            seq: 4,
            at: 10,
        };
        w.insert(mid, first);
        assert_eq!(w.check(mid, a), Some(Retry::Same(first)));
        assert_eq!(w.check(mid, b), Some(Retry::Clash));
        assert_eq!(w.check(Mid::random(), a), None);
    }

    #[test]
    fn the_window_forgets_the_oldest_beyond_its_size() {
        let mut w = RecentMids::default();
        let a = UserId::random();
        let first = Mid::random();
        w.insert(
            first,
            Committed {
                sender: a,
                seq: 1,
                at: 1,
            },
        );
        for i in 0..RECENT_MIDS {
            w.insert(
                Mid::random(),
                Committed {
                    sender: a,
                    seq: i as i64 + 2,
                    at: 1,
                },
            );
        }
        assert_eq!(w.check(first, a), None);
        assert_eq!(w.by_mid.len(), RECENT_MIDS);
    }

    #[test]
    fn message_times_never_go_backwards() {
        assert_eq!(next_at(5, 9), 9);
        assert_eq!(next_at(12, 9), 12);
    }
}
