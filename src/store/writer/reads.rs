//! The writer's lane for read pointers: every member's `read` of the node, gathered for a
//! short while and committed in one statement.
//!
//! A reader moves a read pointer about as often as a message is sent, and each one committed
//! alone costs the database a transaction and a WAL flush (on this machine ~370 µs of
//! PostgreSQL CPU, as much as a commit of fifty messages). Nothing waits on a read pointer but
//! the reader's `ok` and the others' receipt, so a lane of its own may gather longer than the
//! messages' window without slowing a message down.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::ports::{ReadMark, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::Done;

/// The least time between the starts of two commits of read pointers: what a receipt may wait
/// at most for the marks to gather (one commit is in flight at a time).
pub const READS_WINDOW: Duration = Duration::from_millis(20);

/// The most read pointers in one statement.
const MAX_MARKS_PER_COMMIT: usize = 4096;

pub(super) enum ReadJob {
    Mark {
        mark: ReadMark,
        done: Done,
    },
    /// Answered once every mark queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Commits the marks from `rx`, at most one commit in flight and two starts `window` apart;
/// ends once every sender is dropped and what was queued is committed.
pub(super) async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<ReadJob>) {
    let mut last_start: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        if let Some(at) = last_start {
            tokio::time::sleep_until(at + READS_WINDOW).await;
        }
        let (mut marks, mut dones, mut flushes) = (Vec::new(), Vec::new(), Vec::new());
        let mut job = Some(first);
        while let Some(j) = job.take() {
            match j {
                ReadJob::Mark { mark, done } => {
                    marks.push(mark);
                    dones.push(done);
                }
                ReadJob::Flush(tx) => flushes.push(tx),
            }
            if marks.len() < MAX_MARKS_PER_COMMIT {
                job = rx.try_recv().ok();
            }
        }
        last_start = Some(Instant::now());
        if !marks.is_empty() {
            let outcome = store.set_reads(&newest_each(marks)).await;
            answer(dones, outcome);
        }
        for f in flushes {
            let _ = f.send(());
        }
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

fn answer(dones: Vec<Done>, outcome: Result<(), StoreError>) {
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
