//! The per-node batching writer: many conversations' batches and the read pointers that came
//! meanwhile ([`reads`]), one transaction, one commit.
//!
//! Conversation actors hand it their batch and get the outcome back through a callback, so no
//! actor ever waits on the database. While commits are in flight, the next batches queue up
//! and go together: the busier the node, the bigger the batch, the fewer the commits. A few
//! commits may be in flight at once (on PostgreSQL): a conversation never has two batches here,
//! so commits in flight never hold two batches of one conversation, and one slow commit does
//! not hold up every conversation of the node.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::ports::{AppendBatch, Appended, ReadMark, Store, StoreError, Writer};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::reads::{Pending, ReadJob};

mod reads;

pub use reads::READS_WINDOW;

/// The most messages in one transaction.
const MAX_MESSAGES_PER_COMMIT: usize = 4096;

type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Job {
    Append {
        batch: AppendBatch,
        done: Done,
    },
    /// Answered once every job queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// The writer's handle: the `Writer` port.
pub struct BatchingWriter {
    jobs: mpsc::UnboundedSender<Job>,
    reads: mpsc::UnboundedSender<ReadJob>,
}

impl BatchingWriter {
    /// Starts the writer task with at most `concurrency` commits in flight (1 for a store with
    /// one writer, such as SQLite), starting two commits at least `window` apart. It ends,
    /// after committing everything queued, once every handle is dropped; await the returned
    /// task to know the last batch is committed.
    ///
    /// The window: a commit costs the database about the same whether it carries one message
    /// or fifty (on this machine a single-row commit is ~370 µs of PostgreSQL CPU, mostly the
    /// WAL flush), so the writer lets batches gather between commits rather than committing
    /// each message the moment it comes. At 1,000 msgs/s a 4 ms window makes ~4 messages a
    /// commit instead of one; busier, the commits get fewer and bigger still. The first
    /// message after a quiet spell commits at once; one that closely follows a commit waits at
    /// most `window`, which is what the window adds to a send's latency.
    pub fn start(
        store: Arc<dyn Store>,
        concurrency: usize,
        window: Duration,
    ) -> (Arc<BatchingWriter>, JoinHandle<()>) {
        // Unbounded on purpose: each conversation has at most one batch here at a time, so the
        // queue is bounded by the number of live conversations.
        // The reads' queue is bounded by the reads in flight, which each user's in-flight
        // budget bounds.
        let (tx, rx) = mpsc::unbounded_channel();
        let (reads_tx, reads_rx) = mpsc::unbounded_channel();
        let lanes = Lanes {
            jobs: rx,
            reads: reads_rx,
        };
        let task = tokio::spawn(run(store, lanes, concurrency.max(1), window));
        let writer = BatchingWriter {
            jobs: tx,
            reads: reads_tx,
        };
        (Arc::new(writer), task)
    }
}

impl BatchingWriter {
    /// Waits until every batch and read pointer submitted so far is committed (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl Writer for BatchingWriter {
    fn submit(&self, batch: AppendBatch, done: Done) {
        crate::metrics::hot().writer_queue.increment(1.0);
        if let Err(mpsc::error::SendError(Job::Append { done, .. })) =
            self.jobs.send(Job::Append { batch, done })
        {
            crate::metrics::hot().writer_queue.decrement(1.0);
            done(Err(StoreError::Unavailable(
                "the writer has stopped".into(),
            )));
        }
    }

    fn submit_read(&self, mark: ReadMark, done: Done) {
        if let Err(mpsc::error::SendError(ReadJob { done, .. })) =
            self.reads.send(ReadJob { mark, done })
        {
            done(Err(StoreError::Unavailable(
                "the writer has stopped".into(),
            )));
        }
    }
}

/// One commit's batches and read pointers, and their callbacks.
#[derive(Default)]
struct Commit {
    batches: Vec<AppendBatch>,
    dones: Vec<Done>,
    messages: usize,
    marks: Vec<ReadMark>,
    mark_dones: Vec<Done>,
}

impl Commit {
    fn take_marks(&mut self, pending: &mut Pending) {
        (self.marks, self.mark_dones) = pending.take();
    }
}

/// A commit in flight: resolves to the commit and its outcome.
type InFlight = BoxFuture<'static, (Commit, Appended)>;

/// The writer's two queues: batches (and flushes) of the conversations, marks of the readers.
struct Lanes {
    jobs: mpsc::UnboundedReceiver<Job>,
    reads: mpsc::UnboundedReceiver<ReadJob>,
}

async fn run(store: Arc<dyn Store>, mut lanes: Lanes, concurrency: usize, window: Duration) {
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // The first job of the next commit, taken while it waits for its start time.
    let mut next: Option<Job> = None;
    let mut next_start: Option<Instant> = None;
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut marks = Pending::default();
    let (mut open, mut reads_open) = (true, true);
    loop {
        if !flushes.is_empty() {
            // A flush covers the marks submitted before it, which may still be queued.
            while let Ok(job) = lanes.reads.try_recv() {
                marks.push(job);
            }
            // It waits for every commit before it, the marks' too: no batch starts meanwhile.
            if in_flight.is_empty() && marks.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
            }
        }
        let room = in_flight.len() < concurrency;
        let may_start = flushes.is_empty() && room;
        if may_start && next.is_some() && next_start.is_none_or(|at| Instant::now() >= at) {
            if let Some(first) = next.take() {
                let mut commit = gather(first, &mut lanes.jobs, &mut flushes);
                // A flush alone commits nothing: the marks wait for their time.
                if !commit.batches.is_empty() {
                    if marks.may_go() {
                        commit.take_marks(&mut marks);
                    }
                    next_start = (!window.is_zero()).then(|| Instant::now() + window);
                    in_flight.push(start_commit(store.clone(), commit));
                }
            }
            continue;
        }
        // Marks that waited their window for messages to ride with go alone.
        if room && marks.due().is_some_and(|at| Instant::now() >= at) {
            let mut commit = Commit::default();
            commit.take_marks(&mut marks);
            in_flight.push(start_commit(store.clone(), commit));
            continue;
        }
        if !open && !reads_open && next.is_none() && in_flight.is_empty() && marks.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
            return;
        }
        let batch_at = next_start.filter(|_| may_start && next.is_some());
        let marks_at = marks.due().filter(|_| room);
        let wait_until = match (batch_at, marks_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            Some((commit, appended)) = in_flight.next(), if !in_flight.is_empty() => {
                if !commit.mark_dones.is_empty() {
                    marks.in_flight = false;
                }
                answer(commit, appended);
            }
            job = lanes.jobs.recv(), if open && next.is_none() && may_start => match job {
                Some(job) => next = Some(job),
                None => open = false,
            },
            job = lanes.reads.recv(), if reads_open => match job {
                Some(job) => marks.push(job),
                None => reads_open = false,
            },
            _ = tokio::time::sleep_until(wait_until.unwrap_or_else(Instant::now)), if wait_until.is_some() => {
                if next_start.is_some_and(|at| Instant::now() >= at) {
                    next_start = None;
                }
            }
        }
    }
}

