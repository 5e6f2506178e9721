//! Per-user budgets on this node: how fast one user may ask, how much may be in flight for them at
//! once, and how often their typing state may change per conversation.
//!
//! Every operation a transport calls is admitted here first, so one user's flood is refused at the
//! door (`rate_limited`) before it reaches an actor, the database or another user's queue. The
//! budgets are per user, not per connection: opening more connections buys nothing. A node past
//! what its cores serve refuses a share of everyone's new requests here too (`unavailable`,
//! [`super::overload`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::ids::{ConversationId, UserId};
use crate::protocol::{ErrorCode, Rejection};

use super::overload::Overload;

/// Typing state changes per second one user may make in one conversation (PROTOCOL leaves the
/// number open; a person toggles far slower, a client repeats `on` every few seconds).
const TYPING_PER_SECOND: u32 = 2;
/// The burst of typing state changes in one conversation.
const TYPING_BURST: u32 = 4;

/// The configured budgets.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    /// `send`s per second and burst.
    pub sends: (u32, u32),
    /// Every other request (and `typing`): per second and burst.
    pub requests: (u32, u32),
    /// Requests of one user in flight at once, over all its connections here.
    pub max_in_flight: usize,
    /// The node's lag (how late its runtime runs what is ready) past which it refuses a share of
    /// new requests; zero: never.
    pub overload_lag: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            sends: (20, 40),
            requests: (50, 200),
            max_in_flight: 64,
            overload_lag: Duration::from_millis(100),
        }
    }
}

/// Which rate a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// A `send`: the message rate (`CHAT_RATE_MESSAGES`).
    Send,
    /// Anything else: the request rate.
    Request,
}

/// The node's per-user budgets.
pub struct Budgets {
    sends: DefaultKeyedRateLimiter<UserId>,
    requests: DefaultKeyedRateLimiter<UserId>,
    typing: DefaultKeyedRateLimiter<(UserId, ConversationId)>,
    /// Requests in flight per user; a user with none has no entry.
    in_flight: DashMap<UserId, usize>,
    max_in_flight: usize,
    /// The node's own load.
    pub(super) overload: Arc<Overload>,
}

