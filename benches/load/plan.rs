//! What each worker process is told (the plan, written to a file it reads), and the
//! conversations it makes of its connections.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What each worker is told.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) urls: Vec<String>,
    pub(crate) connections: usize,
    pub(crate) workers: usize,
    pub(crate) rate: f64,
    pub(crate) duration: f64,
    pub(crate) warmup: f64,
    pub(crate) mix: (f64, f64, f64),
    pub(crate) group_size: usize,
    pub(crate) body_bytes: usize,
    /// Whether each send carries its own `mid`.
    pub(crate) mids: bool,
    /// Reads (`history` and `conversations` in turn) per message sent.
    #[serde(default)]
    pub(crate) reads_per_msg: f64,
    pub(crate) idle: bool,
    /// business → its agents (agents connect in worker 0; empty agent lists against --url)
    pub(crate) businesses: Vec<(Uuid, Vec<Uuid>)>,
    /// When the measured window starts (µs since the epoch), so all workers start together;
    /// the warm-up comes before it.
    pub(crate) start_us: u64,
    pub(crate) tokens: TokenSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct TokenSpec {
    pub(crate) secret: String,
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
    pub(crate) private_key: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Direct,
    Group,
    Business,
}

/// One conversation to create and the senders in it.
pub(crate) struct Room {
    pub(crate) kind: Kind,
    pub(crate) members: Vec<usize>, // indexes into the worker's connections; [0] creates it
    pub(crate) business: Option<Uuid>,
}

pub(crate) fn plan_rooms(plan: &Plan, n: usize, offset: usize) -> Vec<Room> {
    let (d, g, b) = plan.mix;
    let with_agents = !plan.businesses.is_empty();
    let n_group = ((n as f64) * g) as usize / plan.group_size.max(2) * plan.group_size.max(2);
    let n_business = if with_agents || !plan.businesses.is_empty() {
        ((n as f64) * b) as usize
    } else {
        0
    };
    let _ = d;
    let n_direct = (n - n_group.min(n) - n_business.min(n - n_group.min(n))) / 2 * 2;
    let mut rooms = Vec::new();
    let mut i = 0;
    while i + 1 < n_direct {
        rooms.push(Room {
            kind: Kind::Direct,
            members: vec![i, i + 1],
            business: None,
        });
        i += 2;
    }
    let gs = plan.group_size.max(2);
    while i + gs <= n_direct + n_group {
        rooms.push(Room {
            kind: Kind::Group,
            members: (i..i + gs).collect(),
            business: None,
        });
        i += gs;
    }
    let mut k = offset;
    while i < n && !plan.businesses.is_empty() && i < n_direct + n_group + n_business {
        let business = plan.businesses[k % plan.businesses.len()].0;
        rooms.push(Room {
            kind: Kind::Business,
            members: vec![i],
            business: Some(business),
        });
        i += 1;
        k += 1;
    }
    rooms
}
