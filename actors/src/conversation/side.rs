//! Requests answered beside the send queue: read pointers, mute, typing, delete, history, get.
//! Read pointers go to the batching writer, which commits many of them at once (a reader moves
//! one about as often as a message is sent); the other writes go to the store directly. What
//! they change in the conversation moves only after the store answers.

use ractor::ActorRef;
use tokio::time::Instant;

use super::live::{
    ConversationActor, ConversationMessage, Live, MemberFlag, TYPING_REFRESH, TYPING_TTL, Typist,
    everyone, others, shared,
};
use super::request::store_rejection;
use super::request::{ConversationReply, Reply};
use super::state;
use super::view;
use crate::clock::now_ms;
use crate::ids::{ConversationId, Mid, Seq, UserId};
use crate::ports::{HistoryRange, ReadMark, StoreError};
use crate::protocol::{MessageObject, Rejection, ServerFrame};
use crate::rules::limits::SYSTEM_KIND;

impl ConversationActor {
    pub(super) fn on_read(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        user: UserId,
        seq: Seq,
        reply: Reply,
    ) {
        let last_seq = live.record.last_seq;
        let m = match state::member(&live.record, user) {
            Ok(m) => m,
            Err(r) => {
                reply.fail(r);
                return;
            }
        };
        let target = seq.min(last_seq);
        if target <= m.last_read {
            reply.ok();
            return;
        }
        self.save_member_flag(
            myself,
            live.record.id,
            user,
            MemberFlag::Read(target),
            reply,
        );
    }

    pub(super) fn on_mute(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        user: UserId,
        on: bool,
        reply: Reply,
    ) {
        if let Err(r) = state::member(&live.record, user) {
            reply.fail(r);
            return;
        }
        self.save_member_flag(myself, live.record.id, user, MemberFlag::Muted(on), reply);
    }

    /// Writes a member's flag off the handler; the outcome comes back as `MemberFlagSaved`.
    pub(super) fn save_member_flag(
        &self,
        myself: &ActorRef<ConversationMessage>,
        conv: ConversationId,
        user: UserId,
        flag: MemberFlag,
        reply: Reply,
    ) {
        let me = myself.clone();
        let saved = move |outcome| {
            let _ = me.cast(ConversationMessage::MemberFlagSaved(
                user, flag, outcome, reply,
            ));
        };
        match flag {
            MemberFlag::Read(seq) => self
                .deps
                .writer
                .submit_read(ReadMark { conv, user, seq }, Box::new(saved)),
            MemberFlag::Muted(on) => {
                let deps = self.deps.clone();
                self.deps.tasks.spawn(async move {
                    saved(deps.store.set_muted(conv, user, on).await);
                });
            }
        }
    }

    /// Applies a committed read pointer or mute flag, answers, and pushes the receipt.
    pub(super) fn on_member_flag_saved(
        &self,
        live: &mut Live,
        user: UserId,
        flag: MemberFlag,
        outcome: Result<(), StoreError>,
        reply: Reply,
    ) {
        if let Err(e) = outcome {
            reply.fail(store_rejection(&e));
            return;
        }
        let conv = live.record.id;
        // The member may have left while the write was at the store: then nothing moves here.
        let receipt = match live.record.members.iter_mut().find(|m| m.user == user) {
            Some(m) => match flag {
                MemberFlag::Read(seq) if seq > m.last_read => {
                    m.last_read = seq;
                    Some(seq)
                }
                MemberFlag::Read(_) => None,
                MemberFlag::Muted(on) => {
                    m.muted = on;
                    None
                }
            },
            None => None,
        };
        reply.ok();
        if let Some(seq) = receipt {
            let frame = shared(ServerFrame::Receipt { conv, user, seq });
            self.push(&mut live.pushes, others(&live.record, user), &frame);
        }
    }

