//! Sends: number, hand to the writer, and after the commit answer `sent` and fan out.
//!
//! One batch of a conversation is at the writer at a time. Seqs are given when a batch is
//! submitted, so a batch that fails can be renumbered without a gap: nothing uncommitted was ever
//! acknowledged.

use std::collections::VecDeque;

use ractor::ActorRef;
use tokio::time::Instant;

use super::live::{
    ConversationActor, ConversationMessage, InFlight, Live, PendingSend, Work, answer_send, shared,
};
use super::request::{Reply, SendRequest};
use super::request::{Sent, mid_clash, store_rejection};
use super::state::{self, Committed, Retry};
use crate::clock::now_ms;
use crate::delivery::wire::Target;
use crate::ids::{ConversationId, Mid, SessionId, UserId};
use crate::ports::{AppendBatch, NewMessage, StoreError};
use crate::protocol::{MessageObject, Rejection, ServerFrame};

/// The most messages of one conversation in one append.
pub(super) const MAX_BATCH: usize = 512;

impl ConversationActor {
    pub(super) fn on_send(&self, live: &mut Live, req: SendRequest, reply: Reply) {
        if let Err(r) = state::member(&live.record, req.sender) {
            reply.fail(r);
            return;
        }
        if req.client_mid {
            match live.recent.check(req.mid, req.sender) {
                Some(Retry::Same(c)) => {
                    reply.sent(Ok(sent(live.record.id, req.mid, c, false)));
                    return;
                }
                Some(Retry::Clash) => {
                    reply.fail(mid_clash());
                    return;
                }
                None => {}
            }
            if let Some(pending) = find_pending(live, req.mid) {
                if pending.req.sender == req.sender {
                    pending.waiters.push(reply);
                } else {
                    reply.fail(mid_clash());
                }
                return;
            }
        }
        live.queue.push_back(Work::Send(PendingSend {
            req,
            reply,
            waiters: Vec::new(),
            queued_at: Instant::now(),
            seq: 0,
            at: 0,
        }));
    }

    /// Submits the next piece of work when nothing is at the store.
    pub(super) fn pump(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        while matches!(live.inflight, InFlight::Idle) {
            match live.queue.front() {
                None => return,
                Some(Work::Member(_)) => {
                    let Some(Work::Member(pending)) = live.queue.pop_front() else {
                        return;
                    };
                    self.submit_member(myself, live, pending);
                }
                Some(Work::Send(_)) => self.submit_sends(myself, live),
            }
        }
    }

    pub(super) fn submit_sends(&self, myself: &ActorRef<ConversationMessage>, live: &mut Live) {
        let mut batch = Vec::new();
        let mut seq = live.record.last_seq;
        let mut at = live.record.last_activity;
        let now = now_ms();
        while batch.len() < MAX_BATCH {
            match live.queue.front() {
                Some(Work::Send(_)) => {}
                _ => break,
            }
            let Some(Work::Send(mut p)) = live.queue.pop_front() else {
                break;
            };
            if p.queued_at.elapsed() > self.deps.timing.request_deadline {
                answer_send(p, Err(Rejection::unavailable()));
                continue;
            }
            seq += 1;
            at = state::next_at(now, at);
            p.seq = seq;
            p.at = at;
            batch.push(p);
        }
        if live.queue.is_empty() {
            // At people's pace a conversation rests minutes between sends while its actor stays
            // up: the queue's room (~0.5 KiB) is not kept for that rest.
            live.queue = VecDeque::new();
        }
        if batch.is_empty() {
            return;
        }
        let append = AppendBatch {
            conv: live.record.id,
            messages: batch
                .iter()
                .map(|p| NewMessage {
                    seq: p.seq,
                    mid: p.req.mid,
                    client_mid: p.req.client_mid,
                    sender: p.req.sender,
                    kind: p.req.kind.clone(),
                    body: p.req.body.clone(),
                    at: p.at,
                })
                .collect(),
        };
        live.inflight = InFlight::Messages(batch);
        let me = myself.clone();
        self.deps.writer.submit(
            append,
            Box::new(move |outcome| {
                let _ = me.cast(ConversationMessage::Committed(outcome));
            }),
        );
    }

