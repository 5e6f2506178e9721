//! Which node owns a conversation: rendezvous (highest-random-weight) hashing over the live nodes.
//!
//! Every node computes the same owner from the same live set, and when a node leaves only its
//! conversations move. Pure: the live set comes from the caller.

use std::hash::{Hash, Hasher};

use crate::ids::ConversationId;

/// The owner of `conv` among `nodes` (None when the set is empty).
pub fn owner(conv: ConversationId, nodes: &[String]) -> Option<&str> {
    nodes
        .iter()
        .max_by_key(|node| weight(conv, node))
        .map(String::as_str)
}

fn weight(conv: ConversationId, node: &str) -> u64 {
    // FNV-1a: stable across processes and releases, unlike std's randomly seeded hasher.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    conv.0.as_bytes().hash(&mut h);
    node.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        // a final avalanche so that nearby inputs spread over the whole range
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_owns_everything() {
        let nodes = vec!["a".to_owned()];
        assert_eq!(owner(ConversationId::random(), &nodes), Some("a"));
        assert_eq!(owner(ConversationId::random(), &[]), None);
    }

    #[test]
    fn removing_a_node_moves_only_its_conversations_and_load_spreads() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..3000 {
            let conv = ConversationId::random();
            let before = owner(conv, &three).unwrap();
            *counts.entry(before).or_insert(0) += 1;
            let after = owner(conv, &two).unwrap();
            if before != "b" {
                assert_eq!(before, after);
            }
        }
        assert!(counts.values().all(|&n| n > 800), "{counts:?}");
    }
}
