//! A connection's bounded outbound queue of pushes, as the core sees it.
//!
//! The socket task owns the receiving end and writes to the wire; everyone else pushes with
//! [`Outbound::push`], which never waits. A full queue means the client stopped reading: the
//! connection is kicked (its token cancelled) and the socket task closes it as a slow consumer.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ids::{SessionId, UserId};
use crate::protocol::SharedFrame;

/// The pushing end of one connection's queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The connection.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    tx: mpsc::Sender<Arc<SharedFrame>>,
    /// Cancelled to make the socket task close the connection (slow consumer, or node shutdown
    /// when it is a child of the node's token).
    kick: CancellationToken,
}

impl Outbound {
    /// A queue of `capacity` pushes; the socket task keeps the receiver and watches `kick`.
    pub fn new(
        user: UserId,
        session: SessionId,
        capacity: usize,
        kick: CancellationToken,
    ) -> (Self, mpsc::Receiver<Arc<SharedFrame>>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Outbound {
                session,
                user,
                tx,
                kick,
            },
            rx,
        )
    }

    /// Queues a push without waiting. On a full queue the connection is kicked and the push is
    /// dropped: that client is being closed and will catch up with `history` when it returns.
    pub fn push(&self, frame: &Arc<SharedFrame>) {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Counted once per connection cut off, not once per push it missed.
                if !self.kick.is_cancelled() {
                    metrics::counter!("chat_slow_consumers_total").increment(1);
                    self.kick.cancel();
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