    pub(super) fn on_committed(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        outcome: Result<(), StoreError>,
    ) {
        let InFlight::Messages(batch) = std::mem::replace(&mut live.inflight, InFlight::Idle)
        else {
            tracing::error!(conv = %live.record.id, "a commit arrived with no batch in flight");
            return;
        };
        match outcome {
            Ok(()) => {
                let conv = live.record.id;
                for mut p in batch {
                    live.record.last_seq = p.seq;
                    live.record.last_activity = p.at;
                    let committed = Committed {
                        sender: p.req.sender,
                        seq: p.seq,
                        at: p.at,
                    };
                    live.recent.insert(p.req.mid, committed);
                    let message = MessageObject {
                        conv,
                        seq: p.seq,
                        mid: p.req.mid,
                        from: p.req.sender,
                        // Committed: the request's text is not needed again, so it moves.
                        kind: std::mem::take(&mut p.req.kind),
                        body: Some(std::mem::take(&mut p.req.body)),
                        at: p.at,
                        deleted_at: None,
                    };
                    let (sender, session) = (p.req.sender, p.req.session);
                    // The message ends the sender's typing for its receivers (PROTOCOL §4): a
                    // next `on` of theirs is news, not a repeat to hold back.
                    live.typing.retain(|t| t.user != sender);
                    let ack = sent(conv, p.req.mid, committed, true);
                    answer_send(p, Ok(ack));
                    self.fan_out(live, message, Some((sender, session)));
                }
            }
            Err(StoreError::DuplicateMids(hits)) => {
                // Those whose mid is stored get its first result (or a conflict); the others go
                // back to the front of the queue to be renumbered: none of them was acknowledged.
                let conv = live.record.id;
                for p in batch.into_iter().rev() {
                    match hits.iter().find(|h| h.mid == p.req.mid) {
                        Some(h) if h.conv == conv && h.sender == p.req.sender => {
                            let c = Committed {
                                sender: h.sender,
                                seq: h.seq,
                                at: h.at,
                            };
                            live.recent.insert(h.mid, c);
                            let ack = sent(conv, h.mid, c, false);
                            answer_send(p, Ok(ack));
                        }
                        Some(_) => answer_send(p, Err(mid_clash())),
                        None => live.queue.push_front(Work::Send(p)),
                    }
                }
            }
            Err(StoreError::SeqTaken) => {
                // Another owner wrote to this conversation (two owners for a moment): nothing of
                // the batch was stored. Reload to learn its seqs, then renumber and retry.
                tracing::info!(conv = %live.record.id, "seq taken by another writer; reloading");
                for p in batch.into_iter().rev() {
                    live.queue.push_front(Work::Send(p));
                }
                self.reload(myself, live);
            }
            Err(e) => {
                // The commit may or may not have happened: nothing was acknowledged, so the
                // callers get `unavailable` (a retry with the same mid is safe) and we reload.
                tracing::warn!(conv = %live.record.id, error = %e, "append failed");
                let rejection = store_rejection(&e);
                for p in batch {
                    answer_send(p, Err(rejection.clone()));
                }
                self.reload(myself, live);
            }
        }
    }

    /// Delivers a committed message to every member's connections but the sender's own.
    pub(super) fn fan_out(
        &self,
        live: &mut Live,
        message: MessageObject,
        origin: Option<(UserId, Option<SessionId>)>,
    ) {
        let frame = shared(ServerFrame::Message(message));
        let targets = live.record.members.iter().map(|m| Target {
            user: m.user,
            except: match origin {
                Some((sender, session)) if sender == m.user => session,
                _ => None,
            },
        });
        self.push(&mut live.pushes, targets, &frame);
    }
}

pub(super) fn find_pending(live: &mut Live, mid: Mid) -> Option<&mut PendingSend> {
    if let InFlight::Messages(batch) = &mut live.inflight
        && let Some(p) = batch.iter_mut().find(|p| p.req.mid == mid)
    {
        return Some(p);
    }
    live.queue.iter_mut().find_map(|w| match w {
        Work::Send(p) if p.req.mid == mid => Some(p),
        _ => None,
    })
}

pub(super) fn sent(conv: ConversationId, mid: Mid, c: Committed, created: bool) -> Sent {
    Sent {
        conv,
        mid,
        seq: c.seq,
        at: c.at,
        created,
    }
}
