//! A conversation's life after its start: the clock (typing expiry, stale work, idleness) and the
//! reload from the database after a write failed.

use std::time::{Duration, Instant};

use ractor::{ActorProcessingErr, ActorRef};

use super::{
    ConversationActor, ConversationMessage, IDLE_AFTER, InFlight, Live, REQUEST_DEADLINE, Work,
    reject_work,
};
use crate::ids::UserId;
use crate::ports::{ConversationRecord, StoreError};
use crate::protocol::Rejection;

impl ConversationActor {
    pub(super) fn reload(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        live.inflight = InFlight::Reloading;
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
            self.push_typing(&live.record, user, false);
        }
        self.expire_queue(live);
        matches!(live.inflight, InFlight::Idle)
            && live.queue.is_empty()
            && live.typing.is_empty()
            && live.last_used.elapsed() > IDLE_AFTER
    }

    pub(super) fn expire_queue(&self, live: &mut Live) {
        let (stale, fresh): (Vec<Work>, Vec<Work>) = live
            .queue
            .drain(..)
            .partition(|w| work_queued_at(w).elapsed() > REQUEST_DEADLINE);
        live.queue.extend(fresh);
        for w in stale {
            reject_work(w, Rejection::unavailable());
        }
    }
}

pub(super) fn work_queued_at(w: &Work) -> Instant {
    match w {
        Work::Send(p) => p.queued_at,
        Work::Member(p) => p.queued_at,
    }
}
