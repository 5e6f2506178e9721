//! What both SQL backends share below the `Store` impl: reading rows into the port's types,
//! classifying the driver's errors by what the caller does next, and answering the batches of a
//! commit whose mids were stored before. The macros read rows of either pool without a tower of
//! generic bounds; they name every type by its path, so a caller needs only `sqlx::Row`.

use chat_actors::ports::{AppendBatch, ExistingMid, StoreError};

/// The columns of a message, in the order [`message!`] reads them. A deleted body is hidden.
pub(crate) const MESSAGE_COLUMNS: &str = "conv_id, seq, mid, sender, kind, \
     CASE WHEN deleted_at IS NULL THEN body END AS body, at, deleted_at";

/// Reads a message from a row selected with [`MESSAGE_COLUMNS`].
macro_rules! message {
    ($row:expr) => {{
        let row = $row;
        ::chat_actors::protocol::MessageObject {
            conv: ::chat_actors::ids::ConversationId(row.try_get::<::uuid::Uuid, _>(0)?),
            seq: row.try_get::<i64, _>(1)?,
            mid: ::chat_actors::ids::Mid(row.try_get::<::uuid::Uuid, _>(2)?),
            from: ::chat_actors::ids::UserId(row.try_get::<::uuid::Uuid, _>(3)?),
            kind: row.try_get::<String, _>(4)?,
            body: row.try_get::<Option<String>, _>(5)?,
            at: row.try_get::<i64, _>(6)?,
            deleted_at: row.try_get::<Option<i64>, _>(7)?,
        }
    }};
}
pub(crate) use message;

/// Reads a conversation (without members) from `id, kind, name, business, created_at, last_seq,
/// last_activity`.
macro_rules! conversation {
    ($row:expr) => {{
        let row = $row;
        let kind: String = row.try_get(1)?;
        ::chat_actors::ports::ConversationRecord {
            id: ::chat_actors::ids::ConversationId(row.try_get::<::uuid::Uuid, _>(0)?),
            kind: ::chat_actors::protocol::ConversationKind::parse(&kind)
                .ok_or_else(|| $crate::store::rows::corrupt("conversation kind"))?,
            name: row.try_get::<Option<String>, _>(2)?,
            business: row
                .try_get::<Option<::uuid::Uuid>, _>(3)?
                .map(::chat_actors::ids::UserId),
            created_at: row.try_get::<i64, _>(4)?,
            last_seq: row.try_get::<i64, _>(5)?,
            last_activity: row.try_get::<i64, _>(6)?,
            members: ::std::vec::Vec::new(),
        }
    }};
}
pub(crate) use conversation;

/// Reads a member from `user_id, role, last_read, muted, joined`, starting at column `$at`.
macro_rules! member {
    ($row:expr, $at:expr) => {{
        let row = $row;
        let role: String = row.try_get($at + 1)?;
        ::chat_actors::ports::MemberRecord {
            user: ::chat_actors::ids::UserId(row.try_get::<::uuid::Uuid, _>($at)?),
            role: ::chat_actors::protocol::Role::parse(&role)
                .ok_or_else(|| $crate::store::rows::corrupt("member role"))?,
            last_read: row.try_get::<i64, _>($at + 2)?,
            muted: row.try_get::<bool, _>($at + 3)?,
            joined: row.try_get::<i64, _>($at + 4)?,
        }
    }};
}
pub(crate) use member;

/// Reads an `ExistingMid` from `mid, conv_id, sender, seq, at`.
macro_rules! existing_mid {
    ($row:expr) => {{
        let row = $row;
        let read = || -> Result<::chat_actors::ports::ExistingMid, ::sqlx::Error> {
            Ok(::chat_actors::ports::ExistingMid {
                mid: ::chat_actors::ids::Mid(row.try_get(0)?),
                conv: ::chat_actors::ids::ConversationId(row.try_get(1)?),
                sender: ::chat_actors::ids::UserId(row.try_get(2)?),
                seq: row.try_get(3)?,
                at: row.try_get(4)?,
            })
        };
        read().map_err($crate::store::rows::classify)
    }};
}
pub(crate) use existing_mid;

pub(crate) fn corrupt(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unexpected {what} in the database").into())
}

/// Converts a driver error once, by what the caller does next. A unique violation is told apart
/// by the constraint it broke: PostgreSQL names it (a partition's index: `messages_20261130_mid`,
/// `message_mids_20261130_mid`, `messages_default_pkey`); SQLite names the columns in its
/// message.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            let named = |suffixes: &[&str], columns: &str| {
                db.constraint().is_some_and(|c| {
                    c.starts_with("message") && suffixes.iter().any(|s| c.ends_with(s))
                }) || db.message().contains(columns)
            };
            if named(&["_pkey", "_seq"], "messages.conv_id, messages.seq") {
                StoreError::SeqTaken
            } else if named(&["_mid"], "messages.mid") {
                StoreError::MidTaken
            } else {
                StoreError::Refused(db.message().to_owned())
            }
        }
        // A rule of the data (foreign key, check, not null): retrying cannot help.
        sqlx::Error::Database(db) if db.is_foreign_key_violation() || db.is_check_violation() => {
            StoreError::Refused(db.message().to_owned())
        }
        sqlx::Error::RowNotFound => StoreError::NotFound,
        _ => StoreError::Unavailable(Box::new(e)),
    }
}

/// Splits the batches into those to write and, for each batch, its result: a batch with a mid
/// already stored is answered with those mids and not written.
pub(crate) fn leave_out_stored<'a>(
    batches: &'a [AppendBatch],
    hits: &[ExistingMid],
) -> (Vec<Result<(), StoreError>>, Vec<&'a AppendBatch>) {
    let mut results = Vec::with_capacity(batches.len());
    let mut kept = Vec::with_capacity(batches.len());
    for b in batches {
        let mine: Vec<ExistingMid> = hits
            .iter()
            .filter(|h| b.messages.iter().any(|m| m.mid == h.mid))
            .cloned()
            .collect();
        if mine.is_empty() {
            kept.push(b);
            results.push(Ok(()));
        } else {
            results.push(Err(StoreError::DuplicateMids(mine)));
        }
    }
    (results, kept)
}
