//! What a conversation actor is and holds: its messages, what the node's actors share, the live
//! state (the record, work queued for the store and what is at the store, typists, the clock, the
//! pushes held in order), and the push targets. The flow files (send, members, side, lifecycle,
//! pushes) each add the actor's handling of one kind of work over these types.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::MessagingErr;
use ractor::concurrency::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::request::{ConversationRequest, Reply, SendRequest, Sent};
use super::resting::Resting;
use super::state::RecentMids;
use crate::delivery::Delivery;
use crate::delivery::wire::Target;
use crate::directory::Directory;
use crate::ids::{ConversationId, Mid, Seq, SessionId, UserId};
use crate::ports::{ConversationRecord, MembershipChange, Profiles, Store, StoreError, Writer};
use crate::protocol::{Rejection, ServerFrame, SharedFrame};
use crate::rules::Limits;

/// How long the clock's waits are; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The least time between two looks at the clock.
    pub least_look: Duration,
    /// A conversation in use (a send, a read mark, typing, a change of its members) with nothing
    /// more to do for this long stops.
    pub idle_after: Duration,
    /// A conversation only looked at (a page of its history, the object, its creation's push)
    /// stops this long after, unless it was in use (at most `idle_after`). A returning user's
    /// catch-up reads every one of their conversations and a burst of creations starts one actor
    /// each: held for `idle_after`, those idle actors were most of a node's memory.
    pub glance_after: Duration,
    /// A request waiting longer than this is answered `unavailable` (PROTOCOL §4: at most 5 s).
    pub request_deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            least_look: Duration::from_secs(1),
            idle_after: Duration::from_secs(10),
            glance_after: Duration::from_secs(10),
            request_deadline: Duration::from_millis(4500),
        }
    }
}

impl Timing {
    /// How long after `request` the conversation stays up for it.
    pub(super) fn hold(&self, request: &ConversationRequest) -> Duration {
        if request.only_looks() {
            self.glance()
        } else {
            self.idle_after
        }
    }

    /// How long a look keeps the conversation up.
    pub(super) fn glance(&self) -> Duration {
        self.glance_after.min(self.idle_after)
    }
}

/// Typing expires unless repeated.
pub(super) const TYPING_TTL: Duration = Duration::from_secs(5);
/// A repeated typing `on` is passed on at most this often.
pub(super) const TYPING_REFRESH: Duration = Duration::from_secs(2);

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
    /// Records of conversations whose actors stopped idle, for their next start.
    pub resting: Resting,
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
pub(super) enum Work {
    Send(PendingSend),
    Member(PendingMember),
}

/// What is at the store now.
pub(super) enum InFlight {
    Idle,
    Messages(Vec<PendingSend>),
    Member(Box<(PendingMember, MembershipChange)>),
    /// Reloading the record after a failed write; nothing is submitted until it is back.
    Reloading,
}

/// The timer task that will send the next [`ConversationMessage::Tick`].
pub(super) type ClockTimer = JoinHandle<Result<(), MessagingErr<ConversationMessage>>>;

/// A live conversation.
pub struct Live {
    pub(super) record: ConversationRecord,
    /// The epoch of [`Resting`] the record was loaded in: it rests after the actor only if no
    /// new epoch began since.
    pub(super) epoch: u64,
    pub(super) queue: VecDeque<Work>,
    pub(super) inflight: InFlight,
    pub(super) recent: RecentMids,
    pub(super) typing: Vec<Typist>,
    /// When it may stop if nothing else comes: the latest moment any use so far holds it to.
    pub(super) rest_from: Instant,
    /// The one pending look at the clock: when, and its timer (aborted when an earlier look is
    /// needed, and when the actor stops).
    pub(super) clock: Option<(Instant, ClockTimer)>,
    /// Pushes held behind a `conversation` push being built.
    pub(super) pushes: Pushes,
}

impl Live {
    /// Keeps the conversation up for at least `hold` from now (never less than it already was).
    pub(super) fn keep_for(&mut self, hold: Duration) {
        self.rest_from = self.rest_from.max(Instant::now() + hold);
    }
}

/// A member typing now.
pub(super) struct Typist {
    pub(super) user: UserId,
    /// When it expires unless repeated.
    pub(super) until: Instant,
    /// When the others were last told: a repeated `on` is passed on at most every
    /// [`TYPING_REFRESH`], so receivers that expire typing by themselves see it go on, and a
    /// sender repeating it faster costs them nothing.
    pub(super) told: Instant,
}

/// A per-member setting: the read pointer (through the batching writer) or the mute flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFlag {
    /// The read pointer, moved forward to this seq.
    Read(Seq),
    /// The mute flag.
    Muted(bool),
}

/// A pending send, waiting for its batch's commit.
pub(super) struct PendingSend {
    pub(super) req: SendRequest,
    pub(super) reply: Reply,
    /// Further replies for retries of the same `mid` that arrived while it was pending.
    pub(super) waiters: Vec<Reply>,
    pub(super) queued_at: Instant,
    pub(super) seq: Seq,
    pub(super) at: i64,
}

/// A pending membership change.
pub(super) struct PendingMember {
    pub(super) actor: UserId,
    pub(super) op: MemberOp,
    pub(super) reply: Reply,
    pub(super) queued_at: Instant,
}

#[derive(Clone, Copy)]
pub(super) enum MemberOp {
    Add(UserId),
    Remove(UserId),
    Transfer(UserId),
}

/// The pushes that wait for a `conversation` push being built.
#[derive(Default)]
pub(super) struct Pushes {
    /// A `conversation` push is being built: what comes meanwhile is held, in order.
    pub(super) building: bool,
    pub(super) held: VecDeque<Held>,
}

/// A push made while a `conversation` push was being built.
pub(super) enum Held {
    Frame(Vec<Target>, Arc<SharedFrame>),
    Conversation(Box<ConversationRecord>, Option<SessionId>),
}

impl Pushes {
    /// Nothing is being built or waits: the actor may stop without losing a push.
    pub(super) fn settled(&self) -> bool {
        !self.building && self.held.is_empty()
    }
}

/// Answers queued work that will not be done.
pub(super) fn reject_work(work: Work, rejection: Rejection) {
    match work {
        Work::Send(p) => answer_send(p, Err(rejection)),
        Work::Member(p) => p.reply.fail(rejection),
    }
}

pub(super) fn answer_send(p: PendingSend, answer: Result<Sent, Rejection>) {
    for w in p.waiters {
        let again = answer.clone().map(|s| Sent {
            created: false,
            ..s
        });
        w.sent(again);
    }
    p.reply.sent(answer);
}

pub(super) fn shared(frame: ServerFrame) -> Arc<SharedFrame> {
    Arc::new(SharedFrame::new(frame))
}

/// Every member but `user`, as push targets.
pub(super) fn others(
    record: &ConversationRecord,
    user: UserId,
) -> impl Iterator<Item = Target> + '_ {
    everyone(record).filter(move |t| t.user != user)
}

/// Every member, as push targets.
pub(super) fn everyone(record: &ConversationRecord) -> impl Iterator<Item = Target> + '_ {
    record.members.iter().map(|m| Target {
        user: m.user,
        except: None,
    })
}
