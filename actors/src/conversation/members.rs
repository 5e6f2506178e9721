//! Membership changes: add, remove (or leave), transfer. Each is checked against the record it
//! will change, committed with its system message, and only then applied and pushed.

use std::sync::Arc;

use ractor::ActorRef;
use tokio::time::Instant;

use super::live::{
    ConversationActor, ConversationDeps, ConversationMessage, InFlight, Live, MemberOp,
    PendingMember, Work, everyone, shared,
};
use super::request::Reply;
use super::request::store_rejection;
use super::state;
use super::view;
use crate::clock::now_ms;
use crate::delivery::wire::Target;
use crate::ids::{Mid, SessionId, UserId};
use crate::ports::{ConversationRecord, MemberRecord, MembershipChange, NewMessage, StoreError};
use crate::protocol::{Rejection, Role, ServerFrame, SharedFrame};
use crate::rules::{limits, membership};

impl ConversationDeps {
    /// Pushes `record`, as each member sees it (their own unread count), to every member; `except`
    /// is the connection whose request caused it (it gets the reply instead).
    pub(super) async fn push_conversation(
        &self,
        record: &ConversationRecord,
        except: Option<SessionId>,
    ) {
        let profiles = view::profiles_for(self.profiles.as_ref(), [record]).await;
        // A conversation without messages has no newest message and nothing unread: a new one
        // is pushed without a read per member (a burst of creations had used up the node's
        // read budget, and the pushes were lost). Otherwise asked together: on a standby the
        // reads share one wait for it to be current.
        let seen = if record.last_seq == 0 {
            record.members.iter().map(|_| Ok((None, 0))).collect()
        } else {
            futures_util::future::join_all(record.members.iter().map(|m| {
                self.store
                    .last_message_and_unread(record.id, m.user, m.last_read)
            }))
            .await
        };
        for (m, seen) in record.members.iter().zip(seen) {
            let (last, unread) = match seen {
                Ok(found) => found,
                Err(e) => {
                    // this member learns of it from the list; the others are still told
                    tracing::warn!(conv = %record.id.masked(), error = %e, "conversation push skipped for a member");
                    continue;
                }
            };
            let object = view::object(record, last, unread, &profiles);
            let frame = Arc::new(SharedFrame::new(ServerFrame::Conversation {
                id: None,
                conversation: Box::new(object),
            }));
            self.delivery.deliver(m.user, &frame, except);
        }
    }
}

impl ConversationActor {
    pub(super) fn enqueue_member(
        &self,
        live: &mut Live,
        actor: UserId,
        op: MemberOp,
        reply: Reply,
    ) {
        if let Err(r) = state::member(&live.record, actor) {
            reply.fail(r);
            return;
        }
        live.queue.push_back(Work::Member(PendingMember {
            actor,
            op,
            reply,
            queued_at: Instant::now(),
        }));
    }

    pub(super) fn submit_member(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        pending: PendingMember,
    ) {
        if pending.queued_at.elapsed() > self.deps.timing.request_deadline {
            pending.reply.fail(Rejection::unavailable());
            return;
        }
        let record = &live.record;
        let planned = plan_change(
            record,
            pending.actor,
            pending.op,
            self.deps.limits.max_group_size,
            now_ms(),
            Mid(uuid::Uuid::now_v7()),
        );
        let change = match planned {
            Ok(change) => change,
            Err(r) => {
                pending.reply.fail(r);
                return;
            }
        };
        let deps = self.deps.clone();
        let me = myself.clone();
        let conv = record.id;
        let submitted = change.clone();
        live.inflight = InFlight::Member(Box::new((pending, change)));
        self.deps.tasks.spawn(async move {
            let outcome = deps.store.change_members(conv, &submitted).await;
            let _ = me.cast(ConversationMessage::MembersChanged(outcome));
        });
    }

