//! One actor per active conversation, alive on its owner node: the only writer of its `seq`.
//!
//! It checks membership and `mid` idempotency, numbers messages, hands them to the node's
//! batching writer, and only after the commit replies `sent` and fans out. One batch (or one
//! membership change) is at the store at a time, so a failed batch can be renumbered without
//! leaving a gap: nothing uncommitted was ever acknowledged. Slow work (history, reads, deletes)
//! runs in spawned tasks; the handler never awaits I/O. It stops itself when idle and is rebuilt
//! from the database on the next use.

pub mod state;
pub mod view;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::now_ms;
use crate::delivery::Delivery;
use crate::directory::Directory;
use crate::ids::{ConversationId, Mid, Seq, SessionId, UserId};
use crate::ports::{
    AppendBatch, ConversationRecord, HistoryRange, MemberRecord, MembershipChange, NewMessage,
    Profiles, Store, StoreError, Writer,
};
use crate::protocol::{
    ConversationObject, MessageObject, Rejection, Role, ServerFrame, SharedFrame,
};
use crate::rules::{Limits, membership};
use state::{Committed, RecentMids, Retry};

/// How often a live conversation looks at its clock (typing expiry, stale queue, idleness).
const TICK: Duration = Duration::from_secs(1);
/// A conversation with nothing to do for this long stops.
const IDLE_AFTER: Duration = Duration::from_secs(120);
/// A request waiting longer than this is answered `unavailable` (PROTOCOL §4: at most 5 s).
const REQUEST_DEADLINE: Duration = Duration::from_millis(4500);
/// Typing expires unless repeated.
const TYPING_TTL: Duration = Duration::from_secs(5);
/// A repeated typing `on` is passed on at most this often.
const TYPING_REFRESH: Duration = Duration::from_secs(2);
/// The most messages of one conversation in one append.
const MAX_BATCH: usize = 512;

/// The acknowledgement of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The conversation.
    pub conv: ConversationId,
    /// The message id.
    pub mid: Mid,
    /// Its seq.
    pub seq: Seq,
    /// Its time.
    pub at: i64,
    /// False when the `mid` was stored already and this is the first result again.
    pub created: bool,
}

/// A send as the actor gets it, already checked for size, kind and rate.
pub struct SendCommand {
    /// The sender.
    pub sender: UserId,
    /// The sender's connection, which gets `sent` instead of the push.
    pub session: Option<SessionId>,
    /// The idempotency key.
    pub mid: Mid,
    /// Whether the client chose `mid`.
    pub client_mid: bool,
    /// The kind.
    pub kind: String,
    /// The body.
    pub body: String,
    /// Where the answer goes.
    pub reply: RpcReplyPort<Result<Sent, Rejection>>,
}

/// A reply port for requests answered with `ok`.
pub type OkReply = RpcReplyPort<Result<(), Rejection>>;

/// A per-member setting written outside the batching writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberFlag {
    /// The read pointer, moved forward to this seq.
    Read(Seq),
    /// The mute flag.
    Muted(bool),
}

