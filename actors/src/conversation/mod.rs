//! One actor per active conversation, alive on its owner node: the only writer of its `seq`.
//!
//! It checks membership and `mid` idempotency, numbers messages, hands them to the node's
//! batching writer, and only after the commit replies `sent` and fans out. One batch (or one
//! membership change) is at the store at a time, so a failed batch can be renumbered without
//! leaving a gap: nothing uncommitted was ever acknowledged. Slow work (history, reads, deletes)
//! runs in spawned tasks; the handler never awaits I/O. It stops itself when idle and is rebuilt
//! from the database on the next use.

mod lifecycle;
mod members;
mod pushes;
pub mod request;
mod send;
mod side;
pub mod state;
#[cfg(test)]
mod tests;
pub mod view;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::delivery::Delivery;
use crate::delivery::wire::Target;
use crate::directory::Directory;
use crate::ids::{ConversationId, Mid, Seq, UserId};
use crate::ports::{ConversationRecord, MembershipChange, Profiles, Store, StoreError, Writer};
use crate::protocol::{Rejection, ServerFrame, SharedFrame};
use crate::rules::Limits;
pub use lifecycle::Timing;
use members::{MemberOp, PendingMember};
use pushes::Pushes;
pub use request::{ConversationReply, ConversationRequest, Reply, ReplyPort, SendRequest};
pub use send::Sent;
use send::{PendingSend, answer_send, mid_clash};
pub use side::MemberFlag;
use state::RecentMids;

/// Typing expires unless repeated.
const TYPING_TTL: Duration = Duration::from_secs(5);
/// A repeated typing `on` is passed on at most this often.
const TYPING_REFRESH: Duration = Duration::from_secs(2);

/// What a conversation actor is asked.
pub enum ConversationMessage {
    /// A client's request, from this node or (in a cluster) another; the answer goes to `Reply`.
    Request(Box<ConversationRequest>, Reply),
    /// The writer's answer for the batch at the store (never awaited inside `handle`).
    Committed(Result<(), StoreError>),
    /// The store's answer for the membership change at the store.
    MembersChanged(Result<(), StoreError>),
    /// A fresh copy of the record after a failed write.
    Reloaded(Result<Option<ConversationRecord>, StoreError>),
    /// The store's answer for a read pointer or mute flag written for `user`: the state moves
    /// (and the caller hears `ok`) only now, after the commit.
    MemberFlagSaved(UserId, MemberFlag, Result<(), StoreError>, Reply),
    /// Sent to ourselves when the clock falls due (`lifecycle::arm_clock`).
    Tick,
    /// The `conversation` push being built is out: the pushes held behind it go.
    ConversationPushed,
    /// A delete of ours is committed (message `mid`, `seq`): its push goes out in order.
    MessageDeleted(Mid, Seq),
}

/// What every conversation actor of a node shares, read-only. Only conversation actors write
/// through the store and the writer, but for the node's `create`, which makes conversations; the
/// node's own reads (the conversation list, agents' loads, which ids are businesses) reach the
/// store through it too.
pub struct ConversationDeps {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The batching writer.
    pub writer: Arc<dyn Writer>,
    /// Pushes to members, here and on other nodes.
    pub delivery: Arc<Delivery>,
    /// Names and avatars.
    pub profiles: Arc<dyn Profiles>,
    /// Size limits.
    pub limits: Limits,
    /// The clock's durations.
    pub timing: Timing,
    /// The node's map of conversation actors, left before stopping.
    pub directory: Arc<dyn Directory<ConversationId>>,
    /// Every task the actors hand slow work to: the node waits for them when it stops, so none
    /// outlives the store's pool.
    pub tasks: TaskTracker,
}

/// The conversation actor; `deps` is read-only.
pub struct ConversationActor {
    /// The node's shared parts.
    pub deps: Arc<ConversationDeps>,
}