    pub(super) fn on_members_changed(
        &self,
        myself: &ActorRef<ConversationMessage>,
        live: &mut Live,
        outcome: Result<(), StoreError>,
    ) {
        let InFlight::Member(pending_change) =
            std::mem::replace(&mut live.inflight, InFlight::Idle)
        else {
            tracing::error!(conv = %live.record.id, "a membership result arrived with none in flight");
            return;
        };
        let (pending, change) = *pending_change;
        if let Err(StoreError::SeqTaken) = outcome {
            // Another owner wrote meanwhile: plan it again on the reloaded record.
            live.queue.push_front(Work::Member(pending));
            self.reload(myself, live);
            return;
        }
        if let Err(e) = outcome {
            tracing::warn!(conv = %live.record.id, error = %e, "membership change failed");
            pending.reply.fail(store_rejection(&e));
            self.reload(myself, live);
            return;
        }
        apply_change(&mut live.record, &change);
        pending.reply.ok();
        let conv = live.record.id;
        for removed in &change.remove {
            let frame = shared(ServerFrame::Removed { conv });
            let target = Target {
                user: *removed,
                except: None,
            };
            self.push(&mut live.pushes, [target], &frame);
        }
        // First the conversation as it is now (a member who just joined learns of it), then
        // the system message, to every member at the time, the one just added included.
        self.push_conversation(myself, &mut live.pushes, live.record.clone(), None);
        if let Some(system) = &change.system {
            let frame = shared(ServerFrame::Message(system.object(conv)));
            self.push(&mut live.pushes, everyone(&live.record), &frame);
        }
    }
}

/// Plans `op` by `actor` on `record`: the rule check, the member rows to add and remove, a role
/// to hand on, and the system message (numbered next, timed at `now` or after the last message).
pub(super) fn plan_change(
    record: &ConversationRecord,
    actor: UserId,
    op: MemberOp,
    max_group_size: usize,
    now: i64,
    mid: Mid,
) -> Result<MembershipChange, Rejection> {
    let (kind, members) = (record.kind, &record.members);
    match op {
        MemberOp::Add(user) => membership::check_add(kind, members, actor, user, max_group_size),
        MemberOp::Remove(user) => membership::check_remove(kind, members, actor, user),
        MemberOp::Transfer(agent) => membership::check_transfer(kind, members, actor, agent),
    }?;
    let joined = members.iter().map(|m| m.joined).max().unwrap_or(0) + 1;
    // A newcomer has read what came before they joined.
    let newcomer = |user, role| MemberRecord {
        last_read: record.last_seq,
        ..MemberRecord::new(user, role, joined)
    };
    let mut change = MembershipChange::default();
    let (event, subject) = match op {
        MemberOp::Add(user) => {
            change.add.push(newcomer(user, Role::Member));
            ("member_added", user)
        }
        MemberOp::Remove(user) => {
            change.remove.push(user);
            if let Some(next) = membership::successor(members, user) {
                change.roles.push((next, Role::Admin));
            }
            let event = if user == actor {
                "member_left"
            } else {
                "member_removed"
            };
            (event, user)
        }
        MemberOp::Transfer(agent) => {
            change.remove.push(actor);
            change.add.push(newcomer(agent, Role::Agent));
            ("transferred", agent)
        }
    };
    change.system = Some(NewMessage {
        seq: record.last_seq + 1,
        mid,
        client_mid: false,
        sender: actor,
        kind: limits::SYSTEM_KIND.to_owned(),
        body: serde_json::json!({"event": event, "user": subject}).to_string(),
        at: state::next_at(now, record.last_activity),
    });
    Ok(change)
}

