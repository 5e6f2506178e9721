//! The traits the core needs from the outside (storage, the bus, the user service), and the one
//! it offers the bus: [`BusInbox`], where what arrives from other nodes comes in.
//!
//! `src/` implements them (SQLite/PostgreSQL, in-process/Redis, HTTP); the actors see only these.
//! Errors are named for what the caller does next.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;

use crate::ids::{ConversationId, Mid, Seq, UserId};
use crate::protocol::{ConversationKind, MessageObject, Profile, Role};

/// A storage failure, by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Some `mid`s of the batch are stored already: answer the first result, or `conflict`.
    #[error("{} mid(s) already stored", .0.len())]
    DuplicateMids(Vec<ExistingMid>),
    /// Another writer took one of our `seq`s (two owners for a moment): reload the conversation
    /// and renumber; nothing of the batch was stored or acknowledged.
    #[error("seq already taken")]
    SeqTaken,
    /// A `mid` of the batch was stored by another writer between the look-up and the insert:
    /// look the mids up again (the retry answers `DuplicateMids`).
    #[error("mid stored concurrently")]
    MidTaken,
    /// The row is not there.
    #[error("not found")]
    NotFound,
    /// The change breaks one of the data's own rules (a constraint other than the ones above):
    /// a request the rules should have refused. Retrying cannot help, so it is never
    /// `unavailable`.
    #[error("refused by the database: {0}")]
    Refused(String),
    /// The database did not answer, or failed: answer `unavailable`, retry later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Where a `mid` is already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingMid {
    /// The message id.
    pub mid: Mid,
    /// Its conversation.
    pub conv: ConversationId,
    /// Its sender.
    pub sender: UserId,
    /// Its seq.
    pub seq: Seq,
    /// Its time.
    pub at: i64,
}

/// One member row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member.
    pub user: UserId,
    /// Their role.
    pub role: Role,
    /// Their read pointer.
    pub last_read: Seq,
    /// Muted by them.
    pub muted: bool,
    /// Standing: smaller joined earlier (admin succession picks the smallest).
    pub joined: i64,
}

impl MemberRecord {
    /// A member who has read nothing and muted nothing.
    pub fn new(user: UserId, role: Role, joined: i64) -> MemberRecord {
        MemberRecord {
            user,
            role,
            last_read: 0,
            muted: false,
            joined,
        }
    }
}

/// A conversation row with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRecord {
    /// The conversation.
    pub id: ConversationId,
    /// Its kind.
    pub kind: ConversationKind,
    /// A group's name.
    pub name: Option<String>,
    /// A business conversation's business.
    pub business: Option<UserId>,
    /// Creation time.
    pub created_at: i64,
    /// The newest committed seq.
    pub last_seq: Seq,
    /// The newest message's time, else `created_at`.
    pub last_activity: i64,
    /// Members by standing.
    pub members: Vec<MemberRecord>,
}

/// A conversation to create. `unique_key` makes direct and business conversations one per pair.
#[derive(Debug, Clone)]
pub struct NewConversation {
    /// The record to store.
    pub record: ConversationRecord,
    /// `direct:<a>:<b>` or `business:<biz>:<customer>`; none for groups.
    pub unique_key: Option<String>,
}

/// A message the core numbered and hands to storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Its seq.
    pub seq: Seq,
    /// Its idempotency key.
    pub mid: Mid,
    /// Whether the client chose `mid` (only those can already be stored).
    pub client_mid: bool,
    /// The sender, or the acting user of a system message.
    pub sender: UserId,
    /// Its kind.
    pub kind: String,
    /// Its body.
    pub body: String,
    /// Its time.
    pub at: i64,
}

impl NewMessage {
    /// The message as clients see it.
    pub fn object(&self, conv: ConversationId) -> MessageObject {
        MessageObject {
            conv,
            seq: self.seq,
            mid: self.mid,
            from: self.sender,
            kind: self.kind.clone(),
            body: Some(self.body.clone()),
            at: self.at,
            deleted_at: None,
        }
    }
}

