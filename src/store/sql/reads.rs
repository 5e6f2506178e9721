//! The port's reads, the same SQL on both backends: a conversation with its members, history
//! pages, one message by mid, the conversation list with each one's newest message and unread
//! count, and the look-ups business chats need. Where PostgreSQL's partitions need a hint (a mid's
//! week), [`partitions::push_located`] adds it.

use std::collections::HashMap;

use chat_actors::ids::{ConversationId, Mid, Seq, UserId};
use chat_actors::ports::{
    ConversationRecord, HistoryRange, ListQuery, ListedConversation, MemberRecord, StoreError,
};
use chat_actors::protocol::MessageObject;
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use super::any_of::PushAnyOf;
use super::pool::{Dialect, SqlStore, on_pool};
use crate::store::postgres::partitions;
use crate::store::rows::{MESSAGE_COLUMNS, classify, conversation, member, message};

impl SqlStore {
    /// The conversation and its members in one statement: one round trip and one snapshot. A
    /// conversation is loaded each time its actor starts, which at people's pace is about once
    /// a message (a conversation rests longer between messages than its actor stays up).
    pub(super) async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        on_pool!(self, |p, d| {
            let rows = sqlx::query(
                "SELECT c.id, c.kind, c.name, c.business, c.created_at, c.last_seq, c.last_activity, \
                 m.user_id, m.role, m.last_read, m.muted, m.joined \
                 FROM conversations c LEFT JOIN members m ON m.conv_id = c.id \
                 WHERE c.id = $1 ORDER BY m.joined",
            )
            .bind(id.0)
            .fetch_all(p)
            .await
            .map_err(classify)?;
            let read = || -> Result<Option<ConversationRecord>, sqlx::Error> {
                let Some(first) = rows.first() else {
                    return Ok(None);
                };
                let mut record = conversation!(first);
                for row in &rows {
                    // a conversation without members has one row, its member columns NULL
                    if row.try_get::<Option<Uuid>, _>(7)?.is_some() {
                        record.members.push(member!(row, 7));
                    }
                }
                Ok(Some(record))
            };
            read().map_err(classify)
        })
    }

    pub(super) async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        let fetch = limit as i64 + 1;
        let mut messages = on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_id = "
            ));
            q.push_bind(conv.0);
            match range {
                HistoryRange::After(a, below) => {
                    q.push(" AND seq > ").push_bind(a);
                    if let Some(b) = below {
                        q.push(" AND seq < ").push_bind(b);
                    }
                    q.push(" ORDER BY seq ASC");
                }
                HistoryRange::Before(b) => {
                    q.push(" AND seq < ")
                        .push_bind(b)
                        .push(" ORDER BY seq DESC");
                }
                HistoryRange::Newest => {
                    q.push(" ORDER BY seq DESC");
                }
            }
            q.push(" LIMIT ").push_bind(fetch);
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            let read = || -> Result<Vec<MessageObject>, sqlx::Error> {
                rows.iter().map(|r| Ok(message!(r))).collect()
            };
            read().map_err(classify)?
        });
        let more = messages.len() > limit;
        messages.truncate(limit);
        if !matches!(range, HistoryRange::After(..)) {
            messages.reverse();
        }
        Ok((messages, more))
    }

    pub(super) async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError> {
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE mid = "
            ));
            q.push_bind(mid.0);
            if d == Dialect::Pg {
                partitions::push_located(&mut q, mid);
            }
            let row = q.build().fetch_optional(p).await.map_err(classify)?;
            match row {
                Some(row) => {
                    let read = || -> Result<MessageObject, sqlx::Error> { Ok(message!(&row)) };
                    Ok(Some(read().map_err(classify)?))
                }
                None => Ok(None),
            }
        })
    }

    pub(super) async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        on_pool!(self, |p, d| {
            // The newest message, as in `lasts_and_unreads`: one partition looked in.
            let row = sqlx::query(
                "SELECT msg.conv_id, msg.seq, msg.mid, msg.sender, msg.kind, \
                 CASE WHEN msg.deleted_at IS NULL THEN msg.body END, msg.at, msg.deleted_at \
                 FROM conversations c JOIN messages msg ON msg.conv_id = c.id \
                 AND msg.seq = c.last_seq AND msg.at = c.last_activity WHERE c.id = $1",
            )
            .bind(conv.0)
            .fetch_optional(p)
            .await
            .map_err(classify)?;
            let last = match row {
                Some(row) => {
                    let read = || -> Result<MessageObject, sqlx::Error> { Ok(message!(&row)) };
                    Some(read().map_err(classify)?)
                }
                None => None,
            };
            let unread: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM messages WHERE conv_id = $1 AND seq > $2 AND sender <> $3 \
                 AND deleted_at IS NULL AND kind <> 'system'",
            )
            .bind(conv.0)
            .bind(last_read)
            .bind(user.0)
            .fetch_one(p)
            .await
            .map_err(classify)?;
            Ok((last, unread))
        })
    }

    pub(super) async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        let fetch = query.limit as i64 + 1;
        let mut records = on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT c.id, c.kind, c.name, c.business, c.created_at, c.last_seq, c.last_activity \
                 FROM members m JOIN conversations c ON c.id = m.conv_id WHERE m.user_id = ",
            );
            q.push_bind(user.0);
            if let Some(before) = query.before {
                q.push(" AND c.last_activity < ").push_bind(before);
            }
            if let Some(since) = query.since {
                q.push(" AND c.last_activity > ").push_bind(since);
            }
            q.push(" ORDER BY c.last_activity DESC, c.id DESC LIMIT ")
                .push_bind(fetch);
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            let read = || -> Result<Vec<ConversationRecord>, sqlx::Error> {
                rows.iter().map(|row| Ok(conversation!(row))).collect()
            };
            read().map_err(classify)?
        });
        let more = records.len() > query.limit;
        records.truncate(query.limit);
        let ids: Vec<ConversationId> = records.iter().map(|r| r.id).collect();
        let mut members = self.load_members(&ids).await.map_err(classify)?;
        let (mut last, unread) = self.lasts_and_unreads(user, &ids).await.map_err(classify)?;
        let listed = records
            .into_iter()
            .map(|mut record| {
                record.members = members.remove(&record.id).unwrap_or_default();
                ListedConversation {
                    last_message: last.remove(&record.id),
                    unread: unread.get(&record.id).copied().unwrap_or(0),
                    record,
                }
            })
            .collect();
        Ok((listed, more))
    }

    pub(super) async fn agent_loads(
        &self,
        agents: &[UserId],
    ) -> Result<HashMap<UserId, i64>, StoreError> {
        let mut loads = HashMap::new();
        if agents.is_empty() {
            return Ok(loads);
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT user_id, COUNT(*) FROM members WHERE role = 'agent' AND user_id",
            );
            q.push_any_of(agents.iter().map(|a| a.0));
            q.push(" GROUP BY user_id");
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            for row in rows {
                let read = || -> Result<(Uuid, i64), sqlx::Error> {
                    Ok((row.try_get(0)?, row.try_get(1)?))
                };
                let (user, n) = read().map_err(classify)?;
                loads.insert(UserId(user), n);
            }
            Ok(loads)
        })
    }

    pub(super) async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |p, _d| {
            let mut q = QueryBuilder::new(
                "SELECT DISTINCT user_id FROM members WHERE role = 'business' AND user_id",
            );
            q.push_any_of(ids.iter().map(|id| id.0));
            let rows = q.build().fetch_all(p).await.map_err(classify)?;
            rows.iter()
                .map(|row| row.try_get::<Uuid, _>(0).map(UserId))
                .collect::<Result<Vec<_>, _>>()
                .map_err(classify)
        })
    }

    /// The members of each of `convs`, in the order they joined.
    async fn load_members(
        &self,
        convs: &[ConversationId],
    ) -> Result<HashMap<ConversationId, Vec<MemberRecord>>, sqlx::Error> {
        let mut out: HashMap<ConversationId, Vec<MemberRecord>> = HashMap::new();
        if convs.is_empty() {
            return Ok(out);
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT conv_id, user_id, role, last_read, muted, joined FROM members WHERE conv_id",
            );
            q.push_any_of(convs.iter().map(|c| c.0));
            q.push(" ORDER BY joined");
            for row in q.build().fetch_all(p).await? {
                let conv = ConversationId(row.try_get::<Uuid, _>(0)?);
                out.entry(conv).or_default().push(member!(&row, 1));
            }
            Ok(out)
        })
    }

    /// The newest message of each conversation and `user`'s unread count in each. The newest is
    /// found by `last_seq` and, as the two are written together, `last_activity` is its `at`:
    /// on PostgreSQL that names the one week partition to look in.
    async fn lasts_and_unreads(
        &self,
        user: UserId,
        convs: &[ConversationId],
    ) -> Result<
        (
            HashMap<ConversationId, MessageObject>,
            HashMap<ConversationId, i64>,
        ),
        sqlx::Error,
    > {
        let mut last = HashMap::new();
        let mut unread = HashMap::new();
        if convs.is_empty() {
            return Ok((last, unread));
        }
        on_pool!(self, |p, d| {
            let mut q = QueryBuilder::new(
                "SELECT msg.conv_id, msg.seq, msg.mid, msg.sender, msg.kind, \
                 CASE WHEN msg.deleted_at IS NULL THEN msg.body END, msg.at, msg.deleted_at \
                 FROM conversations c JOIN messages msg ON msg.conv_id = c.id AND msg.seq = c.last_seq \
                 AND msg.at = c.last_activity WHERE c.id",
            );
            q.push_any_of(convs.iter().map(|c| c.0));
            for row in q.build().fetch_all(p).await? {
                let m = message!(&row);
                last.insert(m.conv, m);
            }
            let mut q = QueryBuilder::new(
                "SELECT mb.conv_id, COUNT(msg.seq) FROM members mb JOIN messages msg \
                 ON msg.conv_id = mb.conv_id AND msg.seq > mb.last_read AND msg.sender <> mb.user_id \
                 AND msg.deleted_at IS NULL AND msg.kind <> 'system' WHERE mb.user_id = ",
            );
            q.push_bind(user.0).push(" AND mb.conv_id");
            q.push_any_of(convs.iter().map(|c| c.0));
            q.push(" GROUP BY mb.conv_id");
            for row in q.build().fetch_all(p).await? {
                unread.insert(
                    ConversationId(row.try_get::<Uuid, _>(0)?),
                    row.try_get::<i64, _>(1)?,
                );
            }
            Ok((last, unread))
        })
    }
}
