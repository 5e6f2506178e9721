//! The conversation actor against an in-memory store that keeps the database's two guards of
//! order (a seq is stored once per conversation, a mid once overall), for the paths a real
//! database reaches only in a race: a batch renumbered after a duplicate mid, a reload after
//! another owner took our seq.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ractor::{Actor, ActorId, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use super::resting::Resting;
use super::{
    ConversationActor, ConversationDeps, ConversationMessage, ConversationReply,
    ConversationRequest, Reply, SendRequest, Sent, Timing,
};
use crate::delivery::Delivery;
use crate::directory::Directory;
use crate::ids::{ConversationId, Mid, Seq, UserId};
use crate::ports::{
    AppendBatch, Appended, Bus, ConversationRecord, ExistingMid, HistoryRange, ListQuery,
    ListedConversation, MemberRecord, MembershipChange, NewConversation, NewMessage, Profiles,
    ProfilesError, Purged, ReadMark, Store, StoreError, Writer,
};
use crate::protocol::{ConversationKind, ErrorCode, MessageObject, Profile, Rejection, Role};
use crate::rules::Limits;

/// What the fake database holds.
#[derive(Default)]
struct Tables {
    conversations: HashMap<ConversationId, ConversationRecord>,
    messages: Vec<(ConversationId, NewMessage)>,
}

/// An in-memory store: appends obey the unique `(conversation, seq)` and `mid` of the real one.
#[derive(Default)]
struct MemoryStore {
    tables: Mutex<Tables>,
    /// Conversations loaded so far.
    loads: AtomicUsize,
}

impl MemoryStore {
    /// Stores `message` as another writer would, behind the actor's back.
    fn store_directly(&self, conv: ConversationId, message: NewMessage) {
        let mut t = self.tables.lock().unwrap();
        if let Some(c) = t.conversations.get_mut(&conv) {
            c.last_seq = c.last_seq.max(message.seq);
        }
        t.messages.push((conv, message));
    }

    fn seqs(&self, conv: ConversationId) -> Vec<Seq> {
        let t = self.tables.lock().unwrap();
        let mut seqs: Vec<Seq> = t
            .messages
            .iter()
            .filter(|(c, _)| *c == conv)
            .map(|(_, m)| m.seq)
            .collect();
        seqs.sort();
        seqs
    }

    fn append_one(t: &mut Tables, batch: &AppendBatch) -> Result<(), StoreError> {
        let hits: Vec<ExistingMid> = t
            .messages
            .iter()
            .filter(|(_, stored)| batch.messages.iter().any(|m| m.mid == stored.mid))
            .map(|(conv, m)| ExistingMid {
                mid: m.mid,
                conv: *conv,
                sender: m.sender,
                seq: m.seq,
                at: m.at,
            })
            .collect();
        if !hits.is_empty() {
            return Err(StoreError::DuplicateMids(hits));
        }
        let taken = t.messages.iter().any(|(conv, stored)| {
            *conv == batch.conv && batch.messages.iter().any(|m| m.seq == stored.seq)
        });
        if taken {
            return Err(StoreError::SeqTaken);
        }
        for m in &batch.messages {
            t.messages.push((batch.conv, m.clone()));
        }
        if let (Some(c), Some(last)) = (t.conversations.get_mut(&batch.conv), batch.messages.last())
        {
            c.last_seq = last.seq;
            c.last_activity = last.at;
        }
        Ok(())
    }
}

