//! The store suite, written once and run against both backends.

use chat_actors::ids::{ConversationId, Mid, UserId};
use chat_actors::ports::{
    AppendBatch, ConversationRecord, HistoryRange, ListQuery, MemberRecord, MembershipChange,
    NewConversation, NewMessage, Purged, ReadMark, Store, StoreError,
};
use chat_actors::protocol::Role;
use chat_backend::store::{self, SqlStore};

use crate::helpers::{Backend, TestDb};

async fn open(backend: Backend) -> (SqlStore, TestDb) {
    let db = TestDb::new(backend).await;
    let s = store::connect(&db.url, 4).await.unwrap();
    (s, db)
}

/// A new direct conversation of `a` and `b`.
fn direct(a: UserId, b: UserId) -> NewConversation {
    let plan = chat_actors::rules::create::direct(a, &[b]).unwrap();
    plan.into_new(ConversationId(uuid::Uuid::now_v7()), 1000)
}

/// A new direct conversation of `sender` with a new user (shared with the partition tests).
pub(crate) async fn direct_conv(store: &dyn Store, sender: UserId) -> ConversationRecord {
    let (record, _) = store
        .create_conversation(direct(sender, UserId::random()))
        .await
        .unwrap();
    record
}

/// `n` direct conversations of `sender`, each with a new user.
async fn direct_convs(store: &dyn Store, sender: UserId, n: usize) -> Vec<ConversationId> {
    let mut convs = Vec::with_capacity(n);
    for _ in 0..n {
        convs.push(direct_conv(store, sender).await.id);
    }
    convs
}

/// Appends `m` alone to `conv` and answers its batch's outcome (shared with the partition tests).
pub(crate) async fn append_one(
    s: &dyn Store,
    conv: ConversationId,
    m: NewMessage,
) -> Result<(), StoreError> {
    let mut r = s
        .append(
            &[AppendBatch {
                conv,
                messages: vec![m],
            }],
            &[],
        )
        .await
        .batches;
    r.pop().unwrap()
}

/// Message `seq` of `sender`, sent at 1000 + seq (shared with the partition tests).
pub(crate) fn msg(seq: i64, sender: UserId, client_mid: bool) -> NewMessage {
    NewMessage {
        seq,
        mid: Mid::random(),
        client_mid,
        sender,
        kind: "text".to_owned(),
        body: format!("m{seq}"),
        at: 1000 + seq,
    }
}

/// Runs a store case on both backends: `case(Backend)` becomes the tests `case::sqlite` and
/// `case::postgres`.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use crate::helpers::Backend;

            #[tokio::test]
            async fn sqlite() {
                super::$case(Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$case(Backend::Postgres).await;
            }
        }
    )*};
}

on_both_backends!(
    one_direct_conversation_per_pair_whoever_creates_it,
    a_batch_commits_moves_last_seq_and_pages_both_ways,
    a_stored_client_mid_leaves_its_whole_batch_out_and_the_other_batches_commit,
    a_seq_taken_by_another_writer_is_refused_for_its_batch_alone,
    read_pointers_only_move_forward_and_unread_counts_only_others_live_messages,
    read_pointers_ride_with_a_commit_and_move_even_when_its_batch_is_refused,
    membership_changes_commit_with_their_system_message,
    the_list_goes_by_activity_with_paging_and_last_messages,
    expiry_erases_deleted_bodies_after_the_audit_and_removes_old_messages,
    writer_commits_concurrently_in_order,
    expiry_clears_a_backlog_in_rounds_and_keeps_deleted_bodies_for_the_audit_period,
);

