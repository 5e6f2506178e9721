//! The node's one deadline: no request waits longer than [`REQUEST_TIMEOUT`] for an owner's
//! answer or a store call, whichever node answers it.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::conversation::ConversationReply;
use crate::protocol::Rejection;

/// No request waits longer than this (PROTOCOL §4 allows 5 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(4800);

/// An owner's answer, as it comes back.
pub(super) type Answer = Result<ConversationReply, Rejection>;

/// Waits for an owner's answer; a dropped reply (the actor stopped) or a late one is
/// `unavailable`.
pub(super) async fn answer(rx: oneshot::Receiver<Answer>) -> Answer {
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => Err(Rejection::unavailable()),
    }
}

/// Bounds a store call by [`REQUEST_TIMEOUT`].
pub(super) async fn timed<T>(f: impl Future<Output = T>) -> Result<T, Rejection> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| Rejection::unavailable())
}
