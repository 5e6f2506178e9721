//! The node's own look-up of live actors by key (not ractor's process-global registry, so two
//! nodes can share a test process).

use std::hash::Hash;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use ractor::{ActorId, ActorRef, SpawnErr};

use crate::directory::Directory;

/// Live actors of one kind, by key.
pub struct ActorMap<K, M> {
    map: DashMap<K, ActorRef<M>>,
}

impl<K: Eq + Hash + Copy, M: Send + 'static> Default for ActorMap<K, M> {
    fn default() -> Self {
        ActorMap {
            map: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Copy, M: Send + 'static> ActorMap<K, M> {
    /// The live actor for `key`.
    pub fn get(&self, key: &K) -> Option<ActorRef<M>> {
        self.map.get(key).map(|r| r.clone())
    }

    /// The live actor for `key`, spawned by `spawn` when there is none. `spawn` must not block:
    /// it runs under the map's shard lock, which makes two racing callers share one actor.
    pub fn get_or_spawn(
        &self,
        key: K,
        spawn: impl FnOnce() -> Result<ActorRef<M>, SpawnErr>,
    ) -> Result<ActorRef<M>, SpawnErr> {
        if let Some(found) = self.map.get(&key) {
            return Ok(found.clone());
        }
        match self.map.entry(key) {
            Entry::Occupied(e) => Ok(e.get().clone()),
            Entry::Vacant(v) => {
                let actor = spawn()?;
                v.insert(actor.clone());
                Ok(actor)
            }
        }
    }

    /// Forgets `key` if it still maps to the actor `id` (a newer actor may have replaced it).
    pub fn forget(&self, key: &K, id: ActorId) {
        self.map.remove_if(key, |_, a| a.get_id() == id);
    }

    /// Forgets whatever key maps to the actor `id` (after a crash, when the key is not at hand).
    pub fn forget_actor(&self, id: ActorId) {
        self.map.retain(|_, a| a.get_id() != id);
    }

    /// Every live actor with its key (a copy: the map may change meanwhile).
    pub fn entries(&self) -> Vec<(K, ActorRef<M>)> {
        self.map
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }

    /// How many are live.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

impl<K: Eq + Hash + Copy + Send + Sync + 'static, M: Send + 'static> Directory<K>
    for ActorMap<K, M>
{
    fn leave(&self, key: &K, id: ActorId) {
        self.forget(key, id);
    }
}
