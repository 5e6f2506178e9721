//! `--scenario people`: the seed's users as people behave, on a node or a cluster, measured
//! whole. A population is drawn (`population`), its conversations created over HTTP (`setup`),
//! then worker processes live each user's life (`user`) over a connect ramp and a measured
//! window, while the parent watches every process of the system (`system`) and finally merges
//! the workers' tallies (`events`) into one report (`report`).

mod events;
mod population;
mod report;
mod setup;
mod system;
mod user;

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::args::Args;
use crate::launch::start_node;
use crate::plan::TokenSpec;
use crate::tally::now_us;
use events::{Count, EventTally, Events, Merged};
use population::{Shape, directory, draw};
use system::{Kill, Sources, Watch, work_between};
use user::World;

/// What every worker of a people run is told.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct PeoplePlan {
    pub(crate) urls: Vec<String>,
    pub(crate) workers: usize,
    pub(crate) shape: Shape,
    pub(crate) tokens: TokenSpec,
    pub(crate) msgs_per_user_min: f64,
    pub(crate) drop_per_min: f64,
    pub(crate) leave_per_min: f64,
    pub(crate) body_bytes: usize,
    /// When the first user connects, and over how long the rest follow (µs).
    pub(crate) ramp_start_us: u64,
    pub(crate) ramp_us: u64,
    /// The measured window.
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
}

fn shape_of(args: &Args, nonce: u64) -> Shape {
    Shape {
        users: args.users.max(2),
        convs: args.convs_per_user,
        contacts: args.contacts_per_user,
        businesses: args.businesses,
        seed: args.seed,
        nonce,
    }
}

/// `--print-directory FILE`: the user service's file for the seed's businesses and agents.
pub(crate) fn print_directory(args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    let dir = directory(&shape_of(args, 0));
    std::fs::write(path, serde_json::to_vec_pretty(&dir)?)?;
    Ok(())
}

/// A worker: lives its share of the users (user `i` is worker `i % workers`'s) and prints its
/// tally.
pub(crate) fn worker(index: usize, plan: PeoplePlan) -> anyhow::Result<EventTally> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let pop = draw(&plan.shape);
    let users = pop.users.len();
    let workers = plan.workers.max(1);
    let world = Rc::new(World {
        plan,
        pop,
        events: RefCell::new(Events::new()),
        typing_sent: RefCell::new(HashMap::new()),
        reads_sent: RefCell::new(HashMap::new()),
        gate: Semaphore::new(128),
        acked_max: RefCell::new(HashMap::new()),
        held_min: RefCell::new(HashMap::new()),
        connected_at_end: RefCell::new(0),
        online: RefCell::new(0),
    });
    local.block_on(&rt, async {
        let lives: Vec<_> = (index..users)
            .step_by(workers)
            .map(|i| tokio::task::spawn_local(user::live(world.clone(), i as u32)))
            .collect();
        if index == 0 {
            tokio::task::spawn_local(live_line(world.clone()));
        }
        for l in lives {
            let _ = l.await;
        }
    });
    let mut tally = world.events.borrow().tally();
    tally.connected = *world.connected_at_end.borrow();
    tally.acked_max = to_text(&world.acked_max.borrow());
    tally.held_min = to_text(&world.held_min.borrow());
    Ok(tally)
}

