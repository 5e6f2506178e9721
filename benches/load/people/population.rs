//! Who the people of a `--scenario people` run are: users, their conversations and contacts,
//! the businesses and their agents, drawn from a seed. The draw is a pure function of its
//! inputs, so the parent and every worker process make the same population without shipping it
//! (50,000 users and their ~400,000 conversations would be tens of MB of plan file).
//!
//! Users' UUIDs come from the run's nonce (fresh each run, so runs never meet each other's
//! conversations); the businesses' and agents' from the seed alone, so the user service can be
//! told of them before the nodes start (`--print-directory`).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use uuid::Uuid;

/// The knobs of the draw.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Shape {
    pub(crate) users: usize,
    /// Conversations per user, inclusive range.
    pub(crate) convs: (usize, usize),
    /// Contacts per user, inclusive range.
    pub(crate) contacts: (usize, usize),
    /// Businesses (0: a thousandth of the users, at least one).
    pub(crate) businesses: usize,
    pub(crate) seed: u64,
    /// Fresh each run: the users' UUIDs.
    pub(crate) nonce: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConvKind {
    Direct,
    Group,
    Business,
}

/// One conversation to create: `members[0]` creates it; a business conversation lists only its
/// customer (the node assigns the agent).
#[derive(Clone, Debug)]
pub(crate) struct ConvPlan {
    pub(crate) kind: ConvKind,
    pub(crate) members: Vec<u32>,
    pub(crate) business: Option<u32>,
}

pub(crate) struct Business {
    pub(crate) id: Uuid,
    /// Indexes of the users who are its agents.
    pub(crate) agents: Vec<u32>,
}

pub(crate) struct Population {
    pub(crate) users: Vec<Uuid>,
    /// Per user: the users it watches (its contacts, at most 20 of them).
    pub(crate) watch: Vec<Vec<u32>>,
    /// Per user: whether it is an agent (agents stay online: they are at work).
    pub(crate) agent: Vec<bool>,
    pub(crate) convs: Vec<ConvPlan>,
    pub(crate) businesses: Vec<Business>,
}

/// A UUID (version 4 bits) made of two numbers, so a population can be drawn again elsewhere.
fn uuid_of(a: u64, b: u64) -> Uuid {
    uuid::Builder::from_u128(((a as u128) << 64) | b as u128)
        .with_variant(uuid::Variant::RFC4122)
        .with_version(uuid::Version::Random)
        .into_uuid()
}

/// The businesses and their agents, from the seed alone (agents are the first users).
fn draw_businesses(shape: &Shape, rng: &mut StdRng) -> Vec<Business> {
    let n = if shape.businesses > 0 {
        shape.businesses
    } else {
        (shape.users / 1000).max(1)
    };
    let mut next_agent = 0u32;
    (0..n)
        .map(|k| {
            let agents = rng.random_range(3..=10usize).min(shape.users.max(1));
            let agents = (0..agents)
                .map(|_| {
                    let a = next_agent % shape.users.max(1) as u32;
                    next_agent += 1;
                    a
                })
                .collect();
            Business {
                id: uuid_of(shape.seed ^ 0xb051_7e55, k as u64),
                agents,
            }
        })
        .collect()
}

