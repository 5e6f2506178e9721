//! Which agent a new business conversation goes to: an online agent with the fewest open business
//! conversations, else the least loaded agent; ties go to the agent listed first.

use crate::ids::UserId;

/// The chosen agent among `agents` (in the user service's order), given whether each is online
/// and how many business conversations each holds.
pub fn choose_agent(
    agents: &[UserId],
    online: impl Fn(UserId) -> bool,
    load: impl Fn(UserId) -> i64,
) -> Option<UserId> {
    let least = |pool: &mut dyn Iterator<Item = UserId>| {
        pool.enumerate()
            .min_by_key(|(i, a)| (load(*a), *i))
            .map(|(_, a)| a)
    };
    least(&mut agents.iter().copied().filter(|a| online(*a)))
        .or_else(|| least(&mut agents.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn an_online_agent_wins_over_a_less_loaded_offline_one() {
        let (a, b) = (UserId::random(), UserId::random());
        let loads = HashMap::from([(a, 0), (b, 5)]);
        assert_eq!(choose_agent(&[a, b], |u| u == b, |u| loads[&u]), Some(b));
    }

    #[test]
    fn with_nobody_online_the_least_loaded_wins_and_load_balances() {
        let agents = [UserId::random(), UserId::random()];
        let mut loads: HashMap<UserId, i64> = HashMap::new();
        for _ in 0..4 {
            let chosen =
                choose_agent(&agents, |_| false, |u| *loads.get(&u).unwrap_or(&0)).unwrap();
            *loads.entry(chosen).or_default() += 1;
        }
        assert_eq!(loads.values().copied().collect::<Vec<_>>(), vec![2, 2]);
    }

    #[test]
    fn no_agents_no_choice() {
        assert_eq!(choose_agent(&[], |_| true, |_| 0), None);
    }
}
