//! The owner's pushes, in the order it makes them.
//!
//! A `conversation` push takes I/O to build (profiles, each member's last message and unread
//! count), so it is built off the handler. Every push the conversation makes meanwhile waits
//! behind it, and so does a second `conversation` push: each connection gets the pushes of one
//! conversation in the order the owner made them, whatever node it is on, and never a `message`
//! (nor a typing, a receipt) before the `conversation` push that told it of the conversation.
//! Only this module hands the conversation's frames to delivery.

use std::sync::Arc;

use ractor::ActorRef;

use super::live::{ConversationActor, ConversationMessage, Held, Pushes};
use crate::delivery::wire::Target;
use crate::ids::SessionId;
use crate::ports::ConversationRecord;
use crate::protocol::SharedFrame;

impl ConversationActor {
    /// Pushes `frame` to `targets`: now, or after the `conversation` push being built.
    pub(super) fn push(
        &self,
        pushes: &mut Pushes,
        targets: impl IntoIterator<Item = Target>,
        frame: &Arc<SharedFrame>,
    ) {
        if pushes.building {
            let targets = targets.into_iter().collect();
            pushes.held.push_back(Held::Frame(targets, frame.clone()));
        } else {
            self.deps.delivery.deliver_all(targets, frame);
        }
    }

    /// Pushes `record`, as each member sees it, to every member but the connection `except`
    /// (which got the reply instead); the pushes that follow wait until it is out.
    pub(super) fn push_conversation(
        &self,
        myself: &ActorRef<ConversationMessage>,
        pushes: &mut Pushes,
        record: ConversationRecord,
        except: Option<SessionId>,
    ) {
        if pushes.building {
            let held = Held::Conversation(Box::new(record), except);
            pushes.held.push_back(held);
            return;
        }
        pushes.building = true;
        let deps = self.deps.clone();
        let me = myself.clone();
        self.deps.tasks.spawn(async move {
            deps.push_conversation(&record, except).await;
            // Stopped meanwhile: nothing waits any more.
            let _ = me.cast(ConversationMessage::ConversationPushed);
        });
    }

    /// The `conversation` push is out: what waited goes, up to the next `conversation` push.
    pub(super) fn on_conversation_pushed(
        &self,
        myself: &ActorRef<ConversationMessage>,
        pushes: &mut Pushes,
    ) {
        pushes.building = false;
        while let Some(held) = pushes.held.pop_front() {
            match held {
                Held::Frame(targets, frame) => self.deps.delivery.deliver_all(targets, &frame),
                Held::Conversation(record, except) => {
                    self.push_conversation(myself, pushes, *record, except);
                    return;
                }
            }
        }
    }

    /// The actor stops with pushes held (its conversation moved to another node): they go now,
    /// late rather than never.
    pub(super) fn release_held(&self, pushes: &mut Pushes) {
        for held in pushes.held.drain(..) {
            if let Held::Frame(targets, frame) = held {
                self.deps.delivery.deliver_all(targets, &frame);
            }
        }
    }
}
