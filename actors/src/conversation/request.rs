//! What any node may ask a conversation's owner, and what the owner answers.
//!
//! Requests and replies are plain data (serde), so the one funnel that reaches an owner
//! ([`crate::node::Node`]'s `ask` and `tell`) can hand them to the local actor or, in a cluster,
//! carry them to the owner node with a correlation id. The reply port stays on the asking node.

use ractor::RpcReplyPort;
use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, Mid, Seq, SessionId, UserId};
use crate::ports::{HistoryRange, StoreError};
use crate::protocol::{ConversationObject, MessageObject, Rejection};

/// A client's request for one conversation, already checked for shape, size and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConversationRequest {
    /// Numbers, persists and fans out a message; answered `Sent` after the commit.
    Send(SendRequest),
    /// Moves `user`'s read pointer forward; a receipt is pushed after the commit.
    Read {
        /// The reader.
        user: UserId,
        /// Up to where.
        seq: Seq,
    },
    /// Tells the other members that `user` is (not) typing.
    Typing {
        /// Who types.
        user: UserId,
        /// Started or stopped.
        on: bool,
    },
    /// Soft-deletes a message of `user`'s (found by its `mid` before asking).
    Delete {
        /// Who deletes.
        user: UserId,
        /// The message as stored.
        message: Box<MessageObject>,
    },
    /// Sets `user`'s mute flag.
    Mute {
        /// Whose flag.
        user: UserId,
        /// Muted or not.
        on: bool,
    },
    /// `actor` adds `user`.
    AddMember {
        /// Who adds.
        actor: UserId,
        /// Who is added.
        user: UserId,
    },
    /// `actor` removes `user` (or leaves, when the same).
    RemoveMember {
        /// Who removes.
        actor: UserId,
        /// Who is removed.
        user: UserId,
    },
    /// Agent `actor` hands the business conversation to `agent` (an agent of the business).
    Transfer {
        /// The agent handing over.
        actor: UserId,
        /// The agent taking over.
        agent: UserId,
    },
    /// A page of history for `user`.
    History {
        /// Who reads.
        user: UserId,
        /// Which page.
        range: HistoryRange,
        /// How many at most.
        limit: usize,
    },
    /// The conversation as `user` sees it.
    Get {
        /// Who asks.
        user: UserId,
    },
    /// The conversation was just created: push it to its members, ahead of any push of its
    /// messages (the owner makes both, so they leave in order).
    Announce {
        /// The creator's connection, which got the reply instead.
        except: Option<SessionId>,
    },
}

impl ConversationRequest {
    /// Whether the request only looks at the conversation (a page, the object, the creation's
    /// push): it keeps the conversation's actor up for a glance, not for a conversation in use.
    pub fn only_looks(&self) -> bool {
        matches!(
            self,
            ConversationRequest::History { .. }
                | ConversationRequest::Get { .. }
                | ConversationRequest::Announce { .. }
        )
    }
}

/// A send as the owner gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
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
}

/// What the owner answers a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ConversationReply {
    /// Done (`read`, `typing`, `delete`, `mute`, membership changes).
    Ok,
    /// A send's acknowledgement.
    Sent(Sent),
    /// A page of history and whether more exist that way.
    History {
        /// The page, oldest first.
        messages: Vec<MessageObject>,
        /// Whether more exist beyond it.
        more: bool,
    },
    /// The conversation as the asker sees it.
    Conversation(Box<ConversationObject>),
}

/// The port an answer goes back on.
pub type ReplyPort = RpcReplyPort<Result<ConversationReply, Rejection>>;

/// Where a request's answer goes: the asker's port, or nobody (a `typing` without an id).
pub struct Reply(Option<ReplyPort>);

impl Reply {
    /// Answers on `port`.
    pub fn to(port: ReplyPort) -> Reply {
        Reply(Some(port))
    }

    /// Answers nobody.
    pub fn nobody() -> Reply {
        Reply(None)
    }

    /// The port, for an answer that will come from elsewhere (another node).
    pub fn into_port(self) -> Option<ReplyPort> {
        self.0
    }

    /// Answers; an asker that went away is no error.
    pub fn send(self, answer: Result<ConversationReply, Rejection>) {
        if let Some(port) = self.0 {
            let _ = port.send(answer);
        }
    }

    /// Answers `ok`.
    pub fn ok(self) {
        self.send(Ok(ConversationReply::Ok));
    }

    /// Answers with a refusal.
    pub fn fail(self, rejection: Rejection) {
        self.send(Err(rejection));
    }

    /// Answers a send.
    pub fn sent(self, answer: Result<Sent, Rejection>) {
        self.send(answer.map(ConversationReply::Sent));
    }
}

/// The acknowledgement of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// A `mid` that names another message.
pub(super) fn mid_clash() -> Rejection {
    Rejection::conflict("this mid belongs to another message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;

    #[test]
    fn requests_and_replies_travel_as_messagepack() {
        let requests = [
            ConversationRequest::Send(SendRequest {
                sender: UserId::random(),
                session: Some(SessionId::random()),
                mid: Mid::random(),
                client_mid: true,
                kind: "text".to_owned(),
                body: "hi".to_owned(),
            }),
            ConversationRequest::History {
                user: UserId::random(),
                range: HistoryRange::After(3, Some(9)),
                limit: 50,
            },
            ConversationRequest::Typing {
                user: UserId::random(),
                on: true,
            },
        ];
        for r in requests {
            let bytes = rmp_serde::to_vec_named(&r).unwrap();
            assert_eq!(
                rmp_serde::from_slice::<ConversationRequest>(&bytes).unwrap(),
                r
            );
        }
        let reply = ConversationReply::Sent(Sent {
            conv: ConversationId::random(),
            mid: Mid::random(),
            seq: 4,
            at: 5,
            created: true,
        });
        let bytes = rmp_serde::to_vec_named(&reply).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<ConversationReply>(&bytes).unwrap(),
            reply
        );
    }
}
