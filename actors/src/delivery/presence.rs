//! Who is online on this node, when they were last seen, and which connections watch whom.
//!
//! A user is online while their UserActor lives. The board is shared by the node's actors and
//! sessions; each map entry is touched under its DashMap shard lock only, never across an await.

use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorId;

use super::outbound::Outbound;
use crate::clock::now_ms;
use crate::ids::{SessionId, UserId};
use crate::protocol::{PresenceItem, PresenceStatus, ServerFrame, SharedFrame};

/// Presence of this node's users and the watch lists of its connections.
#[derive(Debug, Default)]
pub struct PresenceBoard {
    /// Online users, with the actor that holds them (a stopping actor must not mark a user
    /// offline whom a newer actor already holds).
    online: DashMap<UserId, ActorId>,
    /// When each user who went offline here was last seen.
    last_seen: DashMap<UserId, i64>,
    /// Watched user → the connections watching them.
    watchers: DashMap<UserId, Vec<Outbound>>,
    /// Business → its agents (as last heard from the user service).
    agents: DashMap<UserId, Vec<UserId>>,
    /// Agent → the businesses they serve.
    businesses: DashMap<UserId, Vec<UserId>>,
}

impl PresenceBoard {
    /// `user` is online, held by `actor`; tells their watchers if that is news.
    pub fn set_online(&self, user: UserId, actor: ActorId) {
        let was_online = self.online.insert(user, actor).is_some();
        if !was_online {
            self.announce(user, PresenceStatus::Online);
            for business in self.businesses_of(user) {
                // the first agent online brings the business online
                if self.online_agents(business) == 1 {
                    self.announce(business, PresenceStatus::Online);
                }
            }
        }
    }

    /// `user`'s actor `actor` stopped; unless a newer one holds them, they are offline now.
    pub fn set_offline(&self, user: UserId, actor: ActorId) {
        if self.online.remove_if(&user, |_, a| *a == actor).is_some() {
            let now = now_ms();
            self.last_seen.insert(user, now);
            self.announce(user, PresenceStatus::Offline);
            for business in self.businesses_of(user) {
                if self.online_agents(business) == 0 {
                    self.last_seen.insert(business, now);
                    self.announce(business, PresenceStatus::Offline);
                }
            }
        }
    }

    /// Records the agents of `business`, whose presence is any of theirs.
    pub fn set_business_agents(&self, business: UserId, agents: &[UserId]) {
        let old = self
            .agents
            .insert(business, agents.to_vec())
            .unwrap_or_default();
        for agent in old.iter().filter(|a| !agents.contains(a)) {
            if let Some(mut list) = self.businesses.get_mut(agent) {
                list.retain(|b| *b != business);
            }
        }
        for agent in agents {
            let mut list = self.businesses.entry(*agent).or_default();
            if !list.contains(&business) {
                list.push(business);
            }
        }
    }

    /// Whether `user` has a connection here.
    pub fn is_online(&self, user: UserId) -> bool {
        self.online.contains_key(&user)
    }

    fn businesses_of(&self, agent: UserId) -> Vec<UserId> {
        self.businesses
            .get(&agent)
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    fn online_agents(&self, business: UserId) -> usize {
        let agents = self
            .agents
            .get(&business)
            .map(|l| l.clone())
            .unwrap_or_default();
        agents
            .iter()
            .filter(|a| self.online.contains_key(a))
            .count()
    }

    /// The status of `user` on this node.
    pub fn status(&self, user: UserId) -> PresenceItem {
        let online = if self.agents.contains_key(&user) {
            self.online_agents(user) > 0
        } else {
            self.online.contains_key(&user)
        };
        PresenceItem {
            user,
            status: if online {
                PresenceStatus::Online
            } else {
                PresenceStatus::Offline
            },
            last_seen: if online {
                None
            } else {
                self.last_seen.get(&user).map(|t| *t)
            },
        }
    }

    /// Replaces the list of users a connection watches.
    pub fn watch(&self, watcher: &Outbound, old: &[UserId], new: &[UserId]) {
        self.unwatch(watcher.session, old);
        for user in new {
            self.watchers
                .entry(*user)
                .or_default()
                .push(watcher.clone());
        }
    }

    /// Forgets a connection's watch list.
    pub fn unwatch(&self, session: SessionId, users: &[UserId]) {
        for user in users {
            let emptied = match self.watchers.get_mut(user) {
                Some(mut list) => {
                    list.retain(|o| o.session != session);
                    list.is_empty()
                }
                None => false,
            };
            if emptied {
                self.watchers.remove_if(user, |_, list| list.is_empty());
            }
        }
    }

    fn announce(&self, user: UserId, status: PresenceStatus) {
        let Some(list) = self.watchers.get(&user) else {
            return;
        };
        let frame = Arc::new(SharedFrame::new(ServerFrame::PresencePush { user, status }));
        for watcher in list.iter() {
            watcher.push(&frame);
        }
    }
}