pub(crate) fn draw(shape: &Shape) -> Population {
    let mut rng = StdRng::seed_from_u64(shape.seed ^ shape.nonce.rotate_left(17));
    let mut seed_rng = StdRng::seed_from_u64(shape.seed);
    let businesses = draw_businesses(shape, &mut seed_rng);
    let n = shape.users;
    let mut agent = vec![false; n];
    let mut users: Vec<Uuid> = (0..n as u64).map(|i| uuid_of(shape.nonce, i)).collect();
    for (k, b) in businesses.iter().enumerate() {
        for (j, a) in b.agents.iter().enumerate() {
            agent[*a as usize] = true;
            users[*a as usize] = uuid_of(shape.seed ^ 0xa9e7, ((k as u64) << 16) | j as u64);
        }
    }
    // Each user's conversation slots, split 70/25/5 by kind; direct slots are paired at random
    // and group slots cut into groups of 3–8, as in a configuration model.
    let (mut direct, mut group, mut business) = (Vec::new(), Vec::new(), Vec::new());
    for u in 0..n as u32 {
        let k = rng.random_range(shape.convs.0..=shape.convs.1.max(shape.convs.0));
        for _ in 0..k {
            let x: f64 = rng.random();
            if x < 0.70 {
                direct.push(u);
            } else if x < 0.95 {
                group.push(u);
            } else {
                business.push(u);
            }
        }
    }
    let mut convs = Vec::new();
    let mut pairs = std::collections::HashSet::new();
    direct.shuffle(&mut rng);
    for pair in direct.chunks_exact(2) {
        let (a, b) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
        // a direct conversation with oneself or twice with the same person is not a new one
        if a != b && pairs.insert((a, b)) {
            convs.push(ConvPlan {
                kind: ConvKind::Direct,
                members: vec![pair[0], pair[1]],
                business: None,
            });
        }
    }
    group.shuffle(&mut rng);
    let mut rest = &group[..];
    while rest.len() >= 3 {
        let size = rng.random_range(3..=8usize).min(rest.len());
        let mut members: Vec<u32> = rest[..size].to_vec();
        rest = &rest[size..];
        members.sort_unstable();
        members.dedup();
        if members.len() >= 3 {
            members.shuffle(&mut rng);
            convs.push(ConvPlan {
                kind: ConvKind::Group,
                members,
                business: None,
            });
        }
    }
    let mut asked = std::collections::HashSet::new();
    for u in business {
        let b = rng.random_range(0..businesses.len()) as u32;
        // an agent does not open a chat with its own business; nobody opens the same one twice
        if !businesses[b as usize].agents.contains(&u) && asked.insert((u, b)) {
            convs.push(ConvPlan {
                kind: ConvKind::Business,
                members: vec![u],
                business: Some(b),
            });
        }
    }
    // Contacts: the people one shares chats with first, then others, 10–50 in all; a user
    // watches the first 20.
    let mut known: Vec<Vec<u32>> = vec![Vec::new(); n];
    for c in &convs {
        for a in &c.members {
            for b in &c.members {
                if a != b && known[*a as usize].len() < 64 {
                    known[*a as usize].push(*b);
                }
            }
        }
    }
    let watch = known
        .into_iter()
        .enumerate()
        .map(|(u, mut k)| {
            k.sort_unstable();
            k.dedup();
            k.shuffle(&mut rng);
            let want = rng.random_range(shape.contacts.0..=shape.contacts.1.max(shape.contacts.0));
            while k.len() < want.min(n.saturating_sub(1)) {
                let other = rng.random_range(0..n) as u32;
                if other as usize != u && !k.contains(&other) {
                    k.push(other);
                }
            }
            k.truncate(want.min(20));
            k
        })
        .collect();
    Population {
        users,
        watch,
        agent,
        convs,
        businesses,
    }
}

/// The user service's file (`chat-backend dev-user-service --file`) that knows the seed's
/// businesses and agents: `--print-directory` writes it, so a cluster's nodes can be pointed at
/// a user service that knows them before the run.
pub(crate) fn directory(shape: &Shape) -> serde_json::Value {
    let p = draw(&Shape {
        users: shape.users,
        convs: (0, 0),
        contacts: (0, 0),
        ..shape.clone()
    });
    let mut users = serde_json::Map::new();
    let mut businesses = serde_json::Map::new();
    for (k, b) in p.businesses.iter().enumerate() {
        let agents: Vec<String> = b
            .agents
            .iter()
            .map(|a| p.users[*a as usize].to_string())
            .collect();
        for a in &agents {
            users.insert(a.clone(), json!({"name": format!("Agent {}", &a[..8])}));
        }
        businesses.insert(
            b.id.to_string(),
            json!({"name": format!("Business {k}"), "agents": agents}),
        );
    }
    json!({"users": users, "businesses": businesses})
}