/// Whether the conversation could be loaded.
pub enum ConversationState {
    /// It does not exist: every request is `not_found`.
    Missing(ConversationId),
    /// Loaded and serving.
    Live(Box<Live>),
}

/// What waits for the store, in order.
enum Work {
    Send(PendingSend),
    Member(PendingMember),
}

/// What is at the store now.
enum InFlight {
    Idle,
    Messages(Vec<PendingSend>),
    Member(Box<(PendingMember, MembershipChange)>),
    /// Reloading the record after a failed write; nothing is submitted until it is back.
    Reloading,
}

/// The timer task that will send the next [`ConversationMessage::Tick`].
type ClockTimer = JoinHandle<Result<(), MessagingErr<ConversationMessage>>>;

/// A live conversation.
pub struct Live {
    record: ConversationRecord,
    queue: VecDeque<Work>,
    inflight: InFlight,
    recent: RecentMids,
    typing: Vec<Typist>,
    last_used: Instant,
    /// The one pending look at the clock: when, and its timer (aborted when an earlier look is
    /// needed, and when the actor stops).
    clock: Option<(Instant, ClockTimer)>,
    /// Pushes held behind a `conversation` push being built.
    pushes: Pushes,
}

/// A member typing now.
struct Typist {
    user: UserId,
    /// When it expires unless repeated.
    until: Instant,
    /// When the others were last told: a repeated `on` is passed on at most every
    /// [`TYPING_REFRESH`], so receivers that expire typing by themselves see it go on, and a
    /// sender repeating it faster costs them nothing.
    told: Instant,
}

impl Actor for ConversationActor {
    type Msg = ConversationMessage;
    type State = ConversationState;
    type Arguments = ConversationId;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        conv: ConversationId,
    ) -> Result<Self::State, ActorProcessingErr> {
        // A load failure fails the start: we leave the node's map at once (nothing stays behind
        // for an id that could not be loaded), queued callers answer `unavailable`, and the next
        // request tries the database again.
        let record = match self.deps.store.load_conversation(conv).await {
            Ok(record) => record,
            Err(e) => {
                self.deps.directory.leave(&conv, myself.get_id());
                return Err(e.into());
            }
        };
        metrics::counter!("chat_conversation_loads_total").increment(1);
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
            queue: VecDeque::new(),
            inflight: InFlight::Idle,
            recent: RecentMids::default(),
            typing: Vec::new(),
            last_used: Instant::now(),
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
        if !matches!(message, ConversationMessage::Tick) {
            live.last_used = Instant::now();
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

fn reject_work(work: Work, rejection: Rejection) {
    match work {
        Work::Send(p) => answer_send(p, Err(rejection)),
        Work::Member(p) => p.reply.fail(rejection),
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

fn shared(frame: ServerFrame) -> Arc<SharedFrame> {
    Arc::new(SharedFrame::new(frame))
}

/// Every member but `user`, as push targets.
fn others(record: &ConversationRecord, user: UserId) -> impl Iterator<Item = Target> + '_ {
    everyone(record).filter(move |t| t.user != user)
}

/// Every member, as push targets.
fn everyone(record: &ConversationRecord) -> impl Iterator<Item = Target> + '_ {
    record.members.iter().map(|m| Target {
        user: m.user,
        except: None,
    })
}

/// The client's view of a storage failure.
pub fn store_rejection(e: &StoreError) -> Rejection {
    match e {
        StoreError::NotFound => Rejection::not_found("not found"),
        StoreError::DuplicateMids(_) => mid_clash(),
        StoreError::Refused(why) => {
            // A rule the core should have checked first: worth an operator's look.
            tracing::error!(reason = %why, "the database refused a change the rules let through");
            Rejection::bad_request("the request breaks a rule of the conversation")
        }
        StoreError::SeqTaken | StoreError::MidTaken | StoreError::Unavailable(_) => {
            Rejection::unavailable()
        }
    }
}