    pub(super) fn on_typing(&self, live: &mut Live, user: UserId, on: bool, reply: Reply) {
        if let Err(r) = state::member(&live.record, user) {
            reply.fail(r);
            return;
        }
        let now = Instant::now();
        let found = live.typing.iter().position(|t| t.user == user);
        // Only a change, or a repeated `on` after a while, reaches the others.
        let tell = match (found, on) {
            (Some(i), true) => {
                let t = &mut live.typing[i];
                t.until = now + TYPING_TTL;
                let refresh = now.duration_since(t.told) >= TYPING_REFRESH;
                if refresh {
                    t.told = now;
                }
                refresh
            }
            (Some(i), false) => {
                live.typing.swap_remove(i);
                true
            }
            (None, true) => {
                live.typing.push(Typist {
                    user,
                    until: now + TYPING_TTL,
                    told: now,
                });
                true
            }
            (None, false) => false,
        };
        if tell {
            self.push_typing(live, user, on);
        }
        reply.ok();
    }

    pub(super) fn push_typing(&self, live: &mut Live, user: UserId, on: bool) {
        let frame = shared(ServerFrame::Typing {
            conv: live.record.id,
            user,
            on,
        });
        self.push(&mut live.pushes, others(&live.record, user), &frame);
    }

    pub(super) fn on_delete(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        user: UserId,
        msg: MessageObject,
        reply: Reply,
    ) {
        if let Err(r) = state::member(&live.record, user) {
            reply.fail(r);
            return;
        }
        if msg.kind == SYSTEM_KIND {
            // The conversation's record of who was in it.
            reply.fail(Rejection::forbidden("no one deletes a system message"));
            return;
        }
        if msg.from != user {
            reply.fail(Rejection::forbidden("only the sender deletes a message"));
            return;
        }
        if msg.deleted_at.is_some() {
            reply.ok();
            return;
        }
        let deps = self.deps.clone();
        let me = myself.clone();
        self.deps.tasks.spawn(async move {
            match deps.store.mark_deleted(msg.mid, now_ms()).await {
                Ok(()) => {
                    reply.ok();
                    // The push goes out from the actor, in order with its others.
                    let _ = me.cast(ConversationMessage::MessageDeleted(msg.mid, msg.seq));
                }
                Err(e) => {
                    reply.fail(store_rejection(&e));
                }
            }
        });
    }

    /// A delete is committed: every member hears of it.
    pub(super) fn on_message_deleted(&self, live: &mut Live, mid: Mid, seq: Seq) {
        let frame = shared(ServerFrame::Deleted {
            conv: live.record.id,
            mid,
            seq,
        });
        self.push(&mut live.pushes, everyone(&live.record), &frame);
    }

    pub(super) fn on_history(
        &self,
        live: &mut Live,
        user: UserId,
        range: HistoryRange,
        limit: usize,
        reply: Reply,
    ) {
        if let Err(r) = state::member(&live.record, user) {
            reply.fail(r);
            return;
        }
        let deps = self.deps.clone();
        let conv = live.record.id;
        self.deps.tasks.spawn(async move {
            let page = deps.store.history(conv, range, limit).await;
            let page = page.map(|(messages, more)| ConversationReply::History { messages, more });
            reply.send(page.map_err(|e| store_rejection(&e)));
        });
    }

    pub(super) fn on_get(&self, live: &mut Live, user: UserId, reply: Reply) {
        let last_read = match state::member(&live.record, user) {
            Ok(m) => m.last_read,
            Err(r) => {
                reply.fail(r);
                return;
            }
        };
        let deps = self.deps.clone();
        let record = live.record.clone();
        self.deps.tasks.spawn(async move {
            let outcome = deps
                .store
                .last_message_and_unread(record.id, user, last_read)
                .await;
            let answer = match outcome {
                Ok((last, unread)) => {
                    let profiles = view::profiles_for(deps.profiles.as_ref(), [&record]).await;
                    Ok(view::object(&record, last, unread, &profiles))
                }
                Err(e) => Err(store_rejection(&e)),
            };
            reply.send(answer.map(|o| ConversationReply::Conversation(Box::new(o))));
        });
    }
}
