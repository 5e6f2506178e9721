//! One actor per active conversation, alive on its owner node: the only writer of its `seq`.
//!
//! It checks membership and `mid` idempotency, numbers messages, hands them to the node's
//! batching writer, and only after the commit replies `sent` and fans out. One batch (or one
//! membership change) is at the store at a time, so a failed batch can be renumbered without
//! leaving a gap: nothing uncommitted was ever acknowledged. Slow work (history, reads, deletes)
//! runs in spawned tasks; the handler never awaits I/O. It stops itself when idle and is rebuilt
//! from the database on the next use.

mod lifecycle;
mod live;
mod members;
mod pushes;
pub mod request;
pub mod resting;
mod send;
mod side;
pub mod state;
#[cfg(test)]
mod tests;
pub mod view;

use std::collections::VecDeque;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use crate::ids::ConversationId;
use crate::ports::ConversationRecord;
use crate::protocol::Rejection;

pub use live::{ConversationActor, ConversationDeps, ConversationMessage, ConversationState};
use live::{InFlight, Live, MemberOp, Pushes, reject_work};
pub use live::{MemberFlag, Timing};
pub use request::{
    ConversationReply, ConversationRequest, Reply, ReplyPort, SendRequest, Sent, store_rejection,
};
use state::RecentMids;

impl Actor for ConversationActor {
    type Msg = ConversationMessage;
    type State = ConversationState;
    type Arguments = ConversationId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        conv: ConversationId,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Read before the load: a new epoch that begins while it runs may make what it reads
        // stale, and then the record must not rest after this actor.
        let epoch = self.deps.resting.epoch();
        let record = match self.deps.resting.take(conv) {
            Some(record) => Some(record),
            None => self.load(&myself, conv).await?,
        };
        let Some(record) = record else {
            // An unknown id holds nothing: the requests queued behind the load are answered
            // `not_found`, then the actor stops (its stop message queues after them).
            let _ = myself.cast(ConversationMessage::Tick);
            return Ok(ConversationState::Missing(conv));
        };
        if let Some(business) = record.business {
            // Its presence is its agents': learn who they are.
            let deps = self.deps.clone();
            self.deps.tasks.spawn(async move {
                if let Ok(agents) = deps.profiles.business_agents(business).await {
                    deps.delivery
                        .presence
                        .set_business_agents(business, &agents);
                }
            });
        }
        let mut live = Box::new(Live {
            record,
            epoch,
            queue: VecDeque::new(),
            inflight: InFlight::Idle,
            recent: RecentMids::default(),
            typing: Vec::new(),
            // The request that started it holds it as long as it needs (see `handle`).
            rest_from: Instant::now() + self.deps.timing.glance(),
            clock: None,
            pushes: Pushes::default(),
        });
        self.arm_clock(&myself, &mut live);
        Ok(ConversationState::Live(live))
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let conv = match state {
            ConversationState::Missing(c) => *c,
            ConversationState::Live(l) => {
                if let Some((_, timer)) = l.clock.take() {
                    timer.abort();
                }
                // Whatever is still queued was never acknowledged; tell the callers.
                for work in l.queue.drain(..) {
                    reject_work(work, Rejection::unavailable());
                }
                self.release_held(&mut l.pushes);
                l.record.id
            }
        };
        self.deps.directory.leave(&conv, myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let live = match state {
            ConversationState::Live(live) => live,
            ConversationState::Missing(conv) => {
                if matches!(message, ConversationMessage::Tick) {
                    self.deps.directory.leave(conv, myself.get_id());
                    myself.stop(None);
                } else {
                    reject_message(message, Rejection::not_found("no such conversation"));
                }
                return Ok(());
            }
        };
        match &message {
            ConversationMessage::Tick => {}
            ConversationMessage::Request(request, _) => {
                live.keep_for(self.deps.timing.hold(request));
            }
            // The actor's own work coming back: held by the request that began it.
            _ => live.keep_for(self.deps.timing.glance()),
        }
        match message {
            ConversationMessage::Request(request, reply) => {
                self.on_request(&myself, live, *request, reply)
            }
            ConversationMessage::Committed(outcome) => self.on_committed(&myself, live, outcome),
            ConversationMessage::MembersChanged(outcome) => {
                self.on_members_changed(&myself, live, outcome)
            }
            ConversationMessage::Reloaded(outcome) => self.on_reloaded(&myself, live, outcome)?,
            ConversationMessage::MemberFlagSaved(user, flag, outcome, reply) => {
                self.on_member_flag_saved(live, user, flag, outcome, reply)
            }
            ConversationMessage::ConversationPushed => {
                self.on_conversation_pushed(&myself, &mut live.pushes)
            }
            ConversationMessage::MessageDeleted(mid, seq) => {
                self.on_message_deleted(live, mid, seq)
            }
            ConversationMessage::Tick => {
                if live
                    .clock
                    .as_ref()
                    .is_some_and(|(at, _)| *at <= Instant::now())
                {
                    live.clock = None;
                }
                if self.on_tick(live) {
                    // Rests before the map is left: the next actor for it starts from this
                    // record, never from an older one.
                    self.deps.resting.put(live.epoch, live.record.clone());
                    self.deps.directory.leave(&live.record.id, myself.get_id());
                    myself.stop(None);
                    return Ok(());
                }
            }
        }
        self.pump(&myself, live);
        self.arm_clock(&myself, live);
        Ok(())
    }
}