/// What a conversation actor is asked.
pub enum ConversationMessage {
    /// Numbers, persists and fans out a message; replies after commit.
    Send(Box<SendCommand>),
    /// Moves `user`'s read pointer forward; pushes a receipt after commit.
    Read(UserId, Seq, OkReply),
    /// Tells the other members that `user` is (not) typing; answered only when it carried an id.
    Typing(UserId, bool, Option<OkReply>),
    /// Soft-deletes a message of `user`'s.
    Delete(UserId, Box<MessageObject>, OkReply),
    /// Sets `user`'s mute flag.
    Mute(UserId, bool, OkReply),
    /// `actor` adds `user`.
    AddMember(UserId, UserId, OkReply),
    /// `actor` removes `user` (or leaves, when the same).
    RemoveMember(UserId, UserId, OkReply),
    /// Agent `actor` hands the business conversation to `agent` (an agent of the business).
    Transfer(UserId, UserId, OkReply),
    /// A page of history for `user`.
    History(
        UserId,
        HistoryRange,
        usize,
        RpcReplyPort<Result<(Vec<MessageObject>, bool), Rejection>>,
    ),
    /// The conversation as `user` sees it.
    Get(UserId, RpcReplyPort<Result<ConversationObject, Rejection>>),
    /// The writer's answer for the batch at the store (never awaited inside `handle`).
    Committed(Result<(), StoreError>),
    /// The store's answer for the membership change at the store.
    MembersChanged(Result<(), StoreError>),
    /// A fresh copy of the record after a failed write.
    Reloaded(Result<Option<ConversationRecord>, StoreError>),
    /// The store's answer for a read pointer or mute flag written for `user`: the state moves
    /// (and the caller hears `ok`) only now, after the commit.
    MemberFlagSaved(UserId, MemberFlag, Result<(), StoreError>, OkReply),
    /// Sent to ourselves every [`TICK`].
    Tick,
}

/// What every conversation actor of a node shares, read-only. Only conversation actors (and the
/// node's `create`, which makes conversations) reach the store and the writer.
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
    /// The node's map of conversation actors, left before stopping.
    pub directory: Arc<dyn Directory<ConversationId>>,
}

impl ConversationDeps {
    /// Pushes `record`, as each member sees it (their own unread count), to every member; `except`
    /// is the connection whose request caused it (it gets the reply instead).
    pub async fn push_conversation(&self, record: &ConversationRecord, except: Option<SessionId>) {
        let profiles = view::profiles_for(self.profiles.as_ref(), [record]).await;
        for m in &record.members {
            let (last, unread) = match self
                .store
                .last_message_and_unread(record.id, m.user, m.last_read)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(conv = %record.id, error = %e, "conversation push skipped");
                    return;
                }
            };
            let object = view::object(record, last, unread, &profiles);
            let frame = Arc::new(SharedFrame::new(ServerFrame::Conversation {
                id: None,
                conversation: Box::new(object),
            }));
            self.delivery.deliver(m.user, &frame, except);
        }
    }
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

/// A pending send, waiting for its batch's commit.
struct PendingSend {
    cmd: SendCommand,
    /// Further replies for retries of the same `mid` that arrived while it was pending.
    waiters: Vec<RpcReplyPort<Result<Sent, Rejection>>>,
    queued_at: Instant,
    seq: Seq,
    at: i64,
}

/// A pending membership change.
struct PendingMember {
    actor: UserId,
    op: MemberOp,
    reply: OkReply,
    queued_at: Instant,
}

