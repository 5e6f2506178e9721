//! Frames: the requests of PROTOCOL §3.2 and everything the server writes (replies and pushes).

use serde::{Deserialize, Serialize};

use super::error_code::ErrorCode;
use super::objects::{ConversationObject, MessageObject, PresenceItem, PresenceStatus};
use crate::ids::{ConversationId, Mid, Seq, SessionId, UserId};

/// What `create` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreateKind {
    /// Two users.
    Direct,
    /// A named group.
    Group,
    /// A customer and a business.
    Business,
}

/// A client request. `id` is the client's number for the reply; only `typing` may omit it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(missing_docs)] // the fields are PROTOCOL §3.2's, one for one
pub enum Request {
    Send {
        id: Option<u64>,
        conv: ConversationId,
        mid: Option<Mid>,
        body: String,
        kind: Option<String>,
    },
    History {
        id: Option<u64>,
        conv: ConversationId,
        after: Option<u64>,
        before: Option<u64>,
        #[serde(default, deserialize_with = "saturating_limit")]
        limit: Option<i64>,
    },
    Read {
        id: Option<u64>,
        conv: ConversationId,
        seq: u64,
    },
    Typing {
        id: Option<u64>,
        conv: ConversationId,
        on: bool,
    },
    Delete {
        id: Option<u64>,
        mid: Mid,
    },
    Create {
        id: Option<u64>,
        kind: CreateKind,
        members: Option<Vec<UserId>>,
        name: Option<String>,
        business: Option<UserId>,
    },
    Get {
        id: Option<u64>,
        conv: ConversationId,
    },
    Conversations {
        id: Option<u64>,
        #[serde(default, deserialize_with = "saturating_limit")]
        limit: Option<i64>,
        before: Option<u64>,
        since: Option<u64>,
    },
    AddMember {
        id: Option<u64>,
        conv: ConversationId,
        user: UserId,
    },
    RemoveMember {
        id: Option<u64>,
        conv: ConversationId,
        user: UserId,
    },
    Mute {
        id: Option<u64>,
        conv: ConversationId,
        on: bool,
    },
    Transfer {
        id: Option<u64>,
        conv: ConversationId,
        agent: UserId,
    },
    Presence {
        id: Option<u64>,
        users: Vec<UserId>,
    },
    Watch {
        id: Option<u64>,
        users: Vec<UserId>,
    },
    Auth {
        id: Option<u64>,
        token: String,
    },
    Ping {
        id: Option<u64>,
    },
}

/// A page `limit`: any integer, one beyond `i64` saturating (PROTOCOL §4 clamps a large
/// `limit` to the largest page; it does not refuse it). Anything else is a type error.
fn saturating_limit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct Limit;
    impl<'de> serde::de::Visitor<'de> for Limit {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
        fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
            Ok(Some(
                v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
            ))
        }
        fn visit_u128<E>(self, v: u128) -> Result<Self::Value, E> {
            Ok(Some(i64::try_from(v).unwrap_or(i64::MAX)))
        }
    }
    d.deserialize_option(Limit)
}

impl Request {
    /// The conversation the request is about, when it names one.
    pub fn conv(&self) -> Option<ConversationId> {
        match self {
            Request::Send { conv, .. }
            | Request::History { conv, .. }
            | Request::Read { conv, .. }
            | Request::Typing { conv, .. }
            | Request::Get { conv, .. }
            | Request::AddMember { conv, .. }
            | Request::RemoveMember { conv, .. }
            | Request::Mute { conv, .. }
            | Request::Transfer { conv, .. } => Some(*conv),
            _ => None,
        }
    }

    /// The client's request id.
    pub fn id(&self) -> Option<u64> {
        match self {
            Request::Send { id, .. }
            | Request::History { id, .. }
            | Request::Read { id, .. }
            | Request::Typing { id, .. }
            | Request::Delete { id, .. }
            | Request::Create { id, .. }
            | Request::Get { id, .. }
            | Request::Conversations { id, .. }
            | Request::AddMember { id, .. }
            | Request::RemoveMember { id, .. }
            | Request::Mute { id, .. }
            | Request::Transfer { id, .. }
            | Request::Presence { id, .. }
            | Request::Watch { id, .. }
            | Request::Auth { id, .. }
            | Request::Ping { id } => *id,
        }
    }
}

/// Why the server closes a connection (the `bye` push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    /// The token expired and no fresh one came.
    TokenExpired,
    /// The node is stopping.
    Shutdown,
    /// The client stopped reading and its queue filled.
    SlowConsumer,
    /// A protocol or policy violation.
    Policy,
}

/// Everything the server writes: replies (with the request's `id`) and pushes (without).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[allow(missing_docs)] // the fields are PROTOCOL §3's, one for one
pub enum ServerFrame {
    Hello {
        user: UserId,
        session: SessionId,
        node: String,
        heartbeat_ms: u64,
        time: i64,
    },
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conv: ConversationId,
        mid: Mid,
        seq: Seq,
        at: i64,
    },
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conv: ConversationId,
        messages: Vec<MessageObject>,
        more: bool,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Conversation {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        conversation: Box<ConversationObject>,
    },
    Conversations {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        items: Vec<ConversationObject>,
        more: bool,
    },
    #[serde(rename = "presence")]
    PresenceReply {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        items: Vec<PresenceItem>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Message(MessageObject),
    Receipt {
        conv: ConversationId,
        user: UserId,
        seq: Seq,
    },
    Typing {
        conv: ConversationId,
        user: UserId,
        on: bool,
    },
    Deleted {
        conv: ConversationId,
        mid: Mid,
        seq: Seq,
    },
    Removed {
        conv: ConversationId,
    },
    #[serde(rename = "presence")]
    PresencePush {
        user: UserId,
        status: PresenceStatus,
    },
    Bye {
        reason: ByeReason,
    },
}