/// A direct conversation of two new users `a` and `b` holding messages 1..=12 of `a` (the even
/// ones with client mids), sent at 1001..=1012.
async fn with_history(s: &SqlStore) -> (ConversationRecord, Vec<NewMessage>, UserId, UserId) {
    let (a, b) = (UserId::random(), UserId::random());
    let (conv, _) = s.create_conversation(direct(a, b)).await.unwrap();
    let msgs: Vec<NewMessage> = (1..=12).map(|i| msg(i, a, i % 2 == 0)).collect();
    let results = s
        .append(
            &[AppendBatch {
                conv: conv.id,
                messages: msgs.clone(),
            }],
            &[],
        )
        .await
        .batches;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    (conv, msgs, a, b)
}

/// The seqs of `page`.
fn seqs(page: &[chat_actors::protocol::MessageObject]) -> Vec<i64> {
    page.iter().map(|m| m.seq).collect()
}

/// The `last_seq` of `conv` as stored.
async fn last_seq(s: &SqlStore, conv: ConversationId) -> i64 {
    s.load_conversation(conv).await.unwrap().unwrap().last_seq
}

async fn one_direct_conversation_per_pair_whoever_creates_it(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (a, b) = (UserId::random(), UserId::random());
    let (conv, created) = s.create_conversation(direct(a, b)).await.unwrap();
    assert!(created);
    let (again, created) = s.create_conversation(direct(b, a)).await.unwrap();
    assert!(!created);
    assert_eq!(again.id, conv.id);
    assert_eq!(again.members.len(), 2);
    s.close().await;
}

async fn a_batch_commits_moves_last_seq_and_pages_both_ways(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (conv, _, _, _) = with_history(&s).await;
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    assert_eq!((loaded.last_seq, loaded.last_activity), (12, 1012));
    let (page, more) = s.history(conv.id, HistoryRange::Newest, 5).await.unwrap();
    assert_eq!(seqs(&page), vec![8, 9, 10, 11, 12]);
    assert!(more);
    let (page, more) = s
        .history(conv.id, HistoryRange::Before(3), 5)
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![1, 2]);
    assert!(!more);
    let (page, more) = s
        .history(conv.id, HistoryRange::After(9, None), 50)
        .await
        .unwrap();
    assert_eq!(seqs(&page), vec![10, 11, 12]);
    assert!(!more);
    s.close().await;
}

async fn a_stored_client_mid_leaves_its_whole_batch_out_and_the_other_batches_commit(
    backend: Backend,
) {
    let (s, _db) = open(backend).await;
    let (conv, msgs, a, _) = with_history(&s).await;
    let (other, _) = s
        .create_conversation(direct(a, UserId::random()))
        .await
        .unwrap();
    let mut retry = msg(14, a, true);
    retry.mid = msgs[1].mid;
    let results = s
        .append(
            &[
                AppendBatch {
                    conv: conv.id,
                    messages: vec![msg(13, a, true), retry],
                },
                AppendBatch {
                    conv: other.id,
                    messages: vec![msg(1, a, true)],
                },
            ],
            &[],
        )
        .await
        .batches;
    // Reported with where it lives; the fresh message beside it is left out too.
    match &results[0] {
        Err(StoreError::DuplicateMids(hits)) => {
            assert_eq!((hits[0].conv, hits[0].seq, hits[0].sender), (conv.id, 2, a));
        }
        other => panic!("expected DuplicateMids, got {other:?}"),
    }
    assert!(results[1].is_ok());
    assert_eq!(last_seq(&s, conv.id).await, 12);
    let (after, _) = s
        .history(conv.id, HistoryRange::After(12, None), 50)
        .await
        .unwrap();
    assert!(after.is_empty(), "half a batch stored: {after:?}");
    assert_eq!(last_seq(&s, other.id).await, 1);
    s.close().await;
}