#[derive(Clone, Copy)]
enum MemberOp {
    Add(UserId),
    Remove(UserId),
    Transfer(UserId),
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

/// A live conversation.
pub struct Live {
    record: ConversationRecord,
    queue: VecDeque<Work>,
    inflight: InFlight,
    recent: RecentMids,
    typing: Vec<Typist>,
    last_used: Instant,
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
        myself.send_after(TICK, || ConversationMessage::Tick);
        if let Some(business) = record.business {
            // Its presence is its agents': learn who they are.
            let deps = self.deps.clone();
            tokio::spawn(async move {
                if let Ok(agents) = deps.profiles.business_agents(business).await {
                    deps.delivery
                        .presence
                        .set_business_agents(business, &agents);
                }
            });
        }
        Ok(ConversationState::Live(Box::new(Live {
            record,
            queue: VecDeque::new(),
            inflight: InFlight::Idle,
            recent: RecentMids::default(),
            typing: Vec::new(),
            last_used: Instant::now(),
        })))
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let conv = match state {
            ConversationState::Missing(c) => *c,
            ConversationState::Live(l) => {
                // Whatever is still queued was never acknowledged; tell the callers.
                for work in l.queue.drain(..) {
                    reject_work(work, Rejection::unavailable());
                }
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
            ConversationMessage::Send(cmd) => self.on_send(live, *cmd),
            ConversationMessage::Read(user, seq, reply) => {
                self.on_read(&myself, live, user, seq, reply)
            }
            ConversationMessage::Typing(user, on, reply) => self.on_typing(live, user, on, reply),
            ConversationMessage::Delete(user, msg, reply) => {
                self.on_delete(live, user, *msg, reply)
            }
            ConversationMessage::Mute(user, on, reply) => {
                self.on_mute(&myself, live, user, on, reply)
            }
            ConversationMessage::AddMember(actor, user, reply) => {
                self.enqueue_member(live, actor, MemberOp::Add(user), reply)
            }
            ConversationMessage::RemoveMember(actor, user, reply) => {
                self.enqueue_member(live, actor, MemberOp::Remove(user), reply)
            }
            ConversationMessage::Transfer(actor, agent, reply) => {
                self.enqueue_member(live, actor, MemberOp::Transfer(agent), reply)
            }
            ConversationMessage::History(user, range, limit, reply) => {
                self.on_history(live, user, range, limit, reply)
            }
            ConversationMessage::Get(user, reply) => self.on_get(live, user, reply),
            ConversationMessage::Committed(outcome) => self.on_committed(&myself, live, outcome),
            ConversationMessage::MembersChanged(outcome) => {
                self.on_members_changed(&myself, live, outcome)
            }
            ConversationMessage::Reloaded(outcome) => self.on_reloaded(&myself, live, outcome)?,
            ConversationMessage::MemberFlagSaved(user, flag, outcome, reply) => {
                self.on_member_flag_saved(live, user, flag, outcome, reply)
            }
            ConversationMessage::Tick => {
                if self.on_tick(live) {
                    self.deps.directory.leave(&live.record.id, myself.get_id());
                    myself.stop(None);
                    return Ok(());
                }
                myself.send_after(TICK, || ConversationMessage::Tick);
            }
        }
        self.pump(&myself, live);
        Ok(())
    }
}

impl ConversationActor {
    fn on_send(&self, live: &mut Live, cmd: SendCommand) {
        if let Err(r) = state::member(&live.record, cmd.sender) {
            let _ = cmd.reply.send(Err(r));
            return;
        }
        if cmd.client_mid {
            match live.recent.check(cmd.mid, cmd.sender) {
                Some(Retry::Same(c)) => {
                    let _ = cmd.reply.send(Ok(sent(live.record.id, cmd.mid, c, false)));
                    return;
                }
                Some(Retry::Clash) => {
                    let _ = cmd.reply.send(Err(mid_clash()));
                    return;
                }
                None => {}
            }
            if let Some(pending) = find_pending(live, cmd.mid) {
                if pending.cmd.sender == cmd.sender {
                    pending.waiters.push(cmd.reply);
                } else {
                    let _ = cmd.reply.send(Err(mid_clash()));
                }
                return;
            }
        }
        live.queue.push_back(Work::Send(PendingSend {
            cmd,
            waiters: Vec::new(),
            queued_at: Instant::now(),
            seq: 0,
            at: 0,
        }));
    }

    fn on_read(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        user: UserId,
        seq: Seq,
        reply: OkReply,
    ) {
        let last_seq = live.record.last_seq;
        let m = match state::member(&live.record, user) {
            Ok(m) => m,
            Err(r) => {
                let _ = reply.send(Err(r));
                return;
            }
        };
        let target = seq.min(last_seq);
        if target <= m.last_read {
            let _ = reply.send(Ok(()));
            return;
        }
        self.save_member_flag(
            myself,
            live.record.id,
            user,
            MemberFlag::Read(target),
            reply,
        );
    }

    fn on_mute(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        user: UserId,
        on: bool,
        reply: OkReply,
    ) {
        if let Err(r) = state::member(&live.record, user) {
            let _ = reply.send(Err(r));
            return;
        }
        self.save_member_flag(myself, live.record.id, user, MemberFlag::Muted(on), reply);
    }