fn to_text(m: &HashMap<Uuid, u64>) -> HashMap<String, u64> {
    m.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Worker 0's line each second: its own share (a `1/workers` sample of the whole).
async fn live_line(world: Rc<World>) {
    let plan = world.plan.clone();
    let mut last = (0, 0, 0);
    let mut second = 0u64;
    tokio::time::sleep(Duration::from_micros(
        plan.ramp_start_us.saturating_sub(now_us()),
    ))
    .await;
    while now_us() < plan.end_us + 3_000_000 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let e = world.events.borrow();
        let get = |k| e.counts.get(&k).copied().unwrap_or(0);
        let now = (
            get(Count::Sent),
            get(Count::Acked),
            get(Count::DeliveredLive),
        );
        let errors: u64 = e.errors.values().sum();
        let phase = match now_us() {
            t if t < plan.start_us => "ramp",
            t if t < plan.end_us => "measured",
            _ => "drain",
        };
        eprintln!(
            "worker 0 ({phase}), second {second}: online {}, sent {}/s, acked {}/s, delivered {}/s, errors {errors}",
            world.online.borrow(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2,
        );
        last = now;
    }
}

/// The parent: draws the population, creates its conversations, runs the workers and watches
/// the system, then reports.
pub(crate) fn run(args: &Args) -> anyhow::Result<report::PeopleReport> {
    let nonce = now_us() ^ u64::from(std::process::id()).rotate_left(40);
    let shape = shape_of(args, nonce);
    let pop = draw(&shape);
    let businesses: Vec<(Uuid, Vec<Uuid>)> = pop
        .businesses
        .iter()
        .map(|b| {
            (
                b.id,
                b.agents.iter().map(|a| pop.users[*a as usize]).collect(),
            )
        })
        .collect();
    let mut started = None;
    let (urls, pids) = if args.url.is_empty() {
        let s = start_node(args, &businesses);
        let out = (vec![s.url.clone()], vec![s.pid]);
        started = Some(s);
        out
    } else {
        (args.url.clone(), args.server_pid.clone())
    };
    let tokens = TokenSpec {
        secret: args.secret.clone(),
        issuer: args.issuer.clone(),
        audience: args.audience.clone(),
        private_key: match &args.private_key {
            Some(p) => Some(std::fs::read_to_string(p)?),
            None => None,
        },
    };
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "people: {} users, {} conversations ({} businesses), {} node(s)",
        pop.users.len(),
        pop.convs.len(),
        pop.businesses.len(),
        urls.len()
    );
    let made = rt.block_on(setup::create_all(&pop, &urls, &tokens, 64));

    println!(
        "people: {} conversations created in {:.1} s ({} failed)",
        made.conversations, made.seconds, made.failed
    );
    // the workers draw the population again before the ramp (about a second per 50,000 users)
    let ramp_start_us = now_us() + 2_000_000 + pop.users.len() as u64 * 40;
    let ramp_us = (args.ramp * 1e6) as u64;
    let start_us = ramp_start_us + ramp_us;
    let end_us = start_us + (args.duration * 1e6) as u64;
    let plan = PeoplePlan {
        urls: urls.clone(),
        workers: args.workers.max(1),
        shape,
        tokens,
        msgs_per_user_min: args.msgs_per_user_min,
        drop_per_min: args.drop_per_min,
        leave_per_min: args.leave_per_min,
        body_bytes: args.body_bytes,
        ramp_start_us,
        ramp_us,
        start_us,
        end_us,
    };
    let kill = match args.kill_node {
        None => None,
        Some(n) => {
            if pids.len() != urls.len() || n >= pids.len() {
                anyhow::bail!(
                    "--kill-node {n}: needs the pid of every node (--cluster-dir, or one --server-pid per --url) and N below {}",
                    urls.len()
                );
            }
            if !(0.0..args.duration).contains(&args.kill_at) {
                anyhow::bail!("--kill-at {}: not within the window", args.kill_at);
            }
            Some(Kill {
                pid: pids[n],
                at_us: start_us + (args.kill_at * 1e6) as u64,
            })
        }
    };
    let dir = tempfile::tempdir()?;
    let plan_path = dir.path().join("people.json");
    std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
    let exe = std::env::current_exe()?;
    let children = (0..plan.workers)
        .map(|i| {
            Command::new(&exe)
                .args(["--scenario", "people", "--worker", &i.to_string(), "--plan"])
                .arg(&plan_path)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tester = std::iter::once(std::process::id())
        .chain(children.iter().map(|c| c.id()))
        .collect();
    let watch = Watch::start(
        pids.clone(),
        tester,
        ramp_start_us,
        start_us,
        end_us,
        Duration::from_secs(5),
        kill,
    );
    let sources = Sources {
        redis_url: args.redis_url.clone(),
        database_url: args.database_url.clone(),
    };
    let db = args.database_url.as_deref();
    let (work, ()) = rt.block_on(async {
        tokio::join!(
            work_between(&sources, start_us, end_us),
            system::keep_analyzed(db, end_us)
        )
    });
    let seen = watch.finish();
    let mut merged = Merged::new();
    let mut lost_workers = 0;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text
            .lines()
            .find_map(|l| l.strip_prefix("WORKER_RESULT "))
            .map(serde_json::from_str::<EventTally>)
        {
            Some(Ok(t)) => merged.add(t),
            _ => lost_workers += 1,
        }
    }
    if lost_workers > 0 {
        *merged.errors.entry("worker_failed".to_owned()).or_default() += lost_workers;
    }
    drop(started);
    Ok(report::PeopleReport::new(
        &plan,
        args.kill_node,
        &pop,
        made,
        &merged,
        seen,
        work,
        pids.len(),
    ))
}
