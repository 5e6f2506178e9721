//! Who may do what in a conversation, and who becomes admin when the last one leaves.

use crate::ids::UserId;
use crate::ports::MemberRecord;
use crate::protocol::{ConversationKind, Rejection, Role};

/// May `actor` add `user` to a conversation of `kind` with `members`, given the size limit?
pub fn check_add(
    kind: ConversationKind,
    members: &[MemberRecord],
    actor: UserId,
    user: UserId,
    max_group_size: usize,
) -> Result<(), Rejection> {
    if kind != ConversationKind::Group {
        return Err(Rejection::bad_request(
            "members are added to group conversations only",
        ));
    }
    if !is_admin(members, actor) {
        return Err(Rejection::forbidden("only an admin adds members"));
    }
    if members.iter().any(|m| m.user == user) {
        return Err(Rejection::conflict("already a member"));
    }
    if members.len() >= max_group_size {
        return Err(Rejection::conflict(format!(
            "a group holds at most {max_group_size} members"
        )));
    }
    Ok(())
}

/// May `actor` remove `user`? Anyone may leave a group; only an admin removes others.
pub fn check_remove(
    kind: ConversationKind,
    members: &[MemberRecord],
    actor: UserId,
    user: UserId,
) -> Result<(), Rejection> {
    if kind != ConversationKind::Group {
        return Err(Rejection::bad_request(
            "members are removed from group conversations only",
        ));
    }
    if actor != user && !is_admin(members, actor) {
        return Err(Rejection::forbidden("only an admin removes others"));
    }
    if !members.iter().any(|m| m.user == user) {
        return Err(Rejection::not_found("not a member"));
    }
    Ok(())
}

/// May `actor` hand a business conversation to `agent` (already checked to be an agent of the
/// business)? Only a member agent does, and to someone not already in it.
pub fn check_transfer(
    kind: ConversationKind,
    members: &[MemberRecord],
    actor: UserId,
    agent: UserId,
) -> Result<(), Rejection> {
    if kind != ConversationKind::Business {
        return Err(Rejection::bad_request(
            "only business conversations are transferred",
        ));
    }
    if !members
        .iter()
        .any(|m| m.user == actor && m.role == Role::Agent)
    {
        return Err(Rejection::forbidden(
            "only the conversation's agent transfers it",
        ));
    }
    if members.iter().any(|m| m.user == agent) {
        return Err(Rejection::bad_request(
            "that agent is in the conversation already",
        ));
    }
    Ok(())
}

/// After `leaving` goes, the member to promote: the longest-standing one, when no admin is left.
pub fn successor(members: &[MemberRecord], leaving: UserId) -> Option<UserId> {
    let rest = members.iter().filter(|m| m.user != leaving);
    if rest.clone().any(|m| m.role == Role::Admin) {
        return None;
    }
    rest.min_by_key(|m| m.joined).map(|m| m.user)
}

fn is_admin(members: &[MemberRecord], user: UserId) -> bool {
    members
        .iter()
        .any(|m| m.user == user && m.role == Role::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(role: Role, joined: i64) -> MemberRecord {
        MemberRecord::new(UserId::random(), role, joined)
    }

    #[test]
    fn when_the_last_admin_leaves_the_longest_standing_member_is_promoted() {
        let admin = member(Role::Admin, 0);
        let early = member(Role::Member, 1);
        let late = member(Role::Member, 2);
        let all = vec![admin.clone(), late.clone(), early.clone()];
        assert_eq!(successor(&all, admin.user), Some(early.user));
        assert_eq!(successor(&all, late.user), None);
    }

    #[test]
    fn only_admins_add_and_a_full_group_is_a_conflict() {
        let admin = member(Role::Admin, 0);
        let plain = member(Role::Member, 1);
        let all = vec![admin.clone(), plain.clone()];
        let newcomer = UserId::random();
        let g = ConversationKind::Group;
        assert!(check_add(g, &all, admin.user, newcomer, 8).is_ok());
        assert_eq!(
            check_add(g, &all, plain.user, newcomer, 8)
                .unwrap_err()
                .code,
            crate::protocol::ErrorCode::Forbidden
        );
        assert_eq!(
            check_add(g, &all, admin.user, newcomer, 2)
                .unwrap_err()
                .code,
            crate::protocol::ErrorCode::Conflict
        );
        assert_eq!(
            check_add(ConversationKind::Direct, &all, admin.user, newcomer, 8)
                .unwrap_err()
                .code,
            crate::protocol::ErrorCode::BadRequest
        );
    }

    #[test]
    fn anyone_may_leave_but_only_admins_remove_others() {
        let admin = member(Role::Admin, 0);
        let plain = member(Role::Member, 1);
        let all = vec![admin.clone(), plain.clone()];
        let g = ConversationKind::Group;
        assert!(check_remove(g, &all, plain.user, plain.user).is_ok());
        assert!(check_remove(g, &all, plain.user, admin.user).is_err());
        assert!(check_remove(g, &all, admin.user, plain.user).is_ok());
    }
}
