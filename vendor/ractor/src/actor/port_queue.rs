// Copyright (c) Sean Lawlor
//
// This source code is licensed under both the MIT license found in the
// LICENSE-MIT file in the root directory of this source tree.

//! The queue behind an actor's supervision and message ports (a change of this vendored copy).
//!
//! tokio's unbounded channel allocates its shared state (~0.5 KiB, cache-padded) and its first
//! block of 32 slots when it is made, so every actor paid ~2 KiB for its two input ports
//! before it was sent anything. This queue costs one small allocation when it is made, and holds
//! room for messages only while some wait: a `VecDeque` behind a mutex, and one waker for the
//! actor's task. It keeps what the actor relies on from tokio's channel: sending fails once the
//! receiver is closed or dropped, what was queued before a close can still be taken, and `recv`
//! answers `None` when the queue is closed (or its sender dropped) and empty. `recv` is cancel
//! safe: nothing is taken unless it is returned.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::PoisonError;
use std::task::Context;
use std::task::Poll;

use futures::task::AtomicWaker;

/// A drained queue keeps at most this many slots of room; a burst's larger room is given back.
const KEEP_ROOM: usize = 8;

struct Shared<T> {
    state: Mutex<State<T>>,
    waker: AtomicWaker,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while the lock is held; a poisoned lock still holds a sound queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.waker.wake();
    }
}

/// The sending half (one per actor, in its properties).
pub(crate) struct PortSender<T>(Arc<Shared<T>>);

/// The receiving half (in the actor's port set).
pub(crate) struct PortReceiver<T>(Arc<Shared<T>>);

/// A send to a closed queue; the item comes back.
#[derive(Debug)]
pub(crate) struct PortSendError<T>(pub T);

/// Nothing to take right now.
#[derive(Debug)]
pub(crate) struct PortEmpty;

/// Makes a queue.
pub(crate) fn port_queue<T>() -> (PortSender<T>, PortReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        waker: AtomicWaker::new(),
    });
    (PortSender(shared.clone()), PortReceiver(shared))
}

impl<T> PortSender<T> {
    /// Queues `item`, or hands it back when the receiver is closed or gone.
    pub(crate) fn send(&self, item: T) -> Result<(), PortSendError<T>> {
        {
            let mut state = self.0.lock();
            if state.closed {
                return Err(PortSendError(item));
            }
            state.items.push_back(item);
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl<T> Drop for PortSender<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

impl<T> PortReceiver<T> {
    /// The next item; `None` once the queue is closed and empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(next) = self.take() {
            return Poll::Ready(next);
        }
        self.0.waker.register(cx.waker());
        // A send between the look above and the registration woke no one: look again.
        match self.take() {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// `Some(Some(item))`, `Some(None)` when closed and empty, `None` when empty and open.
    fn take(&self) -> Option<Option<T>> {
        let mut state = self.0.lock();
        match state.items.pop_front() {
            Some(item) => {
                if state.items.is_empty() && state.items.capacity() > KEEP_ROOM {
                    state.items = VecDeque::new();
                }
                Some(Some(item))
            }
            None if state.closed => Some(None),
            None => None,
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, PortEmpty> {
        self.0.lock().items.pop_front().ok_or(PortEmpty)
    }

    /// Refuses further sends; what is queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.0.close();
    }
}

impl<T> Drop for PortReceiver<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_a_closed_queue_refuses_sends() {
        let (tx, mut rx) = port_queue();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        rx.close();
        assert_eq!(tx.send(3).unwrap_err().0, 3);
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = port_queue();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send("hello").unwrap();
        assert_eq!(waiter.await.unwrap(), Some("hello"));
    }

    #[tokio::test]
    async fn the_sender_dropped_ends_the_queue_after_what_it_sent() {
        let (tx, mut rx) = port_queue();
        tx.send(7).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn a_burst_s_room_is_given_back_once_drained() {
        let (tx, mut rx) = port_queue();
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        while rx.try_recv().is_ok() {}
        tx.send(0).unwrap();
        assert!(rx.take().is_some());
        assert!(rx.0.lock().items.capacity() <= KEEP_ROOM);
    }
}