fn not_here() -> StoreError {
    StoreError::Unavailable("not in the memory store".into())
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn load_conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        Ok(self.tables.lock().unwrap().conversations.get(&id).cloned())
    }
    async fn create_conversation(
        &self,
        new: NewConversation,
    ) -> Result<(ConversationRecord, bool), StoreError> {
        let mut t = self.tables.lock().unwrap();
        t.conversations.insert(new.record.id, new.record.clone());
        Ok((new.record, true))
    }
    async fn append(&self, batches: &[AppendBatch], marks: &[ReadMark]) -> Appended {
        let mut t = self.tables.lock().unwrap();
        Appended {
            batches: batches
                .iter()
                .map(|b| Self::append_one(&mut t, b))
                .collect(),
            marks: Appended::refused(0, marks, not_here).marks,
        }
    }
    async fn change_members(
        &self,
        _: ConversationId,
        _: &MembershipChange,
    ) -> Result<(), StoreError> {
        Err(not_here())
    }
    async fn set_reads(&self, _: &[ReadMark]) -> Result<(), StoreError> {
        Err(not_here())
    }
    async fn set_muted(&self, _: ConversationId, _: UserId, _: bool) -> Result<(), StoreError> {
        Err(not_here())
    }
    async fn history(
        &self,
        _: ConversationId,
        _: HistoryRange,
        _: usize,
    ) -> Result<(Vec<MessageObject>, bool), StoreError> {
        Err(not_here())
    }
    async fn find_message(&self, _: Mid) -> Result<Option<MessageObject>, StoreError> {
        Err(not_here())
    }
    async fn mark_deleted(&self, _: Mid, _: i64) -> Result<(), StoreError> {
        Err(not_here())
    }
    async fn last_message_and_unread(
        &self,
        _: ConversationId,
        _: UserId,
        _: Seq,
    ) -> Result<(Option<MessageObject>, i64), StoreError> {
        Err(not_here())
    }
    async fn list_conversations(
        &self,
        _: UserId,
        _: ListQuery,
    ) -> Result<(Vec<ListedConversation>, bool), StoreError> {
        Err(not_here())
    }
    async fn agent_loads(&self, _: &[UserId]) -> Result<HashMap<UserId, i64>, StoreError> {
        Err(not_here())
    }
    async fn purge(&self, _: i64, _: i64) -> Result<Purged, StoreError> {
        Err(not_here())
    }
    async fn businesses_among(&self, _: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        Err(not_here())
    }
}

/// What the writer calls with a batch's outcome.
type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A writer that holds each batch until the test lets it go, so several sends gather into one
/// batch as they do under load.
struct HeldWriter {
    store: Arc<MemoryStore>,
    held: Mutex<Vec<(AppendBatch, Done)>>,
}

impl HeldWriter {
    /// Commits everything held so far.
    fn release(&self) -> usize {
        let held: Vec<_> = std::mem::take(&mut *self.held.lock().unwrap());
        let n = held.len();
        for (batch, done) in held {
            let outcome = {
                let mut t = self.store.tables.lock().unwrap();
                MemoryStore::append_one(&mut t, &batch)
            };
            done(outcome);
        }
        n
    }
}

impl Writer for HeldWriter {
    fn submit(&self, batch: AppendBatch, done: Done) {
        self.held.lock().unwrap().push((batch, done));
    }
    fn submit_read(&self, _: ReadMark, done: Done) {
        done(Err(not_here()));
    }
}

struct NoBus;
impl Bus for NoBus {
    fn is_distributed(&self) -> bool {
        false
    }
    fn send(&self, _: &str, _: bytes::Bytes) {}
    fn broadcast(&self, _: bytes::Bytes) {}
}

struct NoProfiles;
#[async_trait]
impl Profiles for NoProfiles {
    async fn profiles(&self, _: &[UserId], _: &[UserId]) -> HashMap<UserId, Profile> {
        HashMap::new()
    }
    async fn business_agents(&self, _: UserId) -> Result<Vec<UserId>, ProfilesError> {
        Err(ProfilesError::UnknownBusiness)
    }
    async fn invalidate(&self, _: UserId) {}
}

struct NoDirectory;
impl Directory<ConversationId> for NoDirectory {
    fn leave(&self, _: &ConversationId, _: ActorId) {}
}

