//! The typed operations that transports call: one implementation of every rule, two transports.
//!
//! A transport decodes a request, calls one of these, and encodes the answer; it never builds an
//! actor message. Each operation answers within [`REQUEST_TIMEOUT`] (`unavailable` otherwise).

use std::future::Future;
use std::time::Duration;

use ractor::{ActorRef, MessagingErr, RpcReplyPort};
use tokio::sync::oneshot;

use super::Node;
use super::budget::{Admitted, Cost};
use crate::clock::now_ms;
use crate::conversation::{
    ConversationMessage, ConversationReply, ConversationRequest, Reply, SendRequest, Sent,
    store_rejection, view,
};
use crate::delivery::Outbound;
use crate::ids::{ConversationId, Mid, Seq, SessionId, UserId};
use crate::ports::{
    ConversationRecord, HistoryRange, ListQuery, MemberRecord, NewConversation, ProfilesError,
};
use crate::protocol::{
    ConversationKind, ConversationObject, CreateKind, MessageObject, PresenceItem, Rejection, Role,
};
use crate::rules::{assignment, limits};
use crate::user::UserMessage;

/// No request waits longer than this (PROTOCOL §4 allows 5 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(4800);

/// Who is asking: the token's user and, over WebSocket, the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The authenticated user.
    pub user: UserId,
    /// The connection, when the request came over WebSocket.
    pub session: Option<SessionId>,
}

/// A `create` request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// What to create.
    pub kind: CreateKind,
    /// The other members.
    pub members: Vec<UserId>,
    /// A group's name.
    pub name: Option<String>,
    /// A business conversation's business.
    pub business: Option<UserId>,
}

/// The longest group name.
const MAX_NAME_CHARS: usize = 100;

