//! What a `create` makes (PROTOCOL §3.1): the members and their roles, and the key that keeps
//! direct and business conversations one per pair. The node looks up what needs I/O first (a
//! business's agents, their loads and presence) and hands it in; everything here is checked
//! without it.

use crate::ids::{ConversationId, UserId};
use crate::ports::{ConversationRecord, MemberRecord, NewConversation};
use crate::protocol::{ConversationKind, Rejection, Role};
use crate::rules::limits::MAX_NAME_CHARS;

/// A conversation planned, before it has an id and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Its kind.
    pub kind: ConversationKind,
    /// Its members, in the order they count as having joined.
    pub members: Vec<MemberRecord>,
    /// `direct:<a>:<b>` or `business:<biz>:<customer>`; none for groups.
    pub unique_key: Option<String>,
    /// A group's name.
    pub name: Option<String>,
    /// A business conversation's business.
    pub business: Option<UserId>,
}

impl Plan {
    /// The conversation to store, as `id`, created at `now`.
    pub fn into_new(self, id: ConversationId, now: i64) -> NewConversation {
        NewConversation {
            record: ConversationRecord {
                id,
                kind: self.kind,
                name: self.name,
                business: self.business,
                created_at: now,
                last_seq: 0,
                last_activity: now,
                members: self.members,
            },
            unique_key: self.unique_key,
        }
    }
}

/// A direct conversation of `creator` with the one other user in `others`. Its members are
/// ordered by id, so the same pair gets the same key whoever creates it.
pub fn direct(creator: UserId, others: &[UserId]) -> Result<Plan, Rejection> {
    let [other] = others[..] else {
        return Err(Rejection::bad_request(
            "a direct conversation has exactly one other member",
        ));
    };
    if other == creator {
        return Err(Rejection::bad_request(
            "a direct conversation needs another user",
        ));
    }
    let (lo, hi) = if creator < other {
        (creator, other)
    } else {
        (other, creator)
    };
    Ok(Plan {
        kind: ConversationKind::Direct,
        members: vec![
            MemberRecord::new(lo, Role::Member, 0),
            MemberRecord::new(hi, Role::Member, 1),
        ],
        unique_key: Some(format!("direct:{lo}:{hi}")),
        name: None,
        business: None,
    })
}

/// A group of `creator` (its admin) and `others` (each once), named `name`, of at most
/// `max_group_size` members.
pub fn group(
    creator: UserId,
    others: &[UserId],
    name: Option<String>,
    max_group_size: usize,
) -> Result<Plan, Rejection> {
    if let Some(name) = &name
        && name.chars().count() > MAX_NAME_CHARS
    {
        return Err(Rejection::bad_request(format!(
            "a group name has at most {MAX_NAME_CHARS} characters"
        )));
    }
    let mut members = vec![MemberRecord::new(creator, Role::Admin, 0)];
    for &user in others {
        if !members.iter().any(|m| m.user == user) {
            let joined = members.len() as i64;
            members.push(MemberRecord::new(user, Role::Member, joined));
        }
    }
    if members.len() > max_group_size {
        return Err(Rejection::conflict(format!(
            "a group holds at most {max_group_size} members"
        )));
    }
    Ok(Plan {
        kind: ConversationKind::Group,
        members,
        unique_key: None,
        name,
        business: None,
    })
}

/// The business a business `create` names.
pub fn named_business(business: Option<UserId>) -> Result<UserId, Rejection> {
    business.ok_or_else(|| Rejection::bad_request("a business conversation names its business"))
}

/// May `customer` open a chat with `business`, whose agents are `agents`? Not the business
/// itself, nor one of its own agents.
pub fn check_customer(
    customer: UserId,
    business: UserId,
    agents: &[UserId],
) -> Result<(), Rejection> {
    if customer == business || agents.contains(&customer) {
        return Err(Rejection::bad_request(
            "a business, or one of its own agents, cannot open a chat with it as a customer",
        ));
    }
    Ok(())
}

/// A business conversation of `customer` with `business`, served by `agent` (chosen by
/// [`super::assignment::choose_agent`]). One per customer and business.
pub fn business(customer: UserId, business: UserId, agent: UserId) -> Plan {
    Plan {
        kind: ConversationKind::Business,
        members: vec![
            MemberRecord::new(customer, Role::Customer, 0),
            MemberRecord::new(business, Role::Business, 1),
            MemberRecord::new(agent, Role::Agent, 2),
        ],
        unique_key: Some(format!("business:{business}:{customer}")),
        name: None,
        business: Some(business),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn user(n: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_direct_pair_has_one_key_whoever_creates_it() {
        let (a, b) = (user(1), user(2));
        let one = direct(a, &[b]).unwrap();
        let other = direct(b, &[a]).unwrap();
        assert_eq!(one, other);
        assert_eq!(one.members[0].user, a);
        assert_eq!(one.unique_key, Some(format!("direct:{a}:{b}")));
    }

    #[test]
    fn a_direct_conversation_needs_exactly_one_other_user() {
        let a = user(1);
        for others in [vec![], vec![a], vec![user(2), user(3)]] {
            assert_eq!(direct(a, &others).unwrap_err().code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn a_group_counts_each_member_once_with_its_creator_as_admin() {
        let (a, b, c) = (user(1), user(2), user(3));
        let plan = group(a, &[b, c, b, a], Some("x".into()), 8).unwrap();
        let roles: Vec<_> = plan.members.iter().map(|m| (m.user, m.role)).collect();
        assert_eq!(
            roles,
            vec![(a, Role::Admin), (b, Role::Member), (c, Role::Member)]
        );
        assert_eq!(plan.unique_key, None);
    }

    #[test]
    fn a_group_keeps_to_its_size_and_name_limits() {
        let others: Vec<UserId> = (2..=8).map(user).collect();
        assert!(group(user(1), &others, None, 8).is_ok());
        let too_many: Vec<UserId> = (2..=9).map(user).collect();
        let refused = group(user(1), &too_many, None, 8).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Conflict);
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let refused = group(user(1), &[], Some(long), 8).unwrap_err();
        assert_eq!(refused.code, ErrorCode::BadRequest);
        assert!(refused.message.contains(&MAX_NAME_CHARS.to_string()));
        assert!(group(user(1), &[], Some("é".repeat(MAX_NAME_CHARS)), 8).is_ok());
    }

    #[test]
    fn a_business_and_its_agents_are_not_its_customers() {
        let (customer, biz, agent) = (user(1), user(2), user(3));
        assert!(check_customer(customer, biz, &[agent]).is_ok());
        assert!(check_customer(biz, biz, &[agent]).is_err());
        assert!(check_customer(agent, biz, &[agent]).is_err());
        let plan = business(customer, biz, agent);
        assert_eq!(plan.unique_key, Some(format!("business:{biz}:{customer}")));
        assert_eq!(plan.business, Some(biz));
        assert_eq!(
            named_business(None).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }
}
