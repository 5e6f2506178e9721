//! Who is online, when they were last seen, and which connections here watch whom.
//!
//! A user is online while a UserActor of theirs lives on any node: here (`online`) or, in a
//! cluster, on the nodes other nodes announced (`remote`). The board is shared by the node's
//! actors and sessions; each map entry is touched under its DashMap shard lock only, never across
//! an await.

use std::sync::Arc;

use dashmap::{DashMap, DashSet};
use ractor::ActorId;
use smallvec::SmallVec;

use super::outbound::Outbound;
use crate::clock::now_ms;
use crate::ids::{SessionId, UserId};
use crate::protocol::{PresenceItem, PresenceStatus, ServerFrame, SharedFrame};

/// Presence of this node's users and the watch lists of its connections.
#[derive(Debug, Default)]
pub struct PresenceBoard {
    /// Users online here, with the actor that holds them (a stopping actor must not mark a user
    /// offline whom a newer actor already holds).
    online: DashMap<UserId, ActorId>,
    /// Users online on other nodes, and which. Every user connected anywhere else has an entry
    /// on every node, so entries are lean: a user is on one node nearly always (inline, no
    /// heap block), and node names are shared, not a string per entry.
    remote: DashMap<UserId, SmallVec<[Arc<str>; 1]>>,
    /// The node names `remote` refers to, each held once.
    node_names: DashSet<Arc<str>>,
    /// When each user who went offline here was last seen.
    last_seen: DashMap<UserId, i64>,
    /// Watched user → the connections watching them.
    watchers: DashMap<UserId, Vec<Outbound>>,
    /// Business → its agents (as last heard from the user service).
    agents: DashMap<UserId, Vec<UserId>>,
    /// Agent → the businesses they serve.
    businesses: DashMap<UserId, Vec<UserId>>,
    /// Ids the database said are not businesses, and until when (ms) that answer stands: a
    /// `watch` or `presence` of ordinary users does not ask the database again each time.
    not_businesses: DashMap<UserId, i64>,
}

/// How long "not a business" stands before it is asked again (a business's first chat may be
/// made on another node meanwhile).
const NOT_A_BUSINESS_FOR_MS: i64 = 60_000;
/// Past this many remembered ids the memory starts over, so it never grows without bound.
const NOT_A_BUSINESS_MAX: usize = 200_000;

impl PresenceBoard {
    /// `user` is online here, held by `actor`; tells their watchers if that is news. True when
    /// the user was not held here before (other nodes must hear of it).
    pub fn set_online(&self, user: UserId, actor: ActorId) -> bool {
        let was_online = self.is_online(user);
        let was_here = self.online.insert(user, actor).is_some();
        if !was_online {
            self.came_online(user);
        }
        !was_here
    }

    /// `user`'s actor `actor` stopped; unless a newer one holds them, they are not here any more.
    /// True when they left this node (other nodes must hear of it).
    pub fn set_offline(&self, user: UserId, actor: ActorId) -> bool {
        let left = self.online.remove_if(&user, |_, a| *a == actor).is_some();
        if left && !self.is_online(user) {
            self.went_offline(user);
        }
        left
    }

    /// Another node says `user` is (not) connected there.
    pub fn set_remote(&self, user: UserId, node: &str, online: bool) {
        let was_online = self.is_online(user);
        if online {
            let name = self.node_name(node);
            let mut nodes = self.remote.entry(user).or_default();
            if !nodes.iter().any(|n| **n == *node) {
                nodes.push(name);
            }
        } else {
            if let Some(mut nodes) = self.remote.get_mut(&user) {
                nodes.retain(|n| **n != *node);
            }
            self.remote.remove_if(&user, |_, nodes| nodes.is_empty());
        }
        match (was_online, self.is_online(user)) {
            (false, true) => self.came_online(user),
            (true, false) => self.went_offline(user),
            _ => {}
        }
    }

    /// The shared copy of a node's name.
    fn node_name(&self, node: &str) -> Arc<str> {
        if let Some(name) = self.node_names.get(node) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(node);
        self.node_names.insert(name.clone());
        name
    }

    /// `node` says exactly `users` are connected there.
    pub fn set_roster(&self, node: &str, users: &[UserId]) {
        let listed: std::collections::HashSet<&UserId> = users.iter().collect();
        let gone: Vec<UserId> = self
            .remote
            .iter()
            .filter(|e| e.value().iter().any(|n| **n == *node) && !listed.contains(e.key()))
            .map(|e| *e.key())
            .collect();
        for user in gone {
            self.set_remote(user, node, false);
        }
        for user in users {
            self.set_remote(*user, node, true);
        }
    }

    /// `node` left the cluster: its users are no longer connected there.
    pub fn forget_node(&self, node: &str) {
        let users: Vec<UserId> = self
            .remote
            .iter()
            .filter(|e| e.value().iter().any(|n| **n == *node))
            .map(|e| *e.key())
            .collect();
        for user in users {
            self.set_remote(user, node, false);
        }
    }

    /// Calls `f` with each other node where `user` is connected (under the entry's shard lock:
    /// `f` must not touch the board).
    pub fn for_each_remote_node(&self, user: UserId, mut f: impl FnMut(&Arc<str>)) {
        if let Some(nodes) = self.remote.get(&user) {
            for node in nodes.iter() {
                f(node);
            }
        }
    }

    /// Every user connected here.
    pub fn local_users(&self) -> Vec<UserId> {
        self.online.iter().map(|e| *e.key()).collect()
    }

    fn came_online(&self, user: UserId) {
        self.announce(user, PresenceStatus::Online);
        for business in self.businesses_of(user) {
            // the first agent online brings the business online
            if self.online_agents(business) == 1 {
                self.announce(business, PresenceStatus::Online);
            }
        }
    }

    fn went_offline(&self, user: UserId) {
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

    /// Records the agents of `business`, whose presence is any of theirs; its watchers hear
    /// if that changes what they were told.
    pub fn set_business_agents(&self, business: UserId, agents: &[UserId]) {
        let was = self.status(business).status;
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
        let now = self.status(business).status;
        if now != was {
            self.announce(business, now);
        }
    }

    /// Whether the database should be asked if `id` is a business: its agents are not known
    /// here, it is not online itself (a user), and no recent answer said it is not one.
    pub fn business_unknown(&self, id: UserId) -> bool {
        !self.agents.contains_key(&id)
            && !self.is_online(id)
            && self
                .not_businesses
                .get(&id)
                .is_none_or(|until| *until <= now_ms())
    }

    /// The database said none of `ids` is a business.
    pub fn not_businesses(&self, ids: impl IntoIterator<Item = UserId>) {
        if self.not_businesses.len() > NOT_A_BUSINESS_MAX {
            self.not_businesses.clear();
        }
        let until = now_ms() + NOT_A_BUSINESS_FOR_MS;
        for id in ids {
            self.not_businesses.insert(id, until);
        }
    }

    /// Whether `user` has a connection on any node.
    pub fn is_online(&self, user: UserId) -> bool {
        self.online.contains_key(&user) || self.remote.contains_key(&user)
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
        agents.iter().filter(|a| self.is_online(**a)).count()
    }

    /// The status of `user` on this node.
    pub fn status(&self, user: UserId) -> PresenceItem {
        let online = if self.agents.contains_key(&user) {
            self.online_agents(user) > 0
        } else {
            self.is_online(user)
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
