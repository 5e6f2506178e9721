//! The load tester: `cargo bench --bench load -- [flags]`.
//!
//! It measures, open loop, what a node (or a cluster) sustains: connections ramp up, then every
//! sending connection sends on its own fixed schedule (`--rate` spread over all senders), and
//! latency is measured from the *scheduled* send time, so a stall shows as latency instead of
//! hiding as a lower rate (no coordinated omission). Each message body starts with its scheduled
//! time in µs and the sender's node, so any process can measure delivery latency (and, with
//! several nodes, split it into same-node and cross-node deliveries); receivers record send→delivery,
//! senders send→ack (the `sent` reply, which follows the commit).
//!
//! Knobs: `--url` (repeatable; default: start a release node on a temporary SQLite database, or
//! on `--database-url`, with a stand-in user service so business chats work), `--secret`,
//! `--issuer`, `--audience`, `--private-key PEM`, `--connections`, `--rate` (messages/s in
//! total), `--duration` (s, measured), `--warmup` (s of sending before the measured window,
//! neither counted nor sampled; default 0), `--mix direct=70,group=25,business=5` (shares of the senders),
//! `--group-size`, `--body-bytes`, `--no-mids` (send without a `mid`, as figures before
//! 2026-11-30 did; by default each send carries a fresh one, as real clients do), `--workers`
//! (child processes, each holding a share of the
//! connections: one process may hold at most 20,000 open files here), `--json PATH`, `--idle`
//! (connect and hold, send nothing), `--find-max` (raise the rate until p99 passes
//! `--p99-limit-ms` or a message goes undelivered), `--sweep` (500, 1,000, 2,000, 4,000 msgs/s
//! and up until two rates in a row miss the limit, then the CPU-per-message curve),
//! `--business UUID,...` (real businesses when
//! pointing at `--url`), `--cluster-dir DIR` (the nodes `scripts/cluster start` runs there, as
//! `--url` and `--server-pid`), `--server-pid` (repeatable: the node processes to measure; every
//! PostgreSQL and Redis process of the machine is measured beside them, so a cluster's report
//! gives its total RSS and CPU per message split into nodes, PostgreSQL and Redis). Users,
//! conversations and bodies are made fresh each run (random UUIDs); nothing else is random.
//! `CHAT_LOAD_BIN=PATH` starts another build of the node (before/after comparisons).

mod args;
mod client;
mod cluster_dir;
mod launch;
mod people;
mod plan;
mod report;
mod run;
mod sample;
mod tally;
mod worker;

use clap::Parser;
use uuid::Uuid;

use args::{Args, Scenario, parse_mix};
use launch::start_node;
use plan::{Plan, TokenSpec};
use report::{Report, print_curve, print_table};
use run::run_once;
use tally::now_us;
use worker::run_worker;

/// The rates of `--sweep`, from a quiet node to well past what two cores hold.
const SWEEP_RATES: [f64; 12] = [
    500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 12_000.0, 16_000.0, 20_000.0, 25_000.0, 30_000.0,
    40_000.0, 50_000.0,
];