async fn a_seq_taken_by_another_writer_is_refused_for_its_batch_alone(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (conv, _, _, b) = with_history(&s).await;
    let taken = || AppendBatch {
        conv: conv.id,
        messages: vec![msg(12, b, false)],
    };
    let results = s.append(&[taken()], &[]).await.batches;
    assert!(
        matches!(results[0], Err(StoreError::SeqTaken)),
        "{:?}",
        results[0]
    );
    // Only that conversation's batch is refused: the others of the commit go in.
    let (d, e) = (UserId::random(), UserId::random());
    let (third, _) = s.create_conversation(direct(d, e)).await.unwrap();
    let fresh = AppendBatch {
        conv: third.id,
        messages: vec![msg(1, d, false)],
    };
    let results = s.append(&[taken(), fresh], &[]).await.batches;
    assert!(
        matches!(results[0], Err(StoreError::SeqTaken)),
        "{:?}",
        results[0]
    );
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert_eq!(last_seq(&s, third.id).await, 1);
    assert_eq!(last_seq(&s, conv.id).await, 12, "stored twice");
    s.close().await;
}

/// The writer hands a commit the read pointers that came meanwhile: they move in its
/// transaction, forward only, and a batch refused for a race (its conversation moved on) does
/// not take them down with it.
async fn read_pointers_ride_with_a_commit_and_move_even_when_its_batch_is_refused(
    backend: Backend,
) {
    let (s, _db) = open(backend).await;
    let (conv, _, a, b) = with_history(&s).await;
    let (other, _, _, d) = with_history(&s).await;
    let read = |r: &ConversationRecord, user| {
        r.members
            .iter()
            .find(|m| m.user == user)
            .map(|m| m.last_read)
    };
    let mark = |conv, user, seq| ReadMark { conv, user, seq };
    let appended = s
        .append(
            &[AppendBatch {
                conv: conv.id,
                messages: vec![msg(13, a, true)],
            }],
            &[mark(conv.id, b, 13), mark(other.id, d, 4)],
        )
        .await;
    assert!(appended.batches[0].is_ok(), "{:?}", appended.batches);
    assert!(appended.marks.is_ok(), "{:?}", appended.marks);
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    assert_eq!((loaded.last_seq, read(&loaded, b)), (13, Some(13)));
    // seq 12 is taken: the batch is refused, the marks (one behind, one ahead) still go
    let appended = s
        .append(
            &[AppendBatch {
                conv: conv.id,
                messages: vec![msg(12, a, false)],
            }],
            &[mark(conv.id, b, 2), mark(other.id, d, 9)],
        )
        .await;
    assert!(
        matches!(appended.batches[0], Err(StoreError::SeqTaken)),
        "{:?}",
        appended.batches
    );
    assert!(appended.marks.is_ok(), "{:?}", appended.marks);
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    assert_eq!(read(&loaded, b), Some(13), "a pointer moved back");
    let loaded_other = s.load_conversation(other.id).await.unwrap().unwrap();
    assert_eq!(read(&loaded_other, d), Some(9));
    // marks alone
    let appended = s.append(&[], &[mark(other.id, d, 11)]).await;
    assert!(appended.batches.is_empty() && appended.marks.is_ok());
    let loaded_other = s.load_conversation(other.id).await.unwrap().unwrap();
    assert_eq!(read(&loaded_other, d), Some(11));
    s.close().await;
}

