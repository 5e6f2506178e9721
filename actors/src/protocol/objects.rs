//! The objects of PROTOCOL §3.1: message, conversation, member, profile, presence.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, Mid, Seq, UserId};

/// A stored message as clients see it. A deleted one has no body and a `deleted_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageObject {
    /// The conversation.
    pub conv: ConversationId,
    /// Its number in the conversation.
    pub seq: Seq,
    /// The idempotency key.
    pub mid: Mid,
    /// The sender (for `system` messages, the acting user).
    pub from: UserId,
    /// `text`, a client-chosen kind, or `system`.
    pub kind: String,
    /// The text; nil once deleted.
    pub body: Option<String>,
    /// When it was stored, ms.
    pub at: i64,
    /// When it was deleted, ms.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deleted_at: Option<i64>,
}

/// direct, group or business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Two distinct users.
    Direct,
    /// Up to the configured size, with admins.
    Group,
    /// A customer, a business and its agent.
    Business,
}

impl ConversationKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
            ConversationKind::Business => "business",
        }
    }
    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            "business" => Some(ConversationKind::Business),
            _ => None,
        }
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A plain member of a direct or group conversation.
    Member,
    /// A group member who adds and removes others.
    Admin,
    /// The user who opened a business conversation.
    Customer,
    /// The business's agent currently serving it.
    Agent,
    /// The business itself.
    Business,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Business => "business",
        }
    }
    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "customer" => Some(Role::Customer),
            "agent" => Some(Role::Agent),
            "business" => Some(Role::Business),
            _ => None,
        }
    }
}

/// A name and avatar from the user service, or a stand-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Display name.
    pub name: String,
    /// Avatar, when the user service has one.
    pub avatar_url: Option<String>,
    /// Served from an expired cache because the user service failed.
    #[serde(skip_serializing_if = "is_false", default)]
    pub stale: bool,
    /// Nothing was known: a generic name made from the UUID.
    #[serde(skip_serializing_if = "is_false", default)]
    pub placeholder: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Profile {
    /// The stand-in for an id nothing is known about.
    pub fn placeholder(id: UserId) -> Self {
        let text = id.to_string();
        Profile {
            name: format!("User {}", &text[..8]),
            avatar_url: None,
            stale: false,
            placeholder: true,
        }
    }
}

/// One member as shown in a conversation object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberObject {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// Their read pointer.
    pub last_read: Seq,
    /// Whether they muted it (shown for every member; each sets only their own).
    pub muted: bool,
    /// Name and avatar.
    pub profile: Profile,
}

/// A conversation as one member sees it (`muted` and `unread` are the caller's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationObject {
    /// The conversation.
    pub id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// A group's name.
    pub name: Option<String>,
    /// A business conversation's business.
    pub business: Option<UserId>,
    /// Members, longest-standing first.
    pub members: Vec<MemberObject>,
    /// The newest seq, 0 when empty.
    pub last_seq: Seq,
    /// The newest message.
    pub last_message: Option<MessageObject>,
    /// Messages after the caller's pointer that others sent, neither deleted nor system.
    pub unread: i64,
    /// The newest message's `at`, else `created_at`.
    pub last_activity: i64,
    /// Creation time, ms.
    pub created_at: i64,
}

/// online or offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one connection open.
    Online,
    /// None.
    Offline,
}

/// One user's presence, as `presence` answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceItem {
    /// The user (or business).
    pub user: UserId,
    /// Their status.
    pub status: PresenceStatus,
    /// When they were last online, if known and offline.
    pub last_seen: Option<i64>,
}
