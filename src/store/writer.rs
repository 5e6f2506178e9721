//! The per-node batching writer: many conversations' batches, one transaction, one commit.
//!
//! Conversation actors hand it their batch and get the outcome back through a callback, so no
//! actor ever waits on the database. While one transaction commits, the next batches queue up
//! and go together: the busier the node, the bigger the batch, the fewer the commits.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chat_actors::ports::{AppendBatch, Store, StoreError, Writer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// The most messages in one transaction.
const MAX_MESSAGES_PER_COMMIT: usize = 4096;

/// The least time between the starts of two commits. A commit costs the database about the same
/// whether it carries one message or fifty, so under load the writer lets batches gather for
/// this long instead of committing as fast as the last commit returns (on this machine that was
/// ~1,100 commits/s of ~5 messages at 6,000 msgs/s, and PostgreSQL's CPU went on commits). Only
/// a busy writer waits (its last commit carried [`BUSY_BATCHES`] conversations or more): a quiet
/// node, or one conversation talking alone, commits at once.
const MIN_COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// How many conversations' batches in one commit make the writer busy.
const BUSY_BATCHES: usize = 2;

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
}

impl BatchingWriter {
    /// Starts the writer task. It ends, after committing everything queued, once every handle
    /// is dropped; await the returned task to know the last batch is committed.
    pub fn start(store: Arc<dyn Store>) -> (Arc<BatchingWriter>, JoinHandle<()>) {
        // Unbounded on purpose: each conversation has at most one batch here at a time, so the
        // queue is bounded by the number of live conversations.
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, rx));
        (Arc::new(BatchingWriter { jobs: tx }), task)
    }
}

impl BatchingWriter {
    /// Waits until every batch submitted so far is committed (or failed).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

impl Writer for BatchingWriter {
    fn submit(&self, batch: AppendBatch, done: Done) {
        metrics::gauge!("chat_writer_queue_depth").increment(1.0);
        if let Err(mpsc::error::SendError(Job::Append { done, .. })) =
            self.jobs.send(Job::Append { batch, done })
        {
            metrics::gauge!("chat_writer_queue_depth").decrement(1.0);
            done(Err(StoreError::Unavailable(
                "the writer has stopped".into(),
            )));
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batches: Vec<AppendBatch> = Vec::new();
    let mut dones: Vec<Done> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    let mut last_start: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        if let Some(next_start) = last_start.map(|at| at + MIN_COMMIT_INTERVAL)
            && Instant::now() < next_start
        {
            tokio::time::sleep_until(next_start).await;
        }
        let mut messages = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append { batch, done } => {
                    messages += batch.messages.len();
                    batches.push(batch);
                    dones.push(done);
                }
                Job::Flush(tx) => flushes.push(tx),
            }
            // A flush closes the batch: it must be answered after what came before it only.
            if messages < MAX_MESSAGES_PER_COMMIT && flushes.is_empty() {
                next = rx.try_recv().ok();
            }
        }
        if batches.is_empty() {
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
            continue;
        }
        metrics::gauge!("chat_writer_queue_depth").decrement(batches.len() as f64);
        let started = Instant::now();
        last_start = (batches.len() >= BUSY_BATCHES).then_some(started);
        let results = store.append(&batches).await;
        metrics::histogram!("chat_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("chat_commit_messages").record(messages as f64);
        let mut persisted = 0u64;
        for ((batch, done), result) in batches.drain(..).zip(dones.drain(..)).zip(results) {
            if result.is_ok() {
                persisted += batch.messages.len() as u64;
            }
            done(result);
        }
        metrics::counter!("chat_messages_persisted_total").increment(persisted);
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}