async fn read_pointers_only_move_forward_and_unread_counts_only_others_live_messages(
    backend: Backend,
) {
    let (s, _db) = open(backend).await;
    let (conv, msgs, a, b) = with_history(&s).await;
    let (other, _, _, d) = with_history(&s).await;
    let mark = |conv, user, seq| ReadMark { conv, user, seq };
    // one statement for several members of several conversations
    s.set_reads(&[
        mark(conv.id, b, 5),
        mark(conv.id, a, 2),
        mark(other.id, d, 7),
    ])
    .await
    .unwrap();
    // a mark behind the stored pointer leaves it; the other moves in the same statement
    s.set_reads(&[mark(conv.id, b, 3), mark(other.id, d, 9)])
        .await
        .unwrap();
    let read =
        |r: &ConversationRecord, user| r.members.iter().find(|m| m.user == user).unwrap().last_read;
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    assert_eq!((read(&loaded, b), read(&loaded, a)), (5, 2));
    let loaded_other = s.load_conversation(other.id).await.unwrap().unwrap();
    assert_eq!(read(&loaded_other, d), 9);
    s.mark_deleted(msgs[11].mid, 5000).await.unwrap();
    let (last, unread) = s.last_message_and_unread(conv.id, b, 5).await.unwrap();
    let last = last.unwrap();
    assert_eq!(
        (last.seq, last.body.clone(), last.deleted_at),
        (12, None, Some(5000))
    );
    assert_eq!(unread, 6, "6..=11: the deleted 12 is not unread");
    let (_, own) = s
        .last_message_and_unread(conv.id, msgs[0].sender, 0)
        .await
        .unwrap();
    assert_eq!(own, 0, "one's own messages are never unread");
    let found = s.find_message(msgs[0].mid).await.unwrap().unwrap();
    assert_eq!(
        (found.conv, found.seq, found.body.as_deref()),
        (conv.id, 1, Some("m1"))
    );
    s.close().await;
}

async fn membership_changes_commit_with_their_system_message(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (conv, _, a, b) = with_history(&s).await;
    let c = UserId::random();
    let change = MembershipChange {
        add: vec![MemberRecord::new(c, Role::Member, 2)],
        remove: vec![a],
        roles: vec![(b, Role::Admin)],
        system: Some(NewMessage {
            kind: "system".to_owned(),
            ..msg(13, a, false)
        }),
    };
    s.change_members(conv.id, &change).await.unwrap();
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    let roles: Vec<(UserId, Role)> = loaded.members.iter().map(|m| (m.user, m.role)).collect();
    assert_eq!(roles, vec![(b, Role::Admin), (c, Role::Member)]);
    assert_eq!(loaded.last_seq, 13);
    let (_, unread) = s.last_message_and_unread(conv.id, b, 5).await.unwrap();
    assert_eq!(unread, 7, "6..=12; a system message is never unread");
    // A second change that follows a seq no longer the last is refused whole.
    let stale = MembershipChange {
        remove: vec![c],
        system: Some(NewMessage {
            kind: "system".to_owned(),
            ..msg(13, b, false)
        }),
        ..MembershipChange::default()
    };
    let refused = s.change_members(conv.id, &stale).await;
    assert!(matches!(refused, Err(StoreError::SeqTaken)), "{refused:?}");
    let loaded = s.load_conversation(conv.id).await.unwrap().unwrap();
    assert_eq!(loaded.members.len(), 2, "half a change stored");
    s.close().await;
}

async fn the_list_goes_by_activity_with_paging_and_last_messages(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (conv, _, a, _) = with_history(&s).await;
    let (other, _) = s
        .create_conversation(direct(a, UserId::random()))
        .await
        .unwrap();
    // One message at 1001, older than the other conversation's newest (1012).
    assert!(append_one(&s, other.id, msg(1, a, true)).await.is_ok());
    let page = |limit, before| ListQuery {
        before,
        since: None,
        limit,
    };
    let (list, more) = s.list_conversations(a, page(10, None)).await.unwrap();
    let ids: Vec<ConversationId> = list.iter().map(|l| l.record.id).collect();
    assert_eq!(ids, vec![conv.id, other.id]);
    assert!(!more);
    let (list, more) = s.list_conversations(a, page(1, None)).await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(more);
    assert_eq!(list[0].record.id, conv.id);
    assert_eq!(list[0].last_message.as_ref().map(|m| m.seq), Some(12));
    assert_eq!(list[0].unread, 0, "all of it is a's own");
    let (list, more) = s
        .list_conversations(a, page(1, Some(list[0].record.last_activity)))
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert!(!more);
    assert_eq!(list[0].record.id, other.id);
    assert_eq!(list[0].last_message.as_ref().map(|m| m.seq), Some(1));
    s.close().await;
}

