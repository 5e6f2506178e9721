//! Nodes that left the live set but whose users are still held present here, for a grace.
//!
//! A node drops out of the live set when its heartbeat is late by the dead-node window: it may
//! be dead, or only stalled (a runtime far behind under load, a pause of the process, a slow
//! Redis). Telling every watcher of its users "offline" at once, and "online" again a moment
//! later when it beats again, is a storm of two pushes per watcher per user of that node that
//! says nothing true. So the node's users stay present here for [`GRACE`] more; a node that
//! comes back (or is heard from) in time costs its watchers nothing, and one that does not is
//! forgotten then. Work the node owned moves at once all the same: only presence waits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a node out of the live set keeps its users present here. Added to the dead-node
/// window (3 s) and a heartbeat or two, a dead node's users go offline within about 8 s.
pub(super) const GRACE: Duration = Duration::from_secs(3);

/// The nodes gone from the live set whose users are still held, and since when.
#[derive(Debug, Default)]
pub(super) struct Departed {
    since: HashMap<String, Instant>,
}

impl Departed {
    /// `node` left the live set at `now`.
    pub(super) fn left(&mut self, node: &str, now: Instant) {
        self.since.entry(node.to_owned()).or_insert(now);
    }

    /// `node` spoke (it sent its roster): it lives, whatever the live set says yet, so its grace
    /// starts again. A node not held here is left alone.
    pub(super) fn heard_from(&mut self, node: &str, now: Instant) {
        if let Some(since) = self.since.get_mut(node) {
            *since = now;
        }
    }

    /// The live set is `live` now: the held nodes in it are back, and are returned (no longer held).
    pub(super) fn back(&mut self, live: &[String]) -> Vec<String> {
        self.since
            .extract_if(|n, _| live.contains(n))
            .map(|(n, _)| n)
            .collect()
    }

    /// The held nodes whose grace has run out at `now`, no longer held: their users are to be
    /// forgotten.
    pub(super) fn overdue(&mut self, now: Instant) -> Vec<String> {
        self.since
            .extract_if(|_, since| now.duration_since(*since) >= GRACE)
            .map(|(n, _)| n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_node_is_forgotten_only_once_its_grace_has_run_out() {
        let t0 = Instant::now();
        let mut departed = Departed::default();
        departed.left("b", t0);
        assert!(departed.overdue(t0 + GRACE / 2).is_empty());
        assert_eq!(departed.overdue(t0 + GRACE), names(&["b"]));
        // Forgotten once, not again at the next heartbeat.
        assert!(departed.overdue(t0 + GRACE * 3).is_empty());
    }

    #[test]
    fn a_node_back_in_the_live_set_in_time_is_never_forgotten() {
        let t0 = Instant::now();
        let mut departed = Departed::default();
        departed.left("b", t0);
        departed.left("c", t0);
        assert_eq!(departed.back(&names(&["a", "b"])), names(&["b"]));
        assert_eq!(departed.overdue(t0 + GRACE), names(&["c"]));
    }

    #[test]
    fn leaving_again_while_held_keeps_the_first_departure() {
        let t0 = Instant::now();
        let mut departed = Departed::default();
        departed.left("b", t0);
        departed.left("b", t0 + GRACE / 2);
        assert_eq!(departed.overdue(t0 + GRACE), names(&["b"]));
    }

    #[test]
    fn a_node_heard_from_starts_its_grace_again_and_a_stranger_is_not_held() {
        let t0 = Instant::now();
        let mut departed = Departed::default();
        departed.left("b", t0);
        departed.heard_from("b", t0 + GRACE / 2);
        departed.heard_from("c", t0);
        assert!(departed.overdue(t0 + GRACE).is_empty());
        assert_eq!(departed.overdue(t0 + GRACE + GRACE / 2), names(&["b"]));
    }
}
