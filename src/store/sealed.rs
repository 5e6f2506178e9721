//! The store with message bodies encrypted at rest: seals every body on its way in (messages
//! and system messages) and opens it on its way out (history, look-ups, conversation lists).
//! Everything else passes through. It sits in front of the guarded store when
//! `CHAT_ENCRYPTION_KEYS` is set, so the core and the SQL never see a key.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chat_actors::ids::{ConversationId, Mid, Seq, UserId};
use chat_actors::ports::{
    AppendBatch, Appended, ConversationRecord, HistoryRange, ListQuery, ListedConversation,
    MembershipChange, NewConversation, NewMessage, Purged, ReadMark, Store, StoreError,
};
use chat_actors::protocol::MessageObject;

use super::keyring::Keyring;

/// A [`Store`] that keeps bodies sealed with a [`Keyring`].
pub struct SealedStore {
    inner: Arc<dyn Store>,
    keys: Arc<Keyring>,
}

impl SealedStore {
    /// `inner`, with bodies sealed by `keys`.
    pub fn wrap(inner: Arc<dyn Store>, keys: Arc<Keyring>) -> Arc<dyn Store> {
        Arc::new(SealedStore { inner, keys })
    }

    fn seal(&self, m: &NewMessage) -> NewMessage {
        NewMessage {
            body: self.keys.seal(m.mid, &m.body),
            ..m.clone()
        }
    }

    fn open(&self, mut m: MessageObject) -> Result<MessageObject, StoreError> {
        if let Some(stored) = m.body.take() {
            let opened = self.keys.open(m.mid, &stored).map_err(|e| {
                tracing::error!(error = %e, "a message body cannot be opened");
                StoreError::Unavailable(Box::new(e))
            })?;
            m.body = Some(match opened {
                Cow::Owned(body) => body,
                // Stored in the clear (before encryption was on): the body as it came.
                Cow::Borrowed(_) => stored,
            });
        }
        Ok(m)
    }

    fn open_all(&self, messages: Vec<MessageObject>) -> Result<Vec<MessageObject>, StoreError> {
        messages.into_iter().map(|m| self.open(m)).collect()
    }
}

#[async_trait]
impl Store for SealedStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.inner.load_conversation(id).await
    }

    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError> {
        self.inner.create_conversation(new).await
    }

    async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended {
        let sealed: Vec<AppendBatch> = batches
            .iter()
            .map(|b| AppendBatch {
                conv: b.conv,
                messages: b.messages.iter().map(|m| self.seal(m)).collect(),
            })
            .collect();
        self.inner.append(&sealed, marks).await
    }

    async fn change_members(
        &self,
        conv: ConversationId,
        change: &MembershipChange,
    ) -> Result<(), StoreError> {
        let sealed = MembershipChange {
            system: change.system.as_ref().map(|m| self.seal(m)),
            ..change.clone()
        };
        self.inner.change_members(conv, &sealed).await
    }

    async fn set_reads(&self, marks: &[ReadMark]) -> Result<(), StoreError> {
        self.inner.set_reads(marks).await
    }

    async fn set_muted(
        &self,
        conv: ConversationId,
        user: UserId,
        on: bool,
    ) -> Result<(), StoreError> {
        self.inner.set_muted(conv, user, on).await
    }

    async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        let (messages, more) = self.inner.history(conv, range, limit).await?;
        Ok((self.open_all(messages)?, more))
    }

    async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError> {
        self.inner
            .find_message(mid)
            .await?
            .map(|m| self.open(m))
            .transpose()
    }

    async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError> {
        self.inner.mark_deleted(mid, at).await
    }

    async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        let (last, unread) = self
            .inner
            .last_message_and_unread(conv, user, last_read)
            .await?;
        Ok((last.map(|m| self.open(m)).transpose()?, unread))
    }

    async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        let (listed, more) = self.inner.list_conversations(user, query).await?;
        let opened = listed
            .into_iter()
            .map(|mut l| {
                l.last_message = l.last_message.map(|m| self.open(m)).transpose()?;
                Ok(l)
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((opened, more))
    }

    async fn agent_loads(&self, agents: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError> {
        self.inner.agent_loads(agents).await
    }

    async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        self.inner.businesses_among(ids).await
    }

    async fn purge(&self, retention_cutoff: i64, audit_cutoff: i64) -> Result<Purged, StoreError> {
        self.inner.purge(retention_cutoff, audit_cutoff).await
    }
}