/// A live conversation actor of two members over a memory store and a held writer.
struct Harness {
    store: Arc<MemoryStore>,
    writer: Arc<HeldWriter>,
    deps: Arc<ConversationDeps>,
    actor: ActorRef<ConversationMessage>,
    conv: ConversationId,
    alice: UserId,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with(Timing::default()).await
    }

    /// With the clock's waits shortened.
    async fn start_with(timing: Timing) -> Harness {
        let store = Arc::new(MemoryStore::default());
        let (alice, bob) = (UserId::random(), UserId::random());
        let record = direct_record(alice, bob);
        let conv = record.id;
        store
            .tables
            .lock()
            .unwrap()
            .conversations
            .insert(conv, record);
        let writer = Arc::new(HeldWriter {
            store: store.clone(),
            held: Mutex::new(Vec::new()),
        });
        let deps = Arc::new(memory_deps(store.clone(), writer.clone(), timing));
        let (actor, _) = Actor::spawn(None, ConversationActor { deps: deps.clone() }, conv)
            .await
            .unwrap();
        Harness {
            store,
            writer,
            deps,
            actor,
            conv,
            alice,
        }
    }

    /// Starts the conversation's actor again (after it stopped), on the same node.
    async fn restart(&mut self) {
        let deps = self.deps.clone();
        let (actor, _) = Actor::spawn(None, ConversationActor { deps }, self.conv)
            .await
            .unwrap();
        self.actor = actor;
    }

    /// Sends as alice with a client mid; the answer comes later.
    fn send(&self, mid: Mid) -> oneshot::Receiver<Result<ConversationReply, Rejection>> {
        self.send_as(self.alice, mid)
    }

    /// Sends as `sender` with a client mid; the answer comes later.
    fn send_as(
        &self,
        sender: UserId,
        mid: Mid,
    ) -> oneshot::Receiver<Result<ConversationReply, Rejection>> {
        let (tx, rx) = oneshot::channel();
        let request = ConversationRequest::Send(SendRequest {
            sender,
            session: None,
            mid,
            client_mid: true,
            kind: "text".to_owned(),
            body: "hi".to_owned(),
        });
        let msg =
            ConversationMessage::Request(Box::new(request), Reply::to(RpcReplyPort::from(tx)));
        self.actor.cast(msg).unwrap();
        rx
    }

    /// Asks for the conversation as alice sees it (a look: the fake store has no unread counts,
    /// so the answer is a refusal, which is all the same to the conversation's clock).
    async fn look(&self) {
        let (tx, rx) = oneshot::channel();
        let request = ConversationRequest::Get { user: self.alice };
        let msg =
            ConversationMessage::Request(Box::new(request), Reply::to(RpcReplyPort::from(tx)));
        self.actor.cast(msg).unwrap();
        let _ = rx.await;
    }

    /// Lets the writer commit until nothing is submitted any more.
    async fn settle(&self) {
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            self.writer.release();
        }
    }
}

/// A direct conversation of `alice` and `bob` without messages yet.
fn direct_record(alice: UserId, bob: UserId) -> ConversationRecord {
    let member = |user, joined| MemberRecord::new(user, Role::Member, joined);
    ConversationRecord {
        id: ConversationId::random(),
        kind: ConversationKind::Direct,
        name: None,
        business: None,
        created_at: 1,
        last_seq: 0,
        last_activity: 1,
        members: vec![member(alice, 0), member(bob, 1)],
    }
}

/// What a conversation actor shares, over the memory store and a held writer, alone on its node.
fn memory_deps(
    store: Arc<MemoryStore>,
    writer: Arc<HeldWriter>,
    timing: Timing,
) -> ConversationDeps {
    ConversationDeps {
        store,
        writer,
        delivery: Arc::new(Delivery::new(Arc::new(NoBus), "test".to_owned())),
        profiles: Arc::new(NoProfiles),
        limits: Limits::default(),
        timing,
        directory: Arc::new(NoDirectory),
        resting: Resting::new(Duration::from_secs(60)),
        tasks: tokio_util::task::TaskTracker::new(),
    }
}

/// The `Sent` of an answer, or why there is none.
async fn sent(
    rx: oneshot::Receiver<Result<ConversationReply, Rejection>>,
) -> Result<Sent, Rejection> {
    match rx.await.unwrap()? {
        ConversationReply::Sent(sent) => Ok(sent),
        other => panic!("a send answered {other:?}"),
    }
}