/// Applies a committed change to the record: members, roles, and the system message as the last.
pub(super) fn apply_change(record: &mut ConversationRecord, change: &MembershipChange) {
    record.members.retain(|m| !change.remove.contains(&m.user));
    record.members.extend(change.add.iter().cloned());
    for (user, role) in &change.roles {
        if let Some(m) = record.members.iter_mut().find(|m| m.user == *user) {
            m.role = *role;
        }
    }
    if let Some(system) = &change.system {
        record.last_seq = system.seq;
        record.last_activity = system.at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConversationId;
    use crate::protocol::ConversationKind;

    fn conversation(kind: ConversationKind, members: Vec<MemberRecord>) -> ConversationRecord {
        ConversationRecord {
            id: ConversationId::random(),
            kind,
            name: None,
            business: None,
            created_at: 1_000,
            last_seq: 7,
            last_activity: 5_000,
            members,
        }
    }

    fn plan(
        record: &ConversationRecord,
        actor: UserId,
        op: MemberOp,
    ) -> Result<MembershipChange, Rejection> {
        plan_change(record, actor, op, 3, 4_000, Mid::random())
    }

    #[test]
    fn an_added_member_has_read_everything_so_far_and_stands_last() {
        let (admin, bob, carol) = (UserId::random(), UserId::random(), UserId::random());
        let mut record = conversation(
            ConversationKind::Group,
            vec![
                MemberRecord::new(admin, Role::Admin, 0),
                MemberRecord::new(bob, Role::Member, 4),
            ],
        );
        let change = plan(&record, admin, MemberOp::Add(carol)).unwrap();
        assert_eq!(
            change.add,
            vec![MemberRecord {
                last_read: 7,
                ..MemberRecord::new(carol, Role::Member, 5)
            }]
        );
        let system = change.system.clone().unwrap();
        // Numbered next; timed no earlier than the last message, though the clock says earlier.
        assert_eq!(
            (system.seq, system.kind.as_str(), system.sender),
            (8, "system", admin)
        );
        assert_eq!(system.at, 5_000);
        assert!(system.body.contains("member_added") && system.body.contains(&carol.to_string()));
        apply_change(&mut record, &change);
        assert_eq!(record.members.len(), 3);
        assert_eq!((record.last_seq, record.last_activity), (8, system.at));
    }

    #[test]
    fn the_last_admin_leaving_hands_the_role_to_the_longest_standing_member() {
        let (admin, bob, carol) = (UserId::random(), UserId::random(), UserId::random());
        let mut record = conversation(
            ConversationKind::Group,
            vec![
                MemberRecord::new(admin, Role::Admin, 0),
                MemberRecord::new(carol, Role::Member, 2),
                MemberRecord::new(bob, Role::Member, 1),
            ],
        );
        let change = plan(&record, admin, MemberOp::Remove(admin)).unwrap();
        assert_eq!(change.remove, vec![admin]);
        assert_eq!(change.roles, vec![(bob, Role::Admin)]);
        assert!(change.system.as_ref().unwrap().body.contains("member_left"));
        apply_change(&mut record, &change);
        let roles: Vec<(UserId, Role)> = record.members.iter().map(|m| (m.user, m.role)).collect();
        assert_eq!(roles, vec![(carol, Role::Member), (bob, Role::Admin)]);
    }

    #[test]
    fn a_refused_change_plans_nothing() {
        let (admin, bob, carol, dave) = (
            UserId::random(),
            UserId::random(),
            UserId::random(),
            UserId::random(),
        );
        let full = conversation(
            ConversationKind::Group,
            vec![
                MemberRecord::new(admin, Role::Admin, 0),
                MemberRecord::new(bob, Role::Member, 1),
                MemberRecord::new(carol, Role::Member, 2),
            ],
        );
        assert_eq!(
            plan(&full, admin, MemberOp::Add(dave)).unwrap_err().code,
            crate::protocol::ErrorCode::Conflict
        );
        assert_eq!(
            plan(&full, bob, MemberOp::Remove(carol)).unwrap_err().code,
            crate::protocol::ErrorCode::Forbidden
        );
    }

    #[test]
    fn a_transfer_swaps_the_agent_and_says_so() {
        let (customer, business, agent, next) = (
            UserId::random(),
            UserId::random(),
            UserId::random(),
            UserId::random(),
        );
        let mut record = conversation(
            ConversationKind::Business,
            vec![
                MemberRecord::new(customer, Role::Customer, 0),
                MemberRecord::new(business, Role::Business, 1),
                MemberRecord::new(agent, Role::Agent, 2),
            ],
        );
        let change = plan(&record, agent, MemberOp::Transfer(next)).unwrap();
        assert_eq!(change.remove, vec![agent]);
        assert_eq!(change.add[0].user, next);
        assert_eq!(change.add[0].role, Role::Agent);
        assert!(change.system.as_ref().unwrap().body.contains("transferred"));
        apply_change(&mut record, &change);
        assert!(
            record
                .members
                .iter()
                .any(|m| m.user == next && m.role == Role::Agent)
        );
        assert!(!record.members.iter().any(|m| m.user == agent));
    }
}