async fn expiry_erases_deleted_bodies_after_the_audit_and_removes_old_messages(backend: Backend) {
    let (s, _db) = open(backend).await;
    let (conv, msgs, _, _) = with_history(&s).await;
    s.mark_deleted(msgs[11].mid, 5000).await.unwrap();
    // Messages sent before 1003 are past retention; the deletion at 5000 is past its audit.
    let done = s.purge(1003, 6000).await.unwrap();
    assert_eq!((done.erased, done.removed), (1, 2));
    let (page, _) = s
        .history(conv.id, HistoryRange::After(0, None), 200)
        .await
        .unwrap();
    assert_eq!(page.first().map(|m| m.seq), Some(3));
    s.close().await;
}

/// The batching writer with the store's own commit concurrency: many conversations' batches
/// in flight together land in order, a flush returns only after every earlier batch is
/// answered, and a batch whose client mid is stored is answered with it and not written.
async fn writer_commits_concurrently_in_order(backend: Backend) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chat_actors::ports::Writer;
    use chat_backend::store::writer::BatchingWriter;

    let (s, _db) = open(backend).await;
    let store: Arc<dyn Store> = Arc::new(s.clone());
    let (writer, task) = BatchingWriter::start(
        store.clone(),
        s.write_concurrency(),
        std::time::Duration::from_millis(4),
    );
    let sender = UserId::random();
    let convs = direct_convs(store.as_ref(), sender, 40).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let rounds = 5;
    for round in 0..rounds {
        for conv in &convs {
            let messages = (1..=3).map(|k| msg(round * 3 + k, sender, false)).collect();
            let (answered, failed) = (answered.clone(), failed.clone());
            writer.submit(
                AppendBatch {
                    conv: *conv,
                    messages,
                },
                Box::new(move |r| {
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }
        // One batch per conversation at a time, as the conversation actors do.
        writer.flush().await;
        assert_eq!(
            answered.load(Ordering::SeqCst),
            convs.len() * (round as usize + 1),
            "a flush returned before the batches before it were answered"
        );
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    for conv in &convs {
        let record = store.load_conversation(*conv).await.unwrap().unwrap();
        assert_eq!(record.last_seq, rounds * 3);
    }

    // A retried client mid: its batch is answered with the stored result, nothing is written.
    let first = msg(rounds * 3 + 1, sender, true);
    let mut retry = first.clone();
    retry.seq += 1;
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer.submit(
        AppendBatch {
            conv: convs[0],
            messages: vec![first],
        },
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    assert!(rx.await.unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    writer.submit(
        AppendBatch {
            conv: convs[0],
            messages: vec![retry],
        },
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    match rx.await.unwrap() {
        Err(StoreError::DuplicateMids(hits)) => assert_eq!(hits[0].seq, rounds * 3 + 1),
        other => panic!("expected the stored mid, got {other:?}"),
    }

    // Read pointers through their lane: a burst of marks, some for one member twice and one
    // behind, all answered, each member's newest kept; a flush waits for them too.
    let mut readers = Vec::new();
    for conv in &convs {
        let r = store.load_conversation(*conv).await.unwrap().unwrap();
        let reader = r.members.iter().find(|m| m.user != sender).unwrap().user;
        readers.push((*conv, reader));
    }
    let marked = Arc::new(AtomicUsize::new(0));
    for (k, (conv, user)) in readers.iter().enumerate() {
        for seq in [(k % 5) as i64 + 3, 2, (k % 5) as i64 + 5] {
            let (marked, failed) = (marked.clone(), failed.clone());
            let mark = ReadMark {
                conv: *conv,
                user: *user,
                seq,
            };
            writer.submit_read(
                mark,
                Box::new(move |r| {
                    if r.is_err() {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    marked.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }
    }
    writer.flush().await;
    assert_eq!(marked.load(Ordering::SeqCst), readers.len() * 3);
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    for (k, (conv, user)) in readers.iter().enumerate() {
        let record = store.load_conversation(*conv).await.unwrap().unwrap();
        let m = record.members.iter().find(|m| m.user == *user).unwrap();
        assert_eq!(m.last_read, (k % 5) as i64 + 5);
    }
    drop(writer);
    task.await.unwrap();
}

/// A trickle of batches that closely follow a commit waits out the writer's window and goes
/// in one later commit, instead of each committing the moment it comes (a commit per message
/// is what made a quiet PostgreSQL burn the most CPU per message).
#[tokio::test]
async fn batches_that_follow_a_commit_closely_wait_for_the_commit_window() {
    use std::sync::Arc;
    use std::time::Duration;

    use chat_actors::ports::Writer;
    use chat_backend::store::writer::BatchingWriter;

    let window = Duration::from_millis(150);
    let (s, _db) = open(Backend::Postgres).await;
    let store: Arc<dyn Store> = Arc::new(s.clone());
    let (writer, task) = BatchingWriter::start(store.clone(), s.write_concurrency(), window);
    let sender = UserId::random();
    let convs = direct_convs(store.as_ref(), sender, 6).await;
    let gap = Duration::from_millis(10);
    trickle_waits_out(&writer, &convs, gap, window, |conv, done| {
        let messages = vec![msg(1, sender, false)];
        writer.submit(AppendBatch { conv, messages }, done);
    })
    .await;
    drop(writer);
    task.await.unwrap();
}

/// Submits a job for each of `convs` through `submit`, the first after a quiet spell and the
/// others `gap` apart, and checks each but the first was answered `window` or more after the
/// first went: they waited out the window behind the first commit, to go together.
async fn trickle_waits_out(
    writer: &chat_backend::store::writer::BatchingWriter,
    convs: &[ConversationId],
    gap: std::time::Duration,
    window: std::time::Duration,
    submit: impl Fn(ConversationId, Box<dyn FnOnce(Result<(), StoreError>) + Send>),
) {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let answered: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let done = || -> Box<dyn FnOnce(Result<(), StoreError>) + Send> {
        let answered = answered.clone();
        Box::new(move |r| {
            assert!(r.is_ok(), "{r:?}");
            answered.lock().unwrap().push(Instant::now());
        })
    };
    let first_commit = Instant::now();
    submit(convs[0], done());
    for conv in &convs[1..] {
        tokio::time::sleep(gap).await;
        submit(*conv, done());
    }
    writer.flush().await;
    let answered = answered.lock().unwrap().clone();
    assert_eq!(answered.len(), convs.len());
    for at in &answered[1..] {
        assert!(
            at.duration_since(first_commit) >= window,
            "a job committed {:?} after the first commit started, inside the {window:?} window",
            at.duration_since(first_commit)
        );
    }
}

/// The expiry job on a backlog bigger than one of its rounds: every message past retention goes,
/// in rounds; a deleted body stays in the table (hidden) through the audit period and is erased
/// after it; the conversation keeps numbering where it was.
async fn expiry_clears_a_backlog_in_rounds_and_keeps_deleted_bodies_for_the_audit_period(
    backend: Backend,
) {
    let (s, db) = open(backend).await;
    let sender = UserId::random();
    let conv = direct_conv(&s, sender).await;
    // 2,500 old messages (at 1001..=3500), then 3 recent ones (at 10,001..).
    let old: Vec<NewMessage> = (1..=2500).map(|seq| msg(seq, sender, false)).collect();
    let recent: Vec<NewMessage> = (2501..=2503)
        .map(|seq| NewMessage {
            at: 10_000 + seq - 2500,
            ..msg(seq, sender, false)
        })
        .collect();
    for messages in [old, recent.clone()] {
        let r = s
            .append(
                &[AppendBatch {
                    conv: conv.id,
                    messages,
                }],
                &[],
            )
            .await
            .batches;
        assert!(r.iter().all(Result::is_ok), "{r:?}");
    }
    // Two recent messages deleted: one long ago (past the audit period), one lately.
    s.mark_deleted(recent[0].mid, 11_000).await.unwrap();
    s.mark_deleted(recent[1].mid, 19_000).await.unwrap();

    let done = s.purge(5_000, 15_000).await.unwrap();
    assert_eq!((done.erased, done.removed), (1, 2500));
    // What is left: the three recent messages, seq continuing.
    let (page, more) = s
        .history(conv.id, HistoryRange::After(0, None), 200)
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [2501, 2502, 2503]
    );
    assert!(!more);
    assert_eq!(
        s.load_conversation(conv.id)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        2503
    );
    // The raw table: the body deleted long ago is gone, the one deleted lately is kept for
    // audit (clients see neither).
    let bodies: Vec<(i64, Option<String>)> = match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT seq, body FROM messages ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query_as("SELECT seq, body FROM messages ORDER BY seq")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        bodies,
        [
            (2501, None),
            (2502, Some("m2502".to_owned())),
            (2503, Some("m2503".to_owned()))
        ]
    );
    assert!(page[1].body.is_none(), "a deleted body reached a client");
    // A second run finds nothing more to do.
    assert_eq!(s.purge(5_000, 15_000).await.unwrap(), Purged::default());
    s.close().await;
}

/// The commit is one statement over arrays, which PostgreSQL would otherwise plan again for
/// every commit (a custom plan knows the arrays' lengths, so it looks cheaper): the writer's
/// connections plan it once, generically, however many commits go through them.
#[tokio::test]
async fn commits_on_postgres_reuse_one_generic_plan() {
    let db = TestDb::new(Backend::Postgres).await;
    let (requests, commits) = store::postgres::connect(&db.url, 4).await.unwrap();
    store::connect(&db.url, 4).await.unwrap(); // migrated, partitions made
    let s = SqlStore::postgres(requests).with_commit_pool(commits.clone());
    let sender = UserId::random();
    let conv = direct_conv(&s, sender).await;
    for seq in 1..=12 {
        append_one(&s, conv.id, msg(seq, sender, true))
            .await
            .unwrap();
    }
    // Each connection knows its own prepared statements: ask every connection of the pool.
    let mut conns = Vec::new();
    let (mut generic, mut custom) = (0i64, 0i64);
    for _ in 0..store::postgres::COMMIT_CONNECTIONS {
        let mut conn = commits.acquire().await.unwrap();
        let (g, c): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT sum(generic_plans)::int8, sum(custom_plans)::int8 \
             FROM pg_prepared_statements WHERE statement LIKE 'WITH hits AS%'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        generic += g.unwrap_or(0);
        custom += c.unwrap_or(0);
        conns.push(conn);
    }
    assert_eq!(custom, 0, "no commit was planned for its own parameters");
    assert!(generic >= 12, "{generic} generic executions for 12 commits");
}

#[tokio::test]
async fn sqlite_acknowledges_only_what_is_on_disk_unless_the_operator_chose_normal() {
    use chat_backend::store::sqlite::{Durability, connect};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("chat.db").display());
    // PRAGMA synchronous: 1 is NORMAL, 2 is FULL (the WAL fsynced at every commit).
    for (durability, expected) in [
        (Durability::default(), 2),
        (Durability::Full, 2),
        (Durability::Normal, 1),
    ] {
        let pool = connect(&url, durability).await.unwrap();
        let level: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(level, expected, "{durability:?}");
        pool.close().await;
    }
    assert_eq!(Durability::parse("FULL"), Some(Durability::Full));
    assert_eq!(Durability::parse("off"), None);
}

/// Read pointers with no messages to ride with wait out the reads' window and move together in
/// one later statement, instead of one transaction each (what each `read` cost PostgreSQL
/// before: a transaction and a WAL flush).
#[tokio::test]
async fn read_marks_that_follow_a_commit_closely_wait_for_the_reads_window() {
    use std::sync::Arc;
    use std::time::Duration;

    use chat_actors::ports::Writer;
    use chat_backend::store::writer::{BatchingWriter, READS_WINDOW};

    let (s, _db) = open(Backend::Postgres).await;
    let store: Arc<dyn Store> = Arc::new(s.clone());
    let (writer, task) =
        BatchingWriter::start(store.clone(), s.write_concurrency(), Duration::ZERO);
    let sender = UserId::random();
    let convs = direct_convs(store.as_ref(), sender, 6).await;
    let gap = Duration::from_millis(2);
    trickle_waits_out(&writer, &convs, gap, READS_WINDOW, |conv, done| {
        let seq = 1;
        writer.submit_read(
            ReadMark {
                conv,
                user: sender,
                seq,
            },
            done,
        );
    })
    .await;
    drop(writer);
    task.await.unwrap();
}

/// A read pointer that comes while a commit of messages waits for its window goes in that
/// commit's transaction: the member's row and the conversation's the commit moved carry one
/// transaction id (`xmin`).
#[tokio::test]
async fn a_read_mark_rides_in_the_next_commit_of_messages() {
    use std::sync::Arc;
    use std::time::Duration;

    use chat_actors::ports::Writer;
    use chat_backend::store::writer::{BatchingWriter, READS_WINDOW};
    use tokio::sync::oneshot;

    // Shorter than the reads' window: the second batch starts before the mark would go alone.
    let window = READS_WINDOW * 3 / 4;
    let (s, db) = open(Backend::Postgres).await;
    let store: Arc<dyn Store> = Arc::new(s.clone());
    let (writer, task) = BatchingWriter::start(store.clone(), s.write_concurrency(), window);
    let (sender, reader) = (UserId::random(), UserId::random());
    let (read_conv, _) = s.create_conversation(direct(reader, sender)).await.unwrap();
    let convs = direct_convs(store.as_ref(), sender, 2).await;
    let answered = |tx: oneshot::Sender<Result<(), StoreError>>| -> Box<dyn FnOnce(Result<(), StoreError>) + Send> {
        Box::new(move |r| {
            let _ = tx.send(r);
        })
    };
    // The first batch commits at once and opens the window; the mark and the second batch
    // come inside it, and the batch goes when it closes, before the mark's time.
    let (first_tx, first) = oneshot::channel();
    let batch = |conv| AppendBatch {
        conv,
        messages: vec![msg(1, sender, true)],
    };
    writer.submit(batch(convs[0]), answered(first_tx));
    first.await.unwrap().unwrap();
    let (mark_tx, marked) = oneshot::channel();
    writer.submit_read(
        ReadMark {
            conv: read_conv.id,
            user: reader,
            seq: 1,
        },
        answered(mark_tx),
    );
    // The writer takes the mark in before the batch comes.
    tokio::time::sleep(Duration::from_millis(2)).await;
    let (second_tx, second) = oneshot::channel();
    writer.submit(batch(convs[1]), answered(second_tx));
    for r in [marked.await, second.await] {
        r.unwrap().unwrap();
    }
    drop(writer);
    task.await.unwrap();

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let xmin_member: String =
        sqlx::query_scalar("SELECT xmin::text FROM members WHERE conv_id = $1 AND user_id = $2")
            .bind(read_conv.id.0)
            .bind(reader.0)
            .fetch_one(&pool)
            .await
            .unwrap();
    let xmin = |conv: ConversationId| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT xmin::text FROM conversations WHERE id = $1")
                .bind(conv.0)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_ne!(xmin(convs[0]).await, xmin(convs[1]).await, "one commit");
    assert_eq!(
        xmin_member,
        xmin(convs[1]).await,
        "the mark went in a transaction of its own"
    );
    pool.close().await;
}