fn stored(seq: Seq, mid: Mid, sender: UserId) -> NewMessage {
    NewMessage {
        seq,
        mid,
        client_mid: true,
        sender,
        kind: "text".to_owned(),
        body: "elsewhere".to_owned(),
        at: 2,
    }
}

#[tokio::test]
async fn a_batch_with_a_clashing_mid_is_renumbered_without_a_gap() {
    let h = Harness::start().await;
    // A mid alice already used in another conversation: that send is a conflict.
    let clash = Mid::random();
    h.store
        .store_directly(ConversationId::random(), stored(1, clash, h.alice));
    let first = h.send(Mid::random());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The first send is at the writer; these two queue and go as one batch after it.
    let clashing = h.send(clash);
    let after = h.send(Mid::random());
    h.settle().await;
    assert_eq!(sent(first).await.unwrap().seq, 1);
    assert_eq!(sent(clashing).await.unwrap_err().code, ErrorCode::Conflict);
    // Numbered 3 in the refused batch; renumbered 2, so the conversation has no gap.
    assert_eq!(sent(after).await.unwrap().seq, 2);
    assert_eq!(h.store.seqs(h.conv), vec![1, 2]);
}

#[tokio::test]
async fn a_retried_mid_answers_the_stored_result_and_stores_nothing() {
    let h = Harness::start().await;
    let mid = Mid::random();
    let first = h.send(mid);
    h.settle().await;
    let first = sent(first).await.unwrap();
    assert!(first.created);
    let again = h.send(mid);
    h.settle().await;
    let again = sent(again).await.unwrap();
    assert_eq!(
        (again.seq, again.at, again.created),
        (first.seq, first.at, false)
    );
    assert_eq!(h.store.seqs(h.conv), vec![1]);
}

#[tokio::test]
async fn a_seq_taken_by_another_owner_reloads_and_retries_instead_of_failing() {
    let h = Harness::start().await;
    // Another node wrote seq 1 after this actor loaded the conversation at last_seq 0.
    h.store
        .store_directly(h.conv, stored(1, Mid::random(), UserId::random()));
    let mine = h.send(Mid::random());
    h.settle().await;
    assert_eq!(sent(mine).await.unwrap().seq, 2);
    assert_eq!(h.store.seqs(h.conv), vec![1, 2]);
}

/// The clock's waits, shortened for the tests of the clock.
fn quick() -> Timing {
    Timing {
        least_look: Duration::from_millis(20),
        idle_after: Duration::from_millis(3000),
        glance_after: Duration::from_millis(500),
        request_deadline: Duration::from_millis(300),
    }
}

