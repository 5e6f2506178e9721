//! A conversation's life after its start: the clock (typing expiry, stale work, idleness) and the
//! reload from the database after a write failed.
//!
//! The clock looks only when something falls due. A tick every second for every live
//! conversation was a timer task, a wake-up and a turn of the actor per conversation per second
//! whatever the traffic: 500 a second on a node with 1,000 users chatting in pairs, 40,000 a
//! second with 40,000 conversations open. Now a conversation that is merely in use has one
//! timer pending, for the moment it would become idle.

use std::time::Duration;

use ractor::{ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::live::{
    ConversationActor, ConversationMessage, InFlight, Live, Timing, Work, reject_work,
};
use crate::ids::UserId;
use crate::ports::{ConversationRecord, StoreError};
use crate::protocol::Rejection;

impl ConversationActor {
    pub(super) fn reload(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        live.inflight = InFlight::Reloading;
        // What comes back is as fresh as this epoch.
        live.epoch = self.deps.resting.epoch();
        let deps = self.deps.clone();
        let me = myself.clone();
        let conv = live.record.id;
        self.deps.tasks.spawn(async move {
            let outcome = deps.store.load_conversation(conv).await;
            if outcome.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = me.cast(ConversationMessage::Reloaded(outcome));
        });
    }

    pub(super) fn on_reloaded(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        outcome: Result<Option<ConversationRecord>, StoreError>,
    ) -> Result<(), ActorProcessingErr> {
        match outcome {
            Ok(Some(record)) => {
                live.record = record;
                live.inflight = InFlight::Idle;
                Ok(())
            }
            Ok(None) => Err("the conversation disappeared from the database".into()),
            Err(_) => {
                self.expire_queue(live);
                self.reload(myself, live);
                Ok(())
            }
        }
    }

    /// Expires typing and stale queued work; true when the conversation should stop (idle).
    pub(super) fn on_tick(&self, live: &mut Live) -> bool {
        let now = Instant::now();
        let expired: Vec<UserId> = live
            .typing
            .iter()
            .filter(|t| t.until <= now)
            .map(|t| t.user)
            .collect();
        live.typing.retain(|t| t.until > now);
        for user in expired {
            self.push_typing(live, user, false);
        }
        self.expire_queue(live);
        matches!(live.inflight, InFlight::Idle)
            && live.queue.is_empty()
            && live.pushes.settled()
            && live.typing.is_empty()
            && Instant::now() >= live.rest_from
    }

    pub(super) fn expire_queue(&self, live: &mut Live) {
        let deadline = self.deps.timing.request_deadline;
        let (stale, fresh): (Vec<Work>, Vec<Work>) = live
            .queue
            .drain(..)
            .partition(|w| work_queued_at(w).elapsed() >= deadline);
        live.queue.extend(fresh);
        for w in stale {
            reject_work(w, Rejection::unavailable());
        }
    }
}

/// When the clock must next be looked at: the first typist's expiry, the oldest queued work's
/// deadline, or the moment the conversation becomes idle.
fn next_due(live: &Live, timing: &Timing) -> Instant {
    let typing = live.typing.iter().map(|t| t.until);
    let queued = live
        .queue
        .iter()
        .map(|w| work_queued_at(w) + timing.request_deadline);
    typing.chain(queued).fold(live.rest_from, Instant::min)
}

impl ConversationActor {
    /// Makes sure a Tick comes when the clock next falls due (not sooner than `least_look` from
    /// now): keeps the pending timer when it is due soon enough, else replaces it.
    pub(super) fn arm_clock(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        let timing = &self.deps.timing;
        let now = Instant::now();
        let due = next_due(live, timing).max(now + timing.least_look);
        if live.clock.as_ref().is_some_and(|(at, _)| *at <= due) {
            return;
        }
        if let Some((_, timer)) = live.clock.take() {
            timer.abort();
        }
        let timer = myself.send_after(due - now, || ConversationMessage::Tick);
        live.clock = Some((due, timer));
    }
}

pub(super) fn work_queued_at(w: &Work) -> Instant {
    match w {
        Work::Send(p) => p.queued_at,
        Work::Member(p) => p.queued_at,
    }
}