impl Node {
    /// Sends a message. The actor is asked before this returns, so two sends from one connection
    /// are numbered in the order they were made.
    pub fn send(
        &self,
        caller: Caller,
        conv: ConversationId,
        mid: Option<Mid>,
        body: String,
        kind: Option<String>,
    ) -> impl Future<Output = Result<Sent, Rejection>> + Send + 'static {
        let asked = self.ask_send(caller, conv, mid, body, kind);
        async move {
            let (admitted, rx) = asked?;
            let sent = answer(rx).await.and_then(expect_sent);
            drop(admitted);
            sent
        }
    }

    fn ask_send(
        &self,
        caller: Caller,
        conv: ConversationId,
        mid: Option<Mid>,
        body: String,
        kind: Option<String>,
    ) -> Result<(Admitted, oneshot::Receiver<Answer>), Rejection> {
        let kind = limits::message_kind(kind.as_deref())?;
        limits::message_body(&body, &self.deps.limits)?;
        let admitted = self.budgets.admit(caller.user, Cost::Send)?;
        let (client_mid, mid) = match mid {
            Some(m) => (true, m),
            None => (false, Mid(uuid::Uuid::now_v7())),
        };
        let request = ConversationRequest::Send(SendRequest {
            sender: caller.user,
            session: caller.session,
            mid,
            client_mid,
            kind,
            body,
        });
        let (tx, rx) = oneshot::channel();
        self.tell(conv, request, Reply::to(RpcReplyPort::from(tx)))?;
        Ok((admitted, rx))
    }

    /// Charges one request answered by the transport itself (a token check, say) to the caller's
    /// request rate.
    pub fn charge(&self, caller: Caller) -> Result<(), Rejection> {
        self.budgets.admit_now(caller.user)
    }

    /// Admits one request of the caller against their budgets (rate and in flight).
    fn admit(&self, caller: Caller) -> Result<Admitted, Rejection> {
        self.budgets.admit(caller.user, Cost::Request)
    }

    /// A page of history.
    pub async fn history(
        &self,
        caller: Caller,
        conv: ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        limit: Option<i64>,
    ) -> Result<(Vec<MessageObject>, bool), Rejection> {
        let limit = limits::page_limit(limit)?;
        let _admitted = self.admit(caller)?;
        let range = match (after, before) {
            (Some(a), b) => HistoryRange::After(seq(a), b.map(seq)),
            (None, Some(b)) => HistoryRange::Before(seq(b)),
            (None, None) => HistoryRange::Newest,
        };
        let request = ConversationRequest::History {
            user: caller.user,
            range,
            limit,
        };
        match self.ask(conv, request).await? {
            ConversationReply::History { messages, more } => Ok((messages, more)),
            other => Err(mismatched(other)),
        }
    }

    /// Moves the caller's read pointer.
    pub async fn read(
        &self,
        caller: Caller,
        conv: ConversationId,
        at: u64,
    ) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let request = ConversationRequest::Read {
            user: caller.user,
            seq: seq(at),
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Tells the others the caller is (not) typing, with no answer: a frame over the typing
    /// budget, or for a conversation the caller is not in, is dropped.
    pub fn typing(&self, caller: Caller, conv: ConversationId, on: bool) {
        if self.budgets.typing(caller.user, conv).is_ok() {
            let request = ConversationRequest::Typing {
                user: caller.user,
                on,
            };
            let _ = self.tell(conv, request, Reply::nobody());
        }
    }

    /// `typing` that carries an `id`: answered `ok`, or why it was refused.
    pub async fn typing_answered(
        &self,
        caller: Caller,
        conv: ConversationId,
        on: bool,
    ) -> Result<(), Rejection> {
        self.budgets.typing(caller.user, conv)?;
        let _admitted = self.admit(caller)?;
        let request = ConversationRequest::Typing {
            user: caller.user,
            on,
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Soft-deletes one of the caller's messages.
    pub async fn delete(&self, caller: Caller, mid: Mid) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let found = self
            .deps
            .store
            .find_message(mid)
            .await
            .map_err(|e| store_rejection(&e))?;
        let Some(message) = found else {
            return Err(Rejection::not_found("no such message"));
        };
        let conv = message.conv;
        let request = ConversationRequest::Delete {
            user: caller.user,
            message: Box::new(message),
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Mutes or unmutes a conversation for the caller.
    pub async fn mute(
        &self,
        caller: Caller,
        conv: ConversationId,
        on: bool,
    ) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let request = ConversationRequest::Mute {
            user: caller.user,
            on,
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Adds a member to a group.
    pub async fn add_member(
        &self,
        caller: Caller,
        conv: ConversationId,
        user: UserId,
    ) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let request = ConversationRequest::AddMember {
            actor: caller.user,
            user,
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Removes a member from a group (or leaves it).
    pub async fn remove_member(
        &self,
        caller: Caller,
        conv: ConversationId,
        user: UserId,
    ) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let request = ConversationRequest::RemoveMember {
            actor: caller.user,
            user,
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// Hands a business conversation to another agent of its business.
    pub async fn transfer(
        &self,
        caller: Caller,
        conv: ConversationId,
        agent: UserId,
    ) -> Result<(), Rejection> {
        let _admitted = self.admit(caller)?;
        let object = self.get_unbudgeted(caller, conv).await?;
        let Some(business) = object.business else {
            return Err(Rejection::bad_request(
                "only business conversations are transferred",
            ));
        };
        let agents = self.agents_of(business).await?;
        if !agents.contains(&agent) {
            return Err(Rejection::bad_request("not an agent of this business"));
        }
        let request = ConversationRequest::Transfer {
            actor: caller.user,
            agent,
        };
        self.ask(conv, request).await.and_then(expect_ok)
    }

    /// The agents of `business` (and its presence learns them); none is `not_found`.
    async fn agents_of(&self, business: UserId) -> Result<Vec<UserId>, Rejection> {
        match self.deps.profiles.business_agents(business).await {
            Ok(agents) if !agents.is_empty() => {
                self.deps
                    .delivery
                    .presence
                    .set_business_agents(business, &agents);
                Ok(agents)
            }
            Ok(_) | Err(ProfilesError::UnknownBusiness) => Err(Rejection::not_found(
                "no such business, or it has no agents",
            )),
            Err(ProfilesError::Unavailable(_)) => Err(Rejection::unavailable()),
        }
    }

    /// The user service says `id`'s profile changed: forget what is cached.
    pub async fn profile_changed(&self, id: UserId) {
        self.deps.profiles.invalidate(id).await;
        self.tell_everyone_profile_changed(id);
    }

    /// The conversation as the caller sees it.
    pub async fn get(
        &self,
        caller: Caller,
        conv: ConversationId,
    ) -> Result<ConversationObject, Rejection> {
        let _admitted = self.admit(caller)?;
        self.get_unbudgeted(caller, conv).await
    }

    /// `get` for an operation that was admitted already.
    async fn get_unbudgeted(
        &self,
        caller: Caller,
        conv: ConversationId,
    ) -> Result<ConversationObject, Rejection> {
        let request = ConversationRequest::Get { user: caller.user };
        match self.ask(conv, request).await? {
            ConversationReply::Conversation(object) => Ok(*object),
            other => Err(mismatched(other)),
        }
    }

    /// Creates a conversation, or returns the existing direct or business one; the flag says
    /// whether it was created.
    pub async fn create(
        &self,
        caller: Caller,
        req: CreateRequest,
    ) -> Result<(ConversationObject, bool), Rejection> {
        let _admitted = self.admit(caller)?;
        let new = self.plan_conversation(caller, req).await?;
        let (record, created) = timed(self.deps.store.create_conversation(new))
            .await?
            .map_err(|e| store_rejection(&e))?;
        if !created {
            return Ok((self.get_unbudgeted(caller, record.id).await?, false));
        }
        metrics::counter!("chat_conversations_created_total").increment(1);
        let profiles = view::profiles_for(self.deps.profiles.as_ref(), [&record]).await;
        let object = view::object(&record, None, 0, &profiles);
        // The owner pushes it to the members, ahead of the pushes of its messages; told before
        // the creator hears `conversation`, so before any send of theirs reaches the owner.
        let except = caller.session;
        let announce = ConversationRequest::Announce { except };
        if let Err(r) = self.tell(record.id, announce, Reply::nobody()) {
            tracing::warn!(conv = %record.id.masked(), code = ?r.code, "a new conversation's push could not reach its owner");
        }
        Ok((object, true))
    }

    async fn plan_conversation(
        &self,
        caller: Caller,
        req: CreateRequest,
    ) -> Result<NewConversation, Rejection> {
        let now = now_ms();
        let member = |user, role, joined| MemberRecord {
            user,
            role,
            last_read: 0,
            muted: false,
            joined,
        };
        let (kind, members, unique_key, name, business) = match req.kind {
            CreateKind::Direct => {
                let [other] = req.members[..] else {
                    return Err(Rejection::bad_request(
                        "a direct conversation has exactly one other member",
                    ));
                };
                if other == caller.user {
                    return Err(Rejection::bad_request(
                        "a direct conversation needs another user",
                    ));
                }
                let (lo, hi) = if caller.user < other {
                    (caller.user, other)
                } else {
                    (other, caller.user)
                };
                let members = vec![member(lo, Role::Member, 0), member(hi, Role::Member, 1)];
                (
                    ConversationKind::Direct,
                    members,
                    Some(format!("direct:{lo}:{hi}")),
                    None,
                    None,
                )
            }
            CreateKind::Group => {
                if let Some(name) = &req.name
                    && name.chars().count() > MAX_NAME_CHARS
                {
                    return Err(Rejection::bad_request(
                        "a group name has at most 100 characters",
                    ));
                }
                let mut members = vec![member(caller.user, Role::Admin, 0)];
                for u in req.members {
                    if !members.iter().any(|m| m.user == u) {
                        members.push(member(u, Role::Member, members.len() as i64));
                    }
                }
                if members.len() > self.deps.limits.max_group_size {
                    return Err(Rejection::conflict(format!(
                        "a group holds at most {} members",
                        self.deps.limits.max_group_size
                    )));
                }
                (ConversationKind::Group, members, None, req.name, None)
            }
            CreateKind::Business => {
                let Some(business) = req.business else {
                    return Err(Rejection::bad_request(
                        "a business conversation names its business",
                    ));
                };
                let agents = self.agents_of(business).await?;
                if caller.user == business || agents.contains(&caller.user) {
                    return Err(Rejection::bad_request(
                        "a business, or one of its own agents, cannot open a chat with it as a customer",
                    ));
                }
                let loads = timed(self.deps.store.agent_loads(&agents))
                    .await?
                    .map_err(|e| store_rejection(&e))?;
                let presence = &self.deps.delivery.presence;
                let agent = assignment::choose_agent(
                    &agents,
                    |a| presence.is_online(a),
                    |a| loads.get(&a).copied().unwrap_or(0),
                )
                .ok_or_else(|| Rejection::not_found("the business has no agents"))?;
                let members = vec![
                    member(caller.user, Role::Customer, 0),
                    member(business, Role::Business, 1),
                    member(agent, Role::Agent, 2),
                ];
                let key = format!("business:{business}:{}", caller.user);
                (
                    ConversationKind::Business,
                    members,
                    Some(key),
                    None,
                    Some(business),
                )
            }
        };
        Ok(NewConversation {
            record: ConversationRecord {
                id: ConversationId(uuid::Uuid::now_v7()),
                kind,
                name,
                business,
                created_at: now,
                last_seq: 0,
                last_activity: now,
                members,
            },
            unique_key,
        })
    }

    /// A page of the caller's conversations by activity.
    pub async fn conversations(
        &self,
        caller: Caller,
        limit: Option<i64>,
        before: Option<u64>,
        since: Option<u64>,
    ) -> Result<(Vec<ConversationObject>, bool), Rejection> {
        let _admitted = self.admit(caller)?;
        let query = ListQuery {
            before: before.map(seq),
            since: since.map(seq),
            limit: limits::page_limit(limit)?,
        };
        let (listed, more) = timed(self.deps.store.list_conversations(caller.user, query))
            .await?
            .map_err(|e| store_rejection(&e))?;
        let profiles = view::profiles_for(
            self.deps.profiles.as_ref(),
            listed.iter().map(|l| &l.record),
        )
        .await;
        let items = listed
            .into_iter()
            .map(|l| view::object(&l.record, l.last_message, l.unread, &profiles))
            .collect();
        Ok((items, more))
    }

    /// The presence of each of `users` (at most 100).
    pub fn presence(
        &self,
        caller: Caller,
        users: &[UserId],
    ) -> Result<Vec<PresenceItem>, Rejection> {
        self.budgets.admit_now(caller.user)?;
        if users.len() > limits::MAX_PRESENCE_USERS {
            return Err(Rejection::bad_request(
                "at most 100 users per presence request",
            ));
        }
        self.learn_businesses(users);
        Ok(users
            .iter()
            .map(|u| self.deps.delivery.presence.status(*u))
            .collect())
    }

    /// Learns in the background which of `ids` are businesses whose agents this node does not
    /// know, and their agents. A business's presence is its agents': a node learns them when
    /// a chat with the business is created or transferred there, so without this a node that
    /// did neither (another node did, or this one restarted) would show the business offline
    /// to its watchers. The watchers hear the change once the agents are known.
    fn learn_businesses(&self, ids: &[UserId]) {
        let presence = &self.deps.delivery.presence;
        let unknown: Vec<UserId> = ids
            .iter()
            .copied()
            .filter(|id| presence.business_unknown(*id))
            .collect();
        if unknown.is_empty() {
            return;
        }
        let node = self.clone();
        self.deps.tasks.spawn(async move {
            let Ok(Ok(businesses)) = timed(node.deps.store.businesses_among(&unknown)).await else {
                return; // the database is away: the next watch asks again
            };
            let others = unknown.iter().filter(|id| !businesses.contains(id));
            node.deps.delivery.presence.not_businesses(others.copied());
            for business in businesses {
                let _ = node.agents_of(business).await;
            }
        });
    }

    /// Replaces a connection's watch list (at most 200 users).
    pub fn watch(
        &self,
        watcher: &Outbound,
        old: &[UserId],
        new: &[UserId],
    ) -> Result<(), Rejection> {
        self.budgets.admit_now(watcher.user)?;
        if new.len() > limits::MAX_WATCH_USERS {
            return Err(Rejection::bad_request("at most 200 users in a watch list"));
        }
        self.deps.delivery.presence.watch(watcher, old, new);
        self.learn_businesses(new);
        Ok(())
    }

    /// Forgets a closed connection's watch list.
    pub fn unwatch(&self, session: SessionId, users: &[UserId]) {
        self.deps.delivery.presence.unwatch(session, users);
    }

    /// Attaches a new connection to its user's actor here (the user is online from now on).
    pub async fn connect(&self, outbound: Outbound) -> Result<(), Rejection> {
        let user = outbound.user;
        let mut outbound = Box::new(outbound);
        for _ in 0..3 {
            let actor = self.user(user).map_err(|_| Rejection::unavailable())?;
            let (tx, rx) = oneshot::channel();
            match actor.cast(UserMessage::Attach(outbound, RpcReplyPort::from(tx))) {
                Ok(()) => {
                    if rx.await.is_ok() {
                        return Ok(());
                    }
                    // The actor stopped with our attach queued; a new one takes it. We lost the
                    // queue's sender with it, so the connection must be opened anew.
                    return Err(Rejection::unavailable());
                }
                Err(MessagingErr::SendErr(UserMessage::Attach(back, _))) => {
                    self.users.forget_actor(actor.get_id());
                    outbound = back;
                }
                Err(_) => return Err(Rejection::unavailable()),
            }
        }
        Err(Rejection::unavailable())
    }

    /// Detaches a closed connection.
    pub fn disconnect(&self, user: UserId, session: SessionId) {
        if let Some(actor) = self.users.get(&user) {
            let _ = actor.cast(UserMessage::Detach(session));
        }
    }

    /// The one way to a conversation's owner: hands `request` to its actor (spawned when
    /// needed; a dead one is replaced once), the answer going to `reply`. In a cluster this is
    /// where a request for a conversation owned elsewhere leaves for its owner node.
    fn tell(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        match self.owner_elsewhere(conv) {
            Some(owner) => self.forward(&owner, conv, request, reply),
            None => self.tell_local(conv, request, reply),
        }
    }

    /// Hands `request` to this node's actor for `conv`.
    pub(super) fn tell_local(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
        reply: Reply,
    ) -> Result<(), Rejection> {
        let mut msg = ConversationMessage::Request(Box::new(request), reply);
        for _ in 0..2 {
            let actor: ActorRef<ConversationMessage> = self
                .conversation(conv)
                .map_err(|_| Rejection::unavailable())?;
            match actor.cast(msg) {
                Ok(()) => return Ok(()),
                Err(MessagingErr::SendErr(back)) => {
                    self.conversations.forget_actor(actor.get_id());
                    msg = back;
                }
                Err(_) => return Err(Rejection::unavailable()),
            }
        }
        Err(Rejection::unavailable())
    }

    /// [`Node::tell`], then waits for the owner's answer.
    async fn ask(
        &self,
        conv: ConversationId,
        request: ConversationRequest,
    ) -> Result<ConversationReply, Rejection> {
        let (tx, rx) = oneshot::channel();
        self.tell(conv, request, Reply::to(RpcReplyPort::from(tx)))?;
        answer(rx).await
    }
}

/// An owner's answer, as it comes back.
type Answer = Result<ConversationReply, Rejection>;

/// Waits for an actor's answer; a dropped reply (the actor stopped) or a late one is `unavailable`.
async fn answer(rx: oneshot::Receiver<Answer>) -> Answer {
    match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => Err(Rejection::unavailable()),
    }
}

/// The answer to a request answered `ok`.
fn expect_ok(reply: ConversationReply) -> Result<(), Rejection> {
    match reply {
        ConversationReply::Ok => Ok(()),
        other => Err(mismatched(other)),
    }
}

/// The answer to a `send`.
fn expect_sent(reply: ConversationReply) -> Result<Sent, Rejection> {
    match reply {
        ConversationReply::Sent(sent) => Ok(sent),
        other => Err(mismatched(other)),
    }
}

/// An answer of the wrong kind for its request: a bug, answered `internal`.
fn mismatched(reply: ConversationReply) -> Rejection {
    tracing::error!(
        ?reply,
        "a conversation answered a request with the wrong kind of reply"
    );
    Rejection::internal()
}

/// Bounds a store call by [`REQUEST_TIMEOUT`].
async fn timed<T>(f: impl Future<Output = T>) -> Result<T, Rejection> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| Rejection::unavailable())
}

fn seq(v: u64) -> Seq {
    Seq::try_from(v).unwrap_or(Seq::MAX)
}