    /// Writes a member's flag off the handler; the outcome comes back as `MemberFlagSaved`.
    fn save_member_flag(
        &self,
        myself: &ActorRef<ConversationMessage>,
        conv: ConversationId,
        user: UserId,
        flag: MemberFlag,
        reply: OkReply,
    ) {
        let deps = self.deps.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let outcome = match flag {
                MemberFlag::Read(seq) => deps.store.set_read(conv, user, seq).await,
                MemberFlag::Muted(on) => deps.store.set_muted(conv, user, on).await,
            };
            let _ = me.cast(ConversationMessage::MemberFlagSaved(
                user, flag, outcome, reply,
            ));
        });
    }

    /// Applies a committed read pointer or mute flag, answers, and pushes the receipt.
    fn on_member_flag_saved(
        &self,
        live: &mut Live,
        user: UserId,
        flag: MemberFlag,
        outcome: Result<(), StoreError>,
        reply: OkReply,
    ) {
        if let Err(e) = outcome {
            let _ = reply.send(Err(store_rejection(&e)));
            return;
        }
        let conv = live.record.id;
        // The member may have left while the write was at the store: then nothing moves here.
        let receipt = match live.record.members.iter_mut().find(|m| m.user == user) {
            Some(m) => match flag {
                MemberFlag::Read(seq) if seq > m.last_read => {
                    m.last_read = seq;
                    Some(seq)
                }
                MemberFlag::Read(_) => None,
                MemberFlag::Muted(on) => {
                    m.muted = on;
                    None
                }
            },
            None => None,
        };
        let _ = reply.send(Ok(()));
        if let Some(seq) = receipt {
            let frame = shared(ServerFrame::Receipt { conv, user, seq });
            for other in others(&live.record, user) {
                self.deps.delivery.deliver(other, &frame, None);
            }
        }
    }

    fn on_typing(&self, live: &mut Live, user: UserId, on: bool, reply: Option<OkReply>) {
        if let Err(r) = state::member(&live.record, user) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(r));
            }
            return;
        }
        let now = Instant::now();
        let found = live.typing.iter().position(|t| t.user == user);
        // Only a change, or a repeated `on` after a while, reaches the others.
        let tell = match (found, on) {
            (Some(i), true) => {
                let t = &mut live.typing[i];
                t.until = now + TYPING_TTL;
                let refresh = now.duration_since(t.told) >= TYPING_REFRESH;
                if refresh {
                    t.told = now;
                }
                refresh
            }
            (Some(i), false) => {
                live.typing.swap_remove(i);
                true
            }
            (None, true) => {
                live.typing.push(Typist {
                    user,
                    until: now + TYPING_TTL,
                    told: now,
                });
                true
            }
            (None, false) => false,
        };
        if tell {
            self.push_typing(&live.record, user, on);
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(()));
        }
    }

    fn push_typing(&self, record: &ConversationRecord, user: UserId, on: bool) {
        let frame = shared(ServerFrame::Typing {
            conv: record.id,
            user,
            on,
        });
        for other in others(record, user) {
            self.deps.delivery.deliver(other, &frame, None);
        }
    }

    fn on_delete(&self, live: &mut Live, user: UserId, msg: MessageObject, reply: OkReply) {
        if let Err(r) = state::member(&live.record, user) {
            let _ = reply.send(Err(r));
            return;
        }
        if msg.from != user {
            let _ = reply.send(Err(Rejection::forbidden(
                "only the sender deletes a message",
            )));
            return;
        }
        if msg.deleted_at.is_some() {
            let _ = reply.send(Ok(()));
            return;
        }
        let deps = self.deps.clone();
        let members: Vec<UserId> = live.record.members.iter().map(|m| m.user).collect();
        tokio::spawn(async move {
            match deps.store.mark_deleted(msg.mid, now_ms()).await {
                Ok(()) => {
                    let _ = reply.send(Ok(()));
                    let frame = shared(ServerFrame::Deleted {
                        conv: msg.conv,
                        mid: msg.mid,
                        seq: msg.seq,
                    });
                    for m in members {
                        deps.delivery.deliver(m, &frame, None);
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(store_rejection(&e)));
                }
            }
        });
    }

    fn enqueue_member(&self, live: &mut Live, actor: UserId, op: MemberOp, reply: OkReply) {
        if let Err(r) = state::member(&live.record, actor) {
            let _ = reply.send(Err(r));
            return;
        }
        live.queue.push_back(Work::Member(PendingMember {
            actor,
            op,
            reply,
            queued_at: Instant::now(),
        }));
    }

    fn on_history(
        &self,
        live: &mut Live,
        user: UserId,
        range: HistoryRange,
        limit: usize,
        reply: RpcReplyPort<Result<(Vec<MessageObject>, bool), Rejection>>,
    ) {
        if let Err(r) = state::member(&live.record, user) {
            let _ = reply.send(Err(r));
            return;
        }
        let deps = self.deps.clone();
        let conv = live.record.id;
        tokio::spawn(async move {
            let page = deps.store.history(conv, range, limit).await;
            let _ = reply.send(page.map_err(|e| store_rejection(&e)));
        });
    }

    fn on_get(
        &self,
        live: &mut Live,
        user: UserId,
        reply: RpcReplyPort<Result<ConversationObject, Rejection>>,
    ) {
        let last_read = match state::member(&live.record, user) {
            Ok(m) => m.last_read,
            Err(r) => {
                let _ = reply.send(Err(r));
                return;
            }
        };
        let deps = self.deps.clone();
        let record = live.record.clone();
        tokio::spawn(async move {
            let outcome = deps
                .store
                .last_message_and_unread(record.id, user, last_read)
                .await;
            let answer = match outcome {
                Ok((last, unread)) => {
                    let profiles = view::profiles_for(deps.profiles.as_ref(), [&record]).await;
                    Ok(view::object(&record, last, unread, &profiles))
                }
                Err(e) => Err(store_rejection(&e)),
            };
            let _ = reply.send(answer);
        });
    }

    /// Submits the next piece of work when nothing is at the store.
    fn pump(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        while matches!(live.inflight, InFlight::Idle) {
            match live.queue.front() {
                None => return,
                Some(Work::Member(_)) => {
                    let Some(Work::Member(pending)) = live.queue.pop_front() else {
                        return;
                    };
                    self.submit_member(myself, live, pending);
                }
                Some(Work::Send(_)) => self.submit_sends(myself, live),
            }
        }
    }

    fn submit_sends(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        let mut batch = Vec::new();
        let mut seq = live.record.last_seq;
        let mut at = live.record.last_activity;
        let now = now_ms();
        while batch.len() < MAX_BATCH {
            match live.queue.front() {
                Some(Work::Send(_)) => {}
                _ => break,
            }
            let Some(Work::Send(mut p)) = live.queue.pop_front() else {
                break;
            };
            if p.queued_at.elapsed() > REQUEST_DEADLINE {
                answer_send(p, Err(Rejection::unavailable()));
                continue;
            }
            seq += 1;
            at = state::next_at(now, at);
            p.seq = seq;
            p.at = at;
            batch.push(p);
        }
        if batch.is_empty() {
            return;
        }
        let append = AppendBatch {
            conv: live.record.id,
            messages: batch
                .iter()
                .map(|p| NewMessage {
                    seq: p.seq,
                    mid: p.cmd.mid,
                    client_mid: p.cmd.client_mid,
                    sender: p.cmd.sender,
                    kind: p.cmd.kind.clone(),
                    body: p.cmd.body.clone(),
                    at: p.at,
                })
                .collect(),
        };
        live.inflight = InFlight::Messages(batch);
        let me = myself.clone();
        self.deps.writer.submit(
            append,
            Box::new(move |outcome| {
                let _ = me.cast(ConversationMessage::Committed(outcome));
            }),
        );
    }

    fn on_committed(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        outcome: Result<(), StoreError>,
    ) {
        let InFlight::Messages(batch) = std::mem::replace(&mut live.inflight, InFlight::Idle)
        else {
            tracing::error!(conv = %live.record.id, "a commit arrived with no batch in flight");
            return;
        };
        match outcome {
            Ok(()) => {
                let conv = live.record.id;
                for mut p in batch {
                    live.record.last_seq = p.seq;
                    live.record.last_activity = p.at;
                    let committed = Committed {
                        sender: p.cmd.sender,
                        seq: p.seq,
                        at: p.at,
                    };
                    live.recent.insert(p.cmd.mid, committed);
                    let message = MessageObject {
                        conv,
                        seq: p.seq,
                        mid: p.cmd.mid,
                        from: p.cmd.sender,
                        // Committed: the command's text is not needed again, so it moves.
                        kind: std::mem::take(&mut p.cmd.kind),
                        body: Some(std::mem::take(&mut p.cmd.body)),
                        at: p.at,
                        deleted_at: None,
                    };
                    let (sender, session) = (p.cmd.sender, p.cmd.session);
                    let ack = sent(conv, p.cmd.mid, committed, true);
                    answer_send(p, Ok(ack));
                    self.fan_out(&live.record, message, Some((sender, session)));
                }
            }
            Err(StoreError::DuplicateMids(hits)) => {
                // Those whose mid is stored get its first result (or a conflict); the others go
                // back to the front of the queue to be renumbered: none of them was acknowledged.
                let conv = live.record.id;
                for p in batch.into_iter().rev() {
                    match hits.iter().find(|h| h.mid == p.cmd.mid) {
                        Some(h) if h.conv == conv && h.sender == p.cmd.sender => {
                            let c = Committed {
                                sender: h.sender,
                                seq: h.seq,
                                at: h.at,
                            };
                            live.recent.insert(h.mid, c);
                            let ack = sent(conv, h.mid, c, false);
                            answer_send(p, Ok(ack));
                        }
                        Some(_) => answer_send(p, Err(mid_clash())),
                        None => live.queue.push_front(Work::Send(p)),
                    }
                }
            }
            Err(e) => {
                // The commit may or may not have happened: nothing was acknowledged, so the
                // callers get `unavailable` (a retry with the same mid is safe) and we reload.
                tracing::warn!(conv = %live.record.id, error = %e, "append failed");
                let rejection = store_rejection(&e);
                for p in batch {
                    answer_send(p, Err(rejection.clone()));
                }
                self.reload(myself, live);
            }
        }
    }

    fn submit_member(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        pending: PendingMember,
    ) {
        if pending.queued_at.elapsed() > REQUEST_DEADLINE {
            let _ = pending.reply.send(Err(Rejection::unavailable()));
            return;
        }
        let record = &live.record;
        let checked = match pending.op {
            MemberOp::Add(user) => membership::check_add(
                record.kind,
                &record.members,
                pending.actor,
                user,
                self.deps.limits.max_group_size,
            ),
            MemberOp::Remove(user) => {
                membership::check_remove(record.kind, &record.members, pending.actor, user)
            }
            MemberOp::Transfer(agent) => {
                membership::check_transfer(record.kind, &record.members, pending.actor, agent)
            }
        };
        if let Err(r) = checked {
            let _ = pending.reply.send(Err(r));
            return;
        }
        let seq = record.last_seq + 1;
        let at = state::next_at(now_ms(), record.last_activity);
        let mut change = MembershipChange::default();
        let (event, subject) = match pending.op {
            MemberOp::Add(user) => {
                change.add.push(MemberRecord {
                    user,
                    role: Role::Member,
                    last_read: record.last_seq,
                    muted: false,
                    joined: record.members.iter().map(|m| m.joined).max().unwrap_or(0) + 1,
                });
                ("member_added", user)
            }
            MemberOp::Remove(user) => {
                change.remove.push(user);
                if let Some(next) = membership::successor(&record.members, user) {
                    change.roles.push((next, Role::Admin));
                }
                let event = if user == pending.actor {
                    "member_left"
                } else {
                    "member_removed"
                };
                (event, user)
            }
            MemberOp::Transfer(agent) => {
                change.remove.push(pending.actor);
                change.add.push(MemberRecord {
                    user: agent,
                    role: Role::Agent,
                    last_read: record.last_seq,
                    muted: false,
                    joined: record.members.iter().map(|m| m.joined).max().unwrap_or(0) + 1,
                });
                ("transferred", agent)
            }
        };
        change.system = Some(NewMessage {
            seq,
            mid: Mid(uuid::Uuid::now_v7()),
            client_mid: false,
            sender: pending.actor,
            kind: "system".to_owned(),
            body: serde_json::json!({"event": event, "user": subject}).to_string(),
            at,
        });
        let deps = self.deps.clone();
        let me = myself.clone();
        let conv = record.id;
        let submitted = change.clone();
        live.inflight = InFlight::Member(Box::new((pending, change)));
        tokio::spawn(async move {
            let outcome = deps.store.change_members(conv, &submitted).await;
            let _ = me.cast(ConversationMessage::MembersChanged(outcome));
        });
    }

    fn on_members_changed(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        outcome: Result<(), StoreError>,
    ) {
        let InFlight::Member(pending_change) =
            std::mem::replace(&mut live.inflight, InFlight::Idle)
        else {
            tracing::error!(conv = %live.record.id, "a membership result arrived with none in flight");
            return;
        };
        let (pending, change) = *pending_change;
        if let Err(e) = outcome {
            tracing::warn!(conv = %live.record.id, error = %e, "membership change failed");
            let _ = pending.reply.send(Err(store_rejection(&e)));
            self.reload(myself, live);
            return;
        }
        let record = &mut live.record;
        record.members.retain(|m| !change.remove.contains(&m.user));
        record.members.extend(change.add.iter().cloned());
        for (user, role) in &change.roles {
            if let Some(m) = record.members.iter_mut().find(|m| m.user == *user) {
                m.role = *role;
            }
        }
        let _ = pending.reply.send(Ok(()));
        for removed in &change.remove {
            let frame = shared(ServerFrame::Removed { conv: record.id });
            self.deps.delivery.deliver(*removed, &frame, None);
        }
        if let Some(system) = &change.system {
            record.last_seq = system.seq;
            record.last_activity = system.at;
            // A member who just joined learns of it from the `conversation` push; the system
            // message announces them to the others.
            let frame = shared(ServerFrame::Message(system.object(record.id)));
            for m in record
                .members
                .iter()
                .filter(|m| !change.add.iter().any(|a| a.user == m.user))
            {
                self.deps.delivery.deliver(m.user, &frame, None);
            }
        }
        self.push_conversation(record.clone());
    }

    /// Pushes the conversation, as each member sees it, to every member.
    fn push_conversation(&self, record: ConversationRecord) {
        let deps = self.deps.clone();
        tokio::spawn(async move {
            deps.push_conversation(&record, None).await;
        });
    }

    fn reload(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        live.inflight = InFlight::Reloading;
        let deps = self.deps.clone();
        let me = myself.clone();
        let conv = live.record.id;
        tokio::spawn(async move {
            let outcome = deps.store.load_conversation(conv).await;
            if outcome.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = me.cast(ConversationMessage::Reloaded(outcome));
        });
    }

    fn on_reloaded(
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

    /// Delivers a committed message to every member's connections but the sender's own.
    fn fan_out(
        &self,
        record: &ConversationRecord,
        message: MessageObject,
        origin: Option<(UserId, Option<SessionId>)>,
    ) {
        let frame = shared(ServerFrame::Message(message));
        for m in &record.members {
            let except = match origin {
                Some((sender, session)) if sender == m.user => session,
                _ => None,
            };
            self.deps.delivery.deliver(m.user, &frame, except);
        }
    }

    /// Expires typing and stale queued work; true when the conversation should stop (idle).
    fn on_tick(&self, live: &mut Live) -> bool {
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

    fn expire_queue(&self, live: &mut Live) {
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

fn work_queued_at(w: &Work) -> Instant {
    match w {
        Work::Send(p) => p.queued_at,
        Work::Member(p) => p.queued_at,
    }
}

fn find_pending(live: &mut Live, mid: Mid) -> Option<&mut PendingSend> {
    if let InFlight::Messages(batch) = &mut live.inflight
        && let Some(p) = batch.iter_mut().find(|p| p.cmd.mid == mid)
    {
        return Some(p);
    }
    live.queue.iter_mut().find_map(|w| match w {
        Work::Send(p) if p.cmd.mid == mid => Some(p),
        _ => None,
    })
}

fn answer_send(p: PendingSend, answer: Result<Sent, Rejection>) {
    for w in p.waiters {
        let again = answer.clone().map(|s| Sent {
            created: false,
            ..s
        });
        let _ = w.send(again);
    }
    let _ = p.cmd.reply.send(answer);
}

fn reject_work(work: Work, rejection: Rejection) {
    match work {
        Work::Send(p) => answer_send(p, Err(rejection)),
        Work::Member(p) => {
            let _ = p.reply.send(Err(rejection));
        }
    }
}

/// Answers a request addressed to a conversation that cannot serve it.
fn reject_message(message: ConversationMessage, rejection: Rejection) {
    match message {
        ConversationMessage::Send(cmd) => {
            let _ = cmd.reply.send(Err(rejection));
        }
        ConversationMessage::Read(_, _, reply)
        | ConversationMessage::Typing(_, _, Some(reply))
        | ConversationMessage::MemberFlagSaved(_, _, _, reply)
        | ConversationMessage::Delete(_, _, reply)
        | ConversationMessage::Mute(_, _, reply)
        | ConversationMessage::AddMember(_, _, reply)
        | ConversationMessage::RemoveMember(_, _, reply)
        | ConversationMessage::Transfer(_, _, reply) => {
            let _ = reply.send(Err(rejection));
        }
        ConversationMessage::History(_, _, _, reply) => {
            let _ = reply.send(Err(rejection));
        }
        ConversationMessage::Get(_, reply) => {
            let _ = reply.send(Err(rejection));
        }
        ConversationMessage::Typing(_, _, None)
        | ConversationMessage::Committed(_)
        | ConversationMessage::MembersChanged(_)
        | ConversationMessage::Reloaded(_)
        | ConversationMessage::Tick => {}
    }
}

fn sent(conv: ConversationId, mid: Mid, c: Committed, created: bool) -> Sent {
    Sent {
        conv,
        mid,
        seq: c.seq,
        at: c.at,
        created,
    }
}

fn mid_clash() -> Rejection {
    Rejection::conflict("this mid belongs to another message")
}

fn shared(frame: ServerFrame) -> Arc<SharedFrame> {
    Arc::new(SharedFrame::new(frame))
}

fn others(record: &ConversationRecord, user: UserId) -> Vec<UserId> {
    record
        .members
        .iter()
        .map(|m| m.user)
        .filter(|u| *u != user)
        .collect()
}

/// The client's view of a storage failure.
pub fn store_rejection(e: &StoreError) -> Rejection {
    match e {
        StoreError::NotFound => Rejection::not_found("not found"),
        StoreError::DuplicateMids(_) => mid_clash(),
        StoreError::SeqTaken | StoreError::Unavailable(_) => Rejection::unavailable(),
    }
}