/// One admitted request; it leaves the user's in-flight count when dropped.
pub struct Admitted {
    budgets: Arc<Budgets>,
    user: UserId,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(mut n) = self.budgets.in_flight.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
        self.budgets.in_flight.remove_if(&self.user, |_, n| *n == 0);
    }
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    (rate, burst): (u32, u32),
) -> DefaultKeyedRateLimiter<K> {
    let rate = NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

fn limited(what: &str) -> Rejection {
    metrics::counter!("chat_rate_limited_total").increment(1);
    Rejection::new(ErrorCode::RateLimited, what)
}

impl Budgets {
    /// Budgets as configured.
    pub fn new(config: &BudgetConfig) -> Budgets {
        Budgets {
            sends: limiter(config.sends),
            requests: limiter(config.requests),
            typing: limiter((TYPING_PER_SECOND, TYPING_BURST)),
            in_flight: DashMap::new(),
            max_in_flight: config.max_in_flight.max(1),
            overload: Arc::new(Overload::new(config.overload_lag)),
        }
    }

    /// Admits one request of `user`, or refuses it `rate_limited`. The answer holds a place in
    /// the user's in-flight count until it is dropped.
    pub fn admit(self: &Arc<Self>, user: UserId, cost: Cost) -> Result<Admitted, Rejection> {
        self.refuse_when_overloaded()?;
        let mut n = self.in_flight.entry(user).or_insert(0);
        if *n >= self.max_in_flight {
            drop(n);
            return Err(limited("too many requests in flight; wait for the answers"));
        }
        let rate = match cost {
            Cost::Send => &self.sends,
            Cost::Request => &self.requests,
        };
        if rate.check_key(&user).is_err() {
            let empty = *n == 0;
            drop(n);
            if empty {
                self.in_flight.remove_if(&user, |_, n| *n == 0);
            }
            return Err(limited(match cost {
                Cost::Send => "too many messages; slow down",
                Cost::Request => "too many requests; slow down",
            }));
        }
        *n += 1;
        drop(n);
        Ok(Admitted {
            budgets: self.clone(),
            user,
        })
    }

    /// Counts one request that finishes at once (nothing stays in flight).
    pub fn admit_now(&self, user: UserId) -> Result<(), Rejection> {
        self.refuse_when_overloaded()?;
        self.requests
            .check_key(&user)
            .map_err(|_| limited("too many requests; slow down"))
    }

    /// Whether a `typing` frame of `user` in `conv` may go on: within the request rate and the
    /// conversation's typing rate. Above either it is dropped here, at the sender's node.
    pub fn typing(&self, user: UserId, conv: ConversationId) -> Result<(), Rejection> {
        self.admit_now(user)?;
        self.typing
            .check_key(&(user, conv))
            .map_err(|_| limited("typing changes too often; it is dropped"))
    }

    /// Refuses a share of new requests while the node is past what it serves.
    fn refuse_when_overloaded(&self) -> Result<(), Rejection> {
        if self.overload.shed() {
            Err(Rejection::new(
                ErrorCode::Unavailable,
                "this node is overloaded; try again shortly",
            ))
        } else {
            Ok(())
        }
    }

    /// Forgets users idle long enough to have their whole burst back (keyed limiters keep every
    /// key forever otherwise).
    pub fn forget_idle(&self) {
        self.sends.retain_recent();
        self.sends.shrink_to_fit();
        self.requests.retain_recent();
        self.requests.shrink_to_fit();
        self.typing.retain_recent();
        self.typing.shrink_to_fit();
    }

    /// Users with requests in flight (for tests and metrics).
    pub fn users_in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(requests: (u32, u32), max_in_flight: usize) -> Arc<Budgets> {
        Arc::new(Budgets::new(&BudgetConfig {
            sends: (1, 2),
            requests,
            max_in_flight,
            overload_lag: Duration::ZERO,
        }))
    }

    #[test]
    fn a_user_over_the_in_flight_budget_is_refused_until_an_answer_comes_back() {
        let b = budgets((1000, 1000), 2);
        let u = UserId::random();
        let first = b.admit(u, Cost::Request).unwrap();
        let _second = b.admit(u, Cost::Request).unwrap();
        let refused = b.admit(u, Cost::Request).err().unwrap();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        // Another user is not touched by the first one's flood.
        assert!(b.admit(UserId::random(), Cost::Request).is_ok());
        drop(first);
        assert!(b.admit(u, Cost::Request).is_ok());
    }

    #[test]
    fn the_rate_is_per_user_and_sends_have_their_own() {
        let b = budgets((1, 3), 100);
        let u = UserId::random();
        for _ in 0..3 {
            drop(b.admit(u, Cost::Request).unwrap());
        }
        assert!(b.admit(u, Cost::Request).is_err());
        assert!(b.admit(u, Cost::Send).is_ok());
        assert!(b.admit(UserId::random(), Cost::Request).is_ok());
        // Nothing is left in flight, and a refused request leaves no entry behind.
        assert_eq!(b.users_in_flight(), 0);
    }

    #[test]
    fn typing_is_throttled_per_conversation_and_counts_against_the_request_rate() {
        let b = budgets((1000, 1000), 10);
        let u = UserId::random();
        let c = ConversationId::random();
        let passed = (0..100).filter(|_| b.typing(u, c).is_ok()).count();
        assert_eq!(passed, TYPING_BURST as usize);
        assert!(b.typing(u, ConversationId::random()).is_ok());
        let tight = budgets((1, 2), 10);
        let passed = (0..100)
            .filter(|_| tight.typing(u, ConversationId::random()).is_ok())
            .count();
        assert_eq!(passed, 2);
    }
}
