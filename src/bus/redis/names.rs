//! The names this deployment uses in Redis: a channel per node and one for all, the live set and
//! the incarnations. On a Redis Cluster every channel hashes to its own slot (so the nodes'
//! traffic spreads over the shards), while the two membership keys carry the prefix as a hash
//! tag, because the heartbeat script touches both at once and a script's keys must share a slot.

/// The names, for one node of one deployment.
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
    node_id: String,
    cluster: bool,
}

impl Names {
    pub(super) fn new(prefix: &str, node_id: &str, cluster: bool) -> Names {
        Names {
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
            cluster,
        }
    }

    /// This node's name.
    pub(super) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The channel `node` listens on.
    pub(super) fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// The channel every node listens on.
    pub(super) fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }

    /// The live set: node → its last heartbeat, on Redis's clock.
    pub(super) fn nodes_key(&self) -> String {
        format!("{}:nodes", self.membership_prefix())
    }

    /// Node → the incarnation it beats with.
    pub(super) fn incarnations_key(&self) -> String {
        format!("{}:incarnations", self.membership_prefix())
    }

    /// On a single Redis the names of before Redis Cluster support (so a rolling upgrade keeps
    /// one live set); on a cluster the prefix as a hash tag.
    fn membership_prefix(&self) -> String {
        if self.cluster {
            format!("{{{}}}", self.prefix)
        } else {
            self.prefix.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_cluster_the_membership_keys_share_a_slot_and_the_channels_do_not_need_to() {
        let single = Names::new("chat", "node-1", false);
        assert_eq!(single.nodes_key(), "chat:nodes");
        assert_eq!(single.incarnations_key(), "chat:incarnations");
        let cluster = Names::new("chat", "node-1", true);
        assert_eq!(cluster.nodes_key(), "{chat}:nodes");
        assert_eq!(cluster.incarnations_key(), "{chat}:incarnations");
        assert_eq!(cluster.node_channel("node-2"), "chat:node:node-2");
        assert_eq!(cluster.all_channel(), "chat:all");
    }
}
