//! A stored conversation as one member sees it: members with profiles, their own `unread`.

use std::collections::HashMap;

use crate::ids::UserId;
use crate::ports::{ConversationRecord, Profiles};
use crate::protocol::{
    ConversationKind, ConversationObject, MemberObject, MessageObject, Profile, Role,
};

/// The ids to look up for `records`: (users, businesses), each once.
pub fn profile_ids<'a>(
    records: impl IntoIterator<Item = &'a ConversationRecord>,
) -> (Vec<UserId>, Vec<UserId>) {
    let mut users = Vec::new();
    let mut businesses = Vec::new();
    for r in records {
        for m in &r.members {
            let list = if m.role == Role::Business {
                &mut businesses
            } else {
                &mut users
            };
            if !list.contains(&m.user) {
                list.push(m.user);
            }
        }
    }
    (users, businesses)
}

/// Profiles for every member of `records`, in one call to the user service (or its cache).
pub async fn profiles_for<'a>(
    profiles: &dyn Profiles,
    records: impl IntoIterator<Item = &'a ConversationRecord>,
) -> HashMap<UserId, Profile> {
    let (users, businesses) = profile_ids(records);
    profiles.profiles(&users, &businesses).await
}

/// The conversation object for a member whose unread count is `unread`.
pub fn object(
    record: &ConversationRecord,
    last_message: Option<MessageObject>,
    unread: i64,
    profiles: &HashMap<UserId, Profile>,
) -> ConversationObject {
    ConversationObject {
        id: record.id,
        kind: record.kind,
        name: record.name.clone(),
        business: match record.kind {
            ConversationKind::Business => record.business,
            _ => None,
        },
        members: record
            .members
            .iter()
            .map(|m| MemberObject {
                user: m.user,
                role: m.role,
                last_read: m.last_read,
                muted: m.muted,
                profile: profiles
                    .get(&m.user)
                    .cloned()
                    .unwrap_or_else(|| Profile::placeholder(m.user)),
            })
            .collect(),
        last_seq: record.last_seq,
        last_message,
        unread,
        last_activity: record.last_activity,
        created_at: record.created_at,
    }
}
