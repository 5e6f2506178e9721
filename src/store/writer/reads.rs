//! The read pointers waiting for a commit: every member's `read` of the node, gathered until the
//! next commit of messages takes them along, or the reads' window runs out and they go alone.
//!
//! A reader moves a read pointer about as often as a message is sent, and each one committed
//! alone costs the database a transaction and a WAL flush (on this machine ~370 µs of
//! PostgreSQL CPU, as much as a commit of fifty messages), and on PostgreSQL a round trip, whose
//! send and wake-up cost as much again. Nothing waits on a read pointer but the reader's `ok`
//! and the others' receipt, so it may wait a little for a commit that goes anyway.

use std::time::Duration;

use chat_actors::ports::{ReadMark, StoreError};
use tokio::time::Instant;

use super::Done;

/// The longest a read pointer waits for a commit of messages to take it along before it is
/// committed alone: what a receipt may wait at most for its pointer to be stored.
pub const READS_WINDOW: Duration = Duration::from_millis(20);

/// The most read pointers in one commit.
const MAX_MARKS_PER_COMMIT: usize = 4096;

/// A `read` handed to the writer.
pub(super) struct ReadJob {
    pub(super) mark: ReadMark,
    pub(super) done: Done,
}

/// The marks no commit has taken yet.
#[derive(Default)]
pub(super) struct Pending {
    marks: Vec<ReadMark>,
    dones: Vec<Done>,
    /// When the oldest of them must go, with or without messages.
    due: Option<Instant>,
    /// A commit in flight carries marks: the next waits for it, so that two commits of this
    /// node never lock the same members' rows (in two orders, which would deadlock).
    pub(super) in_flight: bool,
}

impl Pending {
    pub(super) fn push(&mut self, job: ReadJob) {
        self.due
            .get_or_insert_with(|| Instant::now() + READS_WINDOW);
        self.marks.push(job.mark);
        self.dones.push(job.done);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Whether a commit may take marks now.
    pub(super) fn may_go(&self) -> bool {
        !self.in_flight && !self.marks.is_empty()
    }

    /// When the marks must go alone, if they wait and may go.
    pub(super) fn due(&self) -> Option<Instant> {
        self.due.filter(|_| self.may_go())
    }

    /// Takes up to one commit's worth: the newest mark of each member and conversation, and
    /// every mark's callback.
    pub(super) fn take(&mut self) -> (Vec<ReadMark>, Vec<Done>) {
        let n = self.marks.len().min(MAX_MARKS_PER_COMMIT);
        let marks: Vec<ReadMark> = self.marks.drain(..n).collect();
        let dones = self.dones.drain(..n).collect();
        self.due = if self.marks.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        self.in_flight = true;
        (newest_each(marks), dones)
    }
}

/// One mark a member and conversation, the newest: the store moves each row once a statement.
/// Sorted by conversation and member, so two commits (of two nodes, for a moment owners of one
/// conversation) lock the rows they share in one order.
fn newest_each(mut marks: Vec<ReadMark>) -> Vec<ReadMark> {
    marks.sort_unstable_by(|a, b| (a.conv, a.user, b.seq).cmp(&(b.conv, b.user, a.seq)));
    marks.dedup_by(|later, kept| later.conv == kept.conv && later.user == kept.user);
    marks
}

/// Tells each mark's reader how its commit went.
pub(super) fn answer(dones: Vec<Done>, outcome: Result<(), StoreError>) {
    match outcome {
        Ok(()) => dones.into_iter().for_each(|done| done(Ok(()))),
        Err(e) => {
            let why = e.to_string();
            let mut first = Some(e);
            for done in dones {
                done(Err(first.take().unwrap_or_else(|| {
                    StoreError::Unavailable(why.clone().into())
                })));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chat_actors::ids::{ConversationId, UserId};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn marks_wait_their_window_and_only_one_commit_carries_them() {
        let mark = |seq| ReadMark {
            conv: ConversationId(Uuid::from_u128(1)),
            user: UserId(Uuid::from_u128(2)),
            seq,
        };
        let job = |seq| ReadJob {
            mark: mark(seq),
            done: Box::new(|_| {}),
        };
        let mut pending = Pending::default();
        assert!(!pending.may_go() && pending.due().is_none());
        let before = Instant::now();
        pending.push(job(3));
        let after = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        pending.push(job(4));
        // The oldest mark sets the time.
        let due = pending.due().unwrap();
        assert!(due >= before + READS_WINDOW && due <= after + READS_WINDOW);
        let (marks, dones) = pending.take();
        assert_eq!((marks, dones.len()), (vec![mark(4)], 2));
        // While they are in flight the next marks wait, whatever their time.
        pending.push(job(5));
        assert!(!pending.may_go() && pending.due().is_none());
        pending.in_flight = false;
        assert!(pending.may_go() && pending.due().is_some());
    }

    #[test]
    fn keeps_the_newest_mark_of_each_member_and_conversation_in_order() {
        let (c1, c2) = (
            ConversationId(Uuid::from_u128(1)),
            ConversationId(Uuid::from_u128(2)),
        );
        let (u1, u2) = (UserId(Uuid::from_u128(1)), UserId(Uuid::from_u128(2)));
        let mark = |conv, user, seq| ReadMark { conv, user, seq };
        let kept = newest_each(vec![
            mark(c2, u1, 4),
            mark(c1, u2, 7),
            mark(c2, u1, 9),
            mark(c1, u2, 3),
            mark(c1, u1, 5),
            mark(c2, u1, 6),
        ]);
        assert_eq!(
            kept,
            vec![mark(c1, u1, 5), mark(c1, u2, 7), mark(c2, u1, 9)]
        );
    }
}
