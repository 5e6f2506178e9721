//! The typed operations that transports call: one implementation of every rule, two transports.
//!
//! A transport decodes a request, calls one of these, and encodes the answer; it never builds an
//! actor message. Each operation answers within [`super::REQUEST_TIMEOUT`] (`unavailable`
//! otherwise). Which node's actor answers is [`super::route`]'s business; connections, presence
//! and watch lists are [`super::sessions`]'.

use ractor::RpcReplyPort;
use tokio::sync::oneshot;

use super::budget::{Admitted, Cost};
use super::deadline::{Answer, answer, timed};
use super::state::{Caller, Node};
use crate::clock::now_ms;
use crate::conversation::{
    ConversationReply, ConversationRequest, Reply, SendRequest, Sent, store_rejection, view,
};
use crate::ids::{ConversationId, Mid, Seq, UserId};
use crate::ports::{HistoryRange, ListQuery, NewConversation, ProfilesError};
use crate::protocol::{ConversationObject, CreateKind, MessageObject, Rejection};
use crate::rules::{assignment, create, limits};

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
    pub(super) async fn agents_of(&self, business: UserId) -> Result<Vec<UserId>, Rejection> {
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

    /// What `req` creates, checked by [`create`]'s rules: a business's agent is chosen here,
    /// from its agents' presence and loads.
    async fn plan_conversation(
        &self,
        caller: Caller,
        req: CreateRequest,
    ) -> Result<NewConversation, Rejection> {
        let plan = match req.kind {
            CreateKind::Direct => create::direct(caller.user, &req.members)?,
            CreateKind::Group => create::group(
                caller.user,
                &req.members,
                req.name,
                self.deps.limits.max_group_size,
            )?,
            CreateKind::Business => {
                let business = create::named_business(req.business)?;
                let agents = self.agents_of(business).await?;
                create::check_customer(caller.user, business, &agents)?;
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
                create::business(caller.user, business, agent)
            }
        };
        Ok(plan.into_new(ConversationId(uuid::Uuid::now_v7()), now_ms()))
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

fn seq(v: u64) -> Seq {
    Seq::try_from(v).unwrap_or(Seq::MAX)
}