/// The clock looks only when something falls due: a conversation in use stays, and stops once
/// it has been idle for `idle_after` after its last use (not its first).
#[tokio::test]
async fn a_conversation_stops_idle_after_its_last_use() {
    use ractor::ActorStatus;
    let h = Harness::start_with(quick()).await;
    let first = h.send(Mid::random());
    h.settle().await;
    sent(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = h.send(Mid::random());
    h.settle().await;
    sent(again).await.unwrap();
    // Past `idle_after` since the first use, not since the last.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.actor.get_status(), ActorStatus::Running);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(h.actor.get_status(), ActorStatus::Stopped);
}

/// Waits until the harness's actor has stopped idle (at most five seconds).
async fn stopped(h: &Harness) {
    for _ in 0..500 {
        if h.actor.get_status() == ractor::ActorStatus::Stopped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the conversation did not stop idle");
}

/// A conversation whose actor stopped idle starts again from the record it left, without a
/// load, and numbers on from where it stopped.
#[tokio::test]
async fn a_conversation_at_rest_starts_again_without_a_load() {
    let mut h = Harness::start_with(quick()).await;
    let first = h.send(Mid::random());
    h.settle().await;
    assert_eq!(sent(first).await.unwrap().seq, 1);
    stopped(&h).await;
    h.restart().await;
    let again = h.send(Mid::random());
    h.settle().await;
    assert_eq!(sent(again).await.unwrap().seq, 2);
    assert_eq!(h.store.loads.load(Ordering::Relaxed), 1);
    assert_eq!(h.store.seqs(h.conv), vec![1, 2]);
}

/// What rests from before a new epoch (the live set changed: the conversation may have had
/// another owner meanwhile) is not used: a member that other owner added can send at once.
#[tokio::test]
async fn a_new_epoch_loads_what_another_owner_changed_meanwhile() {
    let mut h = Harness::start_with(quick()).await;
    let first = h.send(Mid::random());
    h.settle().await;
    sent(first).await.unwrap();
    stopped(&h).await;
    let carol = UserId::random();
    {
        let mut t = h.store.tables.lock().unwrap();
        let c = t.conversations.get_mut(&h.conv).unwrap();
        c.members.push(MemberRecord::new(carol, Role::Member, 5));
    }
    h.deps.resting.forget_all();
    h.restart().await;
    let hers = h.send_as(carol, Mid::random());
    h.settle().await;
    assert_eq!(sent(hers).await.unwrap().seq, 2);
    assert_eq!(h.store.loads.load(Ordering::Relaxed), 2);
}

/// A conversation only looked at (a page, the object, its creation's push) stops a glance after;
/// one in use stays `idle_after` after its last use, looks since or not.
#[tokio::test]
async fn a_conversation_only_looked_at_stops_sooner_than_one_in_use() {
    use ractor::ActorStatus;
    let looked_at = Harness::start_with(quick()).await;
    looked_at.look().await;
    let in_use = Harness::start_with(quick()).await;
    let first = in_use.send(Mid::random());
    in_use.settle().await;
    sent(first).await.unwrap();
    in_use.look().await;
    // Past the glance (500 ms) and the clock's least look, well short of `idle_after`.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(looked_at.actor.get_status(), ActorStatus::Stopped);
    assert_eq!(in_use.actor.get_status(), ActorStatus::Running);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(in_use.actor.get_status(), ActorStatus::Stopped);
}

/// Work queued behind a commit that never comes back is answered `unavailable` by its deadline.
#[tokio::test]
async fn queued_sends_are_answered_by_their_deadline_while_the_store_hangs() {
    let h = Harness::start_with(quick()).await;
    // The first send goes to the writer, which holds it for good; the second queues behind it.
    let _held = h.send(Mid::random());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let queued = h.send(Mid::random());
    let answer = tokio::time::timeout(Duration::from_secs(1), sent(queued))
        .await
        .expect("answered by the deadline");
    assert_eq!(answer.unwrap_err().code, ErrorCode::Unavailable);
}

/// A conversation without messages is pushed to each member without asking the store for
/// their newest message and unread count (it has none), so a burst of creations that uses up
/// the node's reads loses no push. (The memory store refuses that read.)
#[tokio::test]
async fn a_new_conversation_is_pushed_to_its_members_without_a_read() {
    use crate::delivery::outbound::Outbound;
    use crate::ids::SessionId;

    let store = Arc::new(MemoryStore::default());
    let writer = Arc::new(HeldWriter {
        store: store.clone(),
        held: Mutex::new(Vec::new()),
    });
    let deps = memory_deps(store, writer, Timing::default());
    let (alice, bob) = (UserId::random(), UserId::random());
    let (outbound, mut pushed) = Outbound::new(
        bob,
        SessionId::random(),
        8,
        tokio_util::sync::CancellationToken::new(),
    );
    deps.delivery.attach(outbound);
    let record = direct_record(alice, bob);
    deps.push_conversation(&record, None).await;
    let frame = pushed
        .try_recv()
        .expect("bob was told of the new conversation");
    let json = frame.bytes(crate::protocol::encode::Format::Json);
    let text = String::from_utf8_lossy(&json);
    assert!(text.contains("\"t\":\"conversation\""), "{text}");
    assert!(text.contains("\"unread\":0"), "{text}");
}