fn main() {
    let mut args = Args::parse();
    if let Some(dir) = args.cluster_dir.clone() {
        match cluster_dir::read(&dir) {
            Ok(nodes) => {
                for node in nodes {
                    args.url.push(node.url);
                    args.server_pid.extend(node.pid);
                }
            }
            Err(why) => {
                eprintln!("load: {why}");
                std::process::exit(2);
            }
        }
    }
    if args.scenario == Scenario::People {
        people_main(&args);
        return;
    }
    if let (Some(index), Some(path)) = (args.worker, &args.plan) {
        // A worker is one thread: `--workers N` spreads the load over N processes, and a
        // single-threaded runtime spends nothing on waking and stealing between threads.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let plan: Plan =
            serde_json::from_slice(&std::fs::read(path).expect("plan file")).expect("plan JSON");
        let tally = rt.block_on(run_worker(index, plan));
        println!(
            "WORKER_RESULT {}",
            serde_json::to_string(&tally).expect("tally JSON")
        );
        return;
    }
    let mix = parse_mix(&args.mix);
    let mut businesses: Vec<(Uuid, Vec<Uuid>)> = Vec::new();
    let mut started = None;
    let urls = if args.url.is_empty() {
        if mix.2 > 0.0 {
            let n = ((args.connections as f64 * mix.2) / 20.0).ceil().max(1.0) as usize;
            businesses = (0..n)
                .map(|_| (Uuid::new_v4(), vec![Uuid::new_v4(), Uuid::new_v4()]))
                .collect();
        }
        let s = start_node(&args, &businesses);
        let url = s.url.clone();
        started = Some(s);
        vec![url]
    } else {
        if mix.2 > 0.0 && args.business.is_empty() {
            eprintln!(
                "load: no --business given for --url: the business share of the mix is dropped"
            );
        }
        businesses = args
            .business
            .iter()
            .filter_map(|b| Uuid::parse_str(b).ok())
            .map(|b| (b, Vec::new()))
            .collect();
        args.url.clone()
    };
    let mix = if businesses.is_empty() {
        (mix.0, mix.1, 0.0)
    } else {
        mix
    };
    let server_pids: Vec<u32> = match &started {
        Some(s) => vec![s.pid],
        None => args.server_pid.clone(),
    };
    let private_key = args
        .private_key
        .as_ref()
        .map(|p| std::fs::read_to_string(p).expect("read --private-key"));
    let base = Plan {
        urls,
        connections: args.connections,
        workers: args.workers.max(1),
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup.max(0.0),
        mix,
        group_size: args.group_size,
        body_bytes: args.body_bytes,
        mids: !args.no_mids,
        reads_per_msg: args.reads_per_msg.max(0.0),
        idle: args.idle,
        businesses,
        start_us: 0,
        tokens: TokenSpec {
            secret: args.secret.clone(),
            issuer: args.issuer.clone(),
            audience: args.audience.clone(),
            private_key,
        },
    };
    // workers need time to connect before the common start
    let ramp_s = 3.0 + args.connections as f64 / 1500.0;
    let plan_at = |rate: f64| Plan {
        rate,
        start_us: now_us() + ((ramp_s + args.warmup) * 1e6) as u64,
        ..base.clone()
    };

    let report = if args.sweep {
        let mut curve: Vec<Report> = Vec::new();
        let mut missed = 0;
        for rate in SWEEP_RATES {
            println!("-- {rate:.0} msgs/s");
            let r = run_once(&args, &plan_at(rate), &server_pids);
            print_table(&r);
            // One miss can be a passing stall on a shared machine; two in a row is the limit.
            missed = if r.held(args.p99_limit_ms) {
                0
            } else {
                missed + 1
            };
            curve.push(r);
            if missed == 2 {
                break;
            }
        }
        print_curve(&curve, args.p99_limit_ms);
        curve.pop().unwrap_or_default()
    } else if args.find_max {
        let mut rate = args.rate.max(100.0);
        let mut best: Option<Report> = None;
        loop {
            println!("-- trying {rate:.0} msgs/s");
            let r = run_once(&args, &plan_at(rate), &server_pids);
            print_table(&r);
            if !r.held(args.p99_limit_ms) {
                break;
            }
            best = Some(r);
            rate *= 1.25;
        }
        match best {
            Some(b) => {
                println!(
                    "== highest rate with p99 under {} ms and everything delivered: {:.0} msgs/s",
                    args.p99_limit_ms, b.rate
                );
                b
            }
            None => {
                println!("== even {:.0} msgs/s missed the limit", args.rate);
                run_once(&args, &plan_at(args.rate), &server_pids)
            }
        }
    } else {
        let r = run_once(&args, &plan_at(args.rate), &server_pids);
        print_table(&r);
        r
    };
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report).expect("report JSON"),
        )
        .expect("write --json");
    }
    drop(started);
}

/// `--scenario people`: a worker, `--print-directory`, or the parent of a run.
fn people_main(args: &Args) {
    let outcome = if let (Some(index), Some(path)) = (args.worker, &args.plan) {
        std::fs::read(path)
            .map_err(anyhow::Error::from)
            .and_then(|b| Ok(serde_json::from_slice(&b)?))
            .and_then(|plan| people::worker(index, plan))
            .and_then(|tally| {
                println!("WORKER_RESULT {}", serde_json::to_string(&tally)?);
                Ok(())
            })
    } else if let Some(path) = &args.print_directory {
        people::print_directory(args, path)
    } else {
        people::run(args).and_then(|report| {
            report.print();
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            Ok(())
        })
    };
    if let Err(e) = outcome {
        eprintln!("load: {e:#}");
        std::process::exit(2);
    }
}
