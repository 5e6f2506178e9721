//! What a keyed actor needs of the map it is found in: to leave it.
//!
//! The node keeps its actors in maps of its own (key → actor); an actor that decides to stop (idle,
//! its user gone, its conversation unknown) leaves the map first, so that the next message for its
//! key starts a fresh actor instead of reaching one that is stopping. The actors see only this
//! trait, never the node's registry.

use ractor::ActorId;

/// A map of live actors by key that an actor can leave.
pub trait Directory<K>: Send + Sync + 'static {
    /// Forgets `key` if it still maps to the actor `id` (a newer actor may have replaced it).
    fn leave(&self, key: &K, id: ActorId);
}