/// Takes `first` and whatever else is queued, up to one commit's worth; a flush ends the commit.
fn gather(
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    flushes: &mut Vec<oneshot::Sender<()>>,
) -> Commit {
    let mut commit = Commit::default();
    let mut job = Some(first);
    while let Some(j) = job.take() {
        match j {
            Job::Append { batch, done } => {
                commit.messages += batch.messages.len();
                commit.batches.push(batch);
                commit.dones.push(done);
            }
            Job::Flush(tx) => flushes.push(tx),
        }
        if commit.messages < MAX_MESSAGES_PER_COMMIT && flushes.is_empty() {
            job = rx.try_recv().ok();
        }
    }
    commit
}

fn start_commit(store: Arc<dyn Store>, commit: Commit) -> InFlight {
    crate::metrics::hot()
        .writer_queue
        .decrement(commit.batches.len() as f64);
    Box::pin(async move {
        let started = Instant::now();
        let appended = store.append(&commit.batches, &commit.marks).await;
        if !commit.batches.is_empty() {
            crate::metrics::hot()
                .commit_seconds
                .record(started.elapsed().as_secs_f64());
            crate::metrics::hot()
                .commit_messages
                .record(commit.messages as f64);
        }
        (commit, appended)
    })
}

/// Tells each batch's conversation, and each mark's reader, how its commit went.
fn answer(commit: Commit, appended: Appended) {
    let mut persisted = 0u64;
    for ((batch, done), result) in commit
        .batches
        .into_iter()
        .zip(commit.dones)
        .zip(appended.batches)
    {
        if result.is_ok() {
            persisted += batch.messages.len() as u64;
        }
        done(result);
    }
    reads::answer(commit.mark_dones, appended.marks);
    crate::metrics::hot().persisted.increment(persisted);
}