/// Messages of one conversation, in seq order, committed together.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// The conversation.
    pub conv: ConversationId,
    /// The messages, seq ascending and following the stored `last_seq`.
    pub messages: Vec<NewMessage>,
}

/// A member's read pointer, to move forward to `seq` (never back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadMark {
    /// The conversation.
    pub conv: ConversationId,
    /// The member.
    pub user: UserId,
    /// The newest seq read.
    pub seq: Seq,
}

/// What one commit stored: each batch's outcome, in order, and the read pointers'.
#[derive(Debug)]
pub struct Appended {
    /// Each batch's outcome.
    pub batches: Vec<Result<(), StoreError>>,
    /// The read pointers' outcome (all or none).
    pub marks: Result<(), StoreError>,
}

impl Appended {
    /// A commit that did not happen: each of `batches` and the marks, if there were any,
    /// refused with `why`.
    pub fn refused(batches: usize, marks: &[ReadMark], why: impl Fn() -> StoreError) -> Appended {
        Appended {
            batches: (0..batches).map(|_| Err(why())).collect(),
            marks: if marks.is_empty() { Ok(()) } else { Err(why()) },
        }
    }
}

/// A change of members, committed with its system message in one transaction.
#[derive(Debug, Clone, Default)]
pub struct MembershipChange {
    /// Members who join.
    pub add: Vec<MemberRecord>,
    /// Members who leave or are removed.
    pub remove: Vec<UserId>,
    /// Members whose role changes (admin succession).
    pub roles: Vec<(UserId, Role)>,
    /// The system message that records it.
    pub system: Option<NewMessage>,
}

/// A page request for `history`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HistoryRange {
    /// `seq > after` (and `< before` when given), oldest first.
    After(Seq, Option<Seq>),
    /// The newest with `seq < before`, oldest first.
    Before(Seq),
    /// The newest.
    Newest,
}

/// A page request for the conversation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    /// Only `last_activity < before`.
    pub before: Option<i64>,
    /// Only `last_activity > since`.
    pub since: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// A conversation in a member's list.
#[derive(Debug, Clone)]
pub struct ListedConversation {
    /// The stored conversation.
    pub record: ConversationRecord,
    /// Its newest message.
    pub last_message: Option<MessageObject>,
    /// The caller's unread count.
    pub unread: i64,
}

