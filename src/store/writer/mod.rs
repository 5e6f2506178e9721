//! The per-node batching writer: many conversations' batches, one transaction, one commit;
//! and, in a lane of its own ([`reads`]), many read pointers in one statement.
//!
//! Conversation actors hand it their batch and get the outcome back through a callback, so no
//! actor ever waits on the database. While commits are in flight, the next batches queue up
//! and go together: the busier the node, the bigger the batch, the fewer the commits. A few
//! commits may be in flight at once (on PostgreSQL): a conversation never has two batches here,
//! so commits in flight never hold two batches of one conversation, and one slow commit does
//! not hold up every conversation of the node.

use std::sync::Arc;
use std::time::Duration;

use chat_actors::ports::{AppendBatch, ReadMark, Store, StoreError, Writer};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::reads::ReadJob;

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
        // The read lane's queue is bounded by the reads in flight, which each user's in-flight
        // budget bounds.
        let (tx, rx) = mpsc::unbounded_channel();
        let (reads_tx, reads_rx) = mpsc::unbounded_channel();
        let messages = tokio::spawn(run(store.clone(), rx, concurrency.max(1), window));
        let reads = tokio::spawn(reads::run(store, reads_rx));
        let task = tokio::spawn(async move {
            let _ = tokio::join!(messages, reads);
        });
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
        let (reads_tx, reads_rx) = oneshot::channel();
        let messages = self.jobs.send(Job::Flush(tx)).is_ok();
        let reads = self.reads.send(ReadJob::Flush(reads_tx)).is_ok();
        if messages {
            let _ = rx.await;
        }
        if reads {
            let _ = reads_rx.await;
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
        if let Err(mpsc::error::SendError(ReadJob::Mark { done, .. })) =
            self.reads.send(ReadJob::Mark { mark, done })
        {
            done(Err(StoreError::Unavailable(
                "the writer has stopped".into(),
            )));
        }
    }
}

/// One commit's batches and their callbacks.
struct Commit {
    batches: Vec<AppendBatch>,
    dones: Vec<Done>,
    messages: usize,
}

/// A commit in flight: resolves to the commit and each batch's outcome.
type InFlight = BoxFuture<'static, (Commit, Vec<Result<(), StoreError>>)>;

async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    concurrency: usize,
    window: Duration,
) {
    let mut in_flight: FuturesUnordered<InFlight> = FuturesUnordered::new();
    // The first job of the next commit, taken while it waits for its start time.
    let mut next: Option<Job> = None;
    let mut next_start: Option<Instant> = None;
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    loop {
        // A flush waits for every commit before it: nothing new starts meanwhile.
        if !flushes.is_empty() && in_flight.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
        let may_start = flushes.is_empty() && in_flight.len() < concurrency;
        if may_start && next.is_some() && next_start.is_none_or(|at| Instant::now() >= at) {
            if let Some(first) = next.take() {
                let commit = gather(first, &mut rx, &mut flushes);
                if !commit.batches.is_empty() {
                    next_start = (!window.is_zero()).then(|| Instant::now() + window);
                    in_flight.push(start_commit(store.clone(), commit));
                }
            }
            continue;
        }
        if !open && next.is_none() && in_flight.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
            return;
        }
        let wait_until = next_start.filter(|_| may_start && next.is_some());
        tokio::select! {
            Some((commit, results)) = in_flight.next(), if !in_flight.is_empty() => answer(commit, results),
            job = rx.recv(), if open && next.is_none() && may_start => match job {
                Some(job) => next = Some(job),
                None => open = false,
            },
            _ = tokio::time::sleep_until(wait_until.unwrap_or_else(Instant::now)), if wait_until.is_some() => {
                next_start = None;
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
    let mut commit = Commit {
        batches: Vec::new(),
        dones: Vec::new(),
        messages: 0,
    };
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
        let results = store.append(&commit.batches).await;
        crate::metrics::hot()
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        crate::metrics::hot()
            .commit_messages
            .record(commit.messages as f64);
        (commit, results)
    })
}

/// Tells each batch's conversation how its commit went.
fn answer(commit: Commit, results: Vec<Result<(), StoreError>>) {
    let mut persisted = 0u64;
    for ((batch, done), result) in commit.batches.into_iter().zip(commit.dones).zip(results) {
        if result.is_ok() {
            persisted += batch.messages.len() as u64;
        }
        done(result);
    }
    crate::metrics::hot().persisted.increment(persisted);
}