impl ConversationActor {
    /// Loads the conversation for a start. A failure fails the start: we leave the node's map at
    /// once (nothing stays behind for an id that could not be loaded), queued callers answer
    /// `unavailable`, and the next request tries the database again.
    async fn load(
        &self,
        myself: &ActorRef<ConversationMessage>,
        conv: ConversationId,
    ) -> Result<Option<ConversationRecord>, ActorProcessingErr> {
        match self.deps.store.load_conversation(conv).await {
            Ok(record) => {
                metrics::counter!("chat_conversation_loads_total").increment(1);
                Ok(record)
            }
            Err(e) => {
                self.deps.directory.leave(&conv, myself.get_id());
                Err(e.into())
            }
        }
    }

    /// Routes a client's request to the flow that serves it.
    fn on_request(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        request: ConversationRequest,
        reply: Reply,
    ) {
        match request {
            ConversationRequest::Send(req) => self.on_send(live, req, reply),
            ConversationRequest::Read { user, seq } => self.on_read(myself, live, user, seq, reply),
            ConversationRequest::Typing { user, on } => self.on_typing(live, user, on, reply),
            ConversationRequest::Delete { user, message } => {
                self.on_delete(myself, live, user, *message, reply)
            }
            ConversationRequest::Mute { user, on } => self.on_mute(myself, live, user, on, reply),
            ConversationRequest::AddMember { actor, user } => {
                self.enqueue_member(live, actor, MemberOp::Add(user), reply)
            }
            ConversationRequest::RemoveMember { actor, user } => {
                self.enqueue_member(live, actor, MemberOp::Remove(user), reply)
            }
            ConversationRequest::Transfer { actor, agent } => {
                self.enqueue_member(live, actor, MemberOp::Transfer(agent), reply)
            }
            ConversationRequest::History { user, range, limit } => {
                self.on_history(live, user, range, limit, reply)
            }
            ConversationRequest::Get { user } => self.on_get(live, user, reply),
            ConversationRequest::Announce { except } => {
                let record = live.record.clone();
                self.push_conversation(myself, &mut live.pushes, record, except);
                reply.ok();
            }
        }
    }
}

/// Answers a request addressed to a conversation that cannot serve it.
fn reject_message(message: ConversationMessage, rejection: Rejection) {
    match message {
        ConversationMessage::Request(_, reply)
        | ConversationMessage::MemberFlagSaved(_, _, _, reply) => reply.fail(rejection),
        ConversationMessage::Committed(_)
        | ConversationMessage::MembersChanged(_)
        | ConversationMessage::Reloaded(_)
        | ConversationMessage::Tick
        | ConversationMessage::ConversationPushed
        | ConversationMessage::MessageDeleted(..) => {}
    }
}