/// Storage: one trait, two backends.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;
    /// A conversation with its members, if it exists.
    async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError>;
    /// Creates it; when `unique_key` is taken, returns the existing one and `false`.
    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError>;
    /// Commits the batches in one transaction, and moves the read pointers `marks` (as
    /// `set_reads` does) in it too: one commit instead of two. A batch whose client `mid`s are
    /// stored already gets `DuplicateMids` and is left out; the others still commit.
    async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended;
    /// Commits a membership change with its system message.
    async fn change_members(
        &self,
        conv: ConversationId,
        change: &MembershipChange,
    ) -> Result<(), StoreError>;
    /// Moves read pointers forward (never back), in one transaction: each pair of
    /// conversation and member at most once.
    async fn set_reads(&self, marks: &[ReadMark]) -> Result<(), StoreError>;
    /// Sets a member's mute flag.
    async fn set_muted(
        &self,
        conv: ConversationId,
        user: UserId,
        on: bool,
    ) -> Result<(), StoreError>;
    /// A page of history and whether more exist that way.
    async fn history(
        &self,
        conv: ConversationId,
        range: HistoryRange,
        limit: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError>;
    /// A message by its `mid`.
    async fn find_message(&self, mid: Mid) -> Result<Option<MessageObject>, StoreError>;
    /// Soft-deletes a message.
    async fn mark_deleted(&self, mid: Mid, at: i64) -> Result<(), StoreError>;
    /// The newest message and `user`'s unread count given their pointer.
    async fn last_message_and_unread(
        &self,
        conv: ConversationId,
        user: UserId,
        last_read: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError>;
    /// A page of `user`'s conversations by activity, and whether more match.
    async fn list_conversations(
        &self,
        user: UserId,
        query: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError>;
    /// How many business conversations each of `agents` serves.
    async fn agent_loads(&self, agents: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError>;
    /// Which of `ids` are businesses with a conversation here.
    async fn businesses_among(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError>;
    /// Erases the bodies of messages deleted before `audit_cutoff` and removes messages older
    /// than `retention_cutoff` (where the store keeps them by week, a week once all of it is
    /// older). Stops when another node holds the job.
    async fn purge(&self, retention_cutoff: i64, audit_cutoff: i64) -> Result<Purged, StoreError>;
}

/// What one run of the expiry job did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Deleted bodies erased.
    pub erased: u64,
    /// Messages removed one by one.
    pub removed: u64,
    /// Whole partitions dropped (PostgreSQL: a week of messages each).
    pub partitions: u64,
}

/// The batching writer: takes a conversation's batch or a read pointer, calls `done` after its
/// commit (or failure).
pub trait Writer: Send + Sync + 'static {
    /// Queues `batch`; `done` runs on the writer's task once the outcome is known.
    fn submit(&self, batch: AppendBatch, done: Box<dyn FnOnce(Result<(), StoreError>) + Send>);
    /// Queues a read pointer; `done` runs on the writer's task once it is committed (or not).
    fn submit_read(&self, mark: ReadMark, done: Box<dyn FnOnce(Result<(), StoreError>) + Send>);
}

/// A failure of the user service.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// The business is unknown to the user service.
    #[error("unknown business")]
    UnknownBusiness,
    /// The service failed or did not answer in time.
    #[error("user service unavailable: {0}")]
    Unavailable(String),
}

/// Names, avatars and business agents, from the user service.
#[async_trait]
pub trait Profiles: Send + Sync + 'static {
    /// A profile for each id, placeholders for the unknown; never waits long.
    async fn profiles(&self, users: &[UserId], businesses: &[UserId]) -> HashMap<UserId, Profile>;
    /// The agents of a business.
    async fn business_agents(&self, business: UserId) -> Result<Vec<UserId>, ProfilesError>;
    /// Forgets what is cached about `id` (the user service said it changed).
    async fn invalidate(&self, id: UserId);
}

/// Carries messages between the nodes of a cluster (Redis pub/sub), or nothing at all for a single
/// node. Sends never wait: they are queued to the bus's own task. Pub/sub is at most once.
pub trait Bus: Send + Sync + 'static {
    /// Whether other nodes may exist (false: a single node; nothing is ever sent).
    fn is_distributed(&self) -> bool;
    /// Sends `message` to one node.
    fn send(&self, node: &str, message: Bytes);
    /// Sends `message` to every node (the sender gets it too and ignores it).
    fn broadcast(&self, message: Bytes);
    /// Whether the bus carries to `node` now; false while its server (or, on a sharded bus, the
    /// shard that carries `node`'s messages or this node's) is unreachable, so that what needs
    /// that node is answered `unavailable` at once instead of waiting out its deadline.
    fn reaches(&self, node: &str) -> bool {
        let _ = node;
        true
    }
}

/// A node the bus says is alive, and which start of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    /// Its name (`CHAT_NODE_ID`).
    pub id: String,
    /// The number its process drew at start; 0 when not known (a node of an older version).
    pub incarnation: u64,
}

/// What the bus hands the core: every message that arrives from another node, and what it
/// learns of the cluster (who is alive, whether it still carries). A bus adapter holds only this.
pub trait BusInbox: Send + Sync + 'static {
    /// The number this process drew at start, for the bus to carry in its heartbeat.
    fn incarnation(&self) -> u64;
    /// One message from another node, as it was sent.
    fn received(&self, message: &[u8]);
    /// The bus's membership says these nodes are alive now (this one among them).
    fn live_nodes(&self, nodes: Vec<LiveNode>);
    /// The bus lost its connection: messages to and from this node may be lost until
    /// [`BusInbox::regained`].
    fn lost(&self);
    /// The bus carries again after [`BusInbox::lost`].
    fn regained(&self);
    /// Messages to `node` could not be sent (the part of the bus that carries them is down):
    /// what waits for its answers will not hear back.
    fn unreachable(&self, node: &str);
}
