//! One person's life in a people run: connect (on the ramp), read the list and a few
//! conversations, watch contacts, then type and send at a Poisson rate, read what arrives, drop
//! off the network or leave and come back (catching up with `history` `after`), until the end,
//! when a last catch-up shows whether anything acknowledged is missing.
//!
//! Each user is one task; the worker's tasks share the `World` (one thread, so `RefCell`s
//! borrowed briefly, never across an await).

mod conv;
mod frames;
mod session;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::PeoplePlan;
use super::events::{Count, Events, Timed};
use super::population::Population;
use crate::client::{connect, token};
use crate::tally::now_us;
use conv::Conv;
use session::Session;

/// What every user task of a worker shares.
pub(crate) struct World {
    pub(crate) plan: PeoplePlan,
    pub(crate) pop: Population,
    pub(crate) events: RefCell<Events>,
    /// (conversation, typist) → when its `typing` was sent.
    pub(crate) typing_sent: RefCell<HashMap<(Uuid, Uuid), u64>>,
    /// (conversation, reader) → the `seq` read and when.
    pub(crate) reads_sent: RefCell<HashMap<(Uuid, Uuid), (u64, u64)>>,
    /// Limits handshakes in progress, as a phone's OS does not but a generator must.
    pub(crate) gate: Semaphore,
    /// Per conversation: the highest `seq` acknowledged to a sender here.
    pub(crate) acked_max: RefCell<HashMap<Uuid, u64>>,
    /// Per conversation: the lowest `seq` held by a connected member here at the end.
    pub(crate) held_min: RefCell<HashMap<Uuid, u64>>,
    pub(crate) connected_at_end: RefCell<u64>,
    /// Users connected now (for the live line).
    pub(crate) online: RefCell<i64>,
}

impl World {
    fn measuring(&self, at_us: u64) -> bool {
        at_us >= self.plan.start_us && at_us < self.plan.end_us
    }

    fn count(&self, kind: Count) {
        self.events.borrow_mut().count(kind);
    }

    /// Counts `kind` if `at_us` lies in the measured window.
    fn count_at(&self, kind: Count, at_us: u64) {
        if self.measuring(at_us) {
            self.count(kind);
        }
    }

    fn time_at(&self, kind: Timed, at_us: u64, now: u64) {
        if self.measuring(at_us) {
            self.events
                .borrow_mut()
                .time(kind, now.saturating_sub(at_us));
        }
    }
}

/// How a connected stretch ended.
pub(super) enum Ended {
    /// Lost the network (no close frame): back in seconds.
    Dropped,
    /// Closed the app: back in minutes.
    Left,
    /// The server closed it (or it failed): back in a few seconds.
    Lost,
    /// The run is over.
    Over,
}

/// A user's whole life in the run.
pub(crate) async fn live(world: Rc<World>, me: u32) {
    let plan = &world.plan;
    let uuid = world.pop.users[me as usize];
    let nodes = plan.urls.len();
    let mut node_index = me as usize % nodes;
    let mut refused = 0usize;
    let mut lost_at = None;
    let mut rng = StdRng::seed_from_u64(plan.shape.nonce ^ ((me as u64) << 20) ^ 0x5eed);
    let mut tok = token(&plan.tokens, uuid);
    let mut convs: Vec<Conv> = Vec::new();
    let mut by_id: HashMap<Uuid, usize> = HashMap::new();
    let ramp_at = plan.ramp_start_us + plan.ramp_us * me as u64 / world.pop.users.len() as u64;
    sleep_until_us(ramp_at).await;
    let mut first = true;
    let mut reconnect_from = None;
    loop {
        if now_us() >= plan.end_us {
            break;
        }
        let started = now_us();
        let connected = {
            let _permit = world.gate.acquire().await;
            connect(&plan.urls[node_index], &tok).await
        };
        let Ok((ws, node)) = connected else {
            world.count(Count::ConnectFailures);
            // as a balancer would: the next try goes to another node at once, and only when
            // every node has refused does the app wait before trying again
            refused += 1;
            if nodes > 1 {
                node_index = (node_index + rng.random_range(1..nodes)) % nodes;
            }
            if refused.is_multiple_of(nodes) {
                sleep_us(rng.random_range(1_000_000..5_000_000)).await;
            }
            continue;
        };
        refused = 0;
        let session = Session {
            world: &world,
            me: uuid,
            me_text: uuid.to_string(),
            me_idx: me,
            node,
            convs: &mut convs,
            by_id: &mut by_id,
            rng: &mut rng,
            next_id: 1,
            asked: HashMap::new(),
            catching: None,
            lost_at: &mut lost_at,
        };
        *world.online.borrow_mut() += 1;
        let ended = session.run(ws, started, first, reconnect_from.take()).await;
        *world.online.borrow_mut() -= 1;
        first = false;
        let pause = match ended {
            Ended::Over => break,
            Ended::Dropped => {
                world.count_at(Count::Drops, now_us());
                lost_at = None;
                rng.random_range(1_000_000..10_000_000)
            }
            Ended::Left => {
                world.count_at(Count::Leaves, now_us());
                lost_at = None;
                rng.random_range(60_000_000..300_000_000)
            }
            Ended::Lost => {
                let now = now_us();
                world.count_at(Count::Lost, now);
                lost_at.get_or_insert(now);
                rng.random_range(1_000_000..3_000_000)
            }
        };
        // whoever is away when the run ends stays away
        sleep_us(pause.min(plan.end_us.saturating_sub(now_us()))).await;
        if now_us() >= plan.end_us {
            break;
        }
        world.count_at(Count::Reconnects, now_us());
        reconnect_from = Some(now_us());
        // now and then the app fetches a fresh token
        if rng.random_bool(0.25) {
            tok = token(&plan.tokens, uuid);
            world.count_at(Count::TokenRefreshes, now_us());
        }
    }
}

async fn sleep_until_us(at: u64) {
    sleep_us(at.saturating_sub(now_us())).await;
}

async fn sleep_us(us: u64) {
    tokio::time::sleep(Duration::from_micros(us)).await;
}
