//! One worker process: connects its share of the users, makes their conversations, then every
//! connection sends on its own schedule and records acks and deliveries; worker 0 prints the
//! live line.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::client::{InFrame, ReadFrame, SendFrame, Ws, call, connect, encode, token};
use crate::plan::{Kind, Plan, plan_rooms};
use crate::tally::{Counts, Tally, aim, histogram, now_us, pairs};

struct Conn {
    user: Uuid,
    url: String,
}

/// Counters shared by a worker's connection tasks, for the live line.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// send→delivery latencies since the last live line, for its p99.
    recent: std::sync::Mutex<Option<Histogram<u64>>>,
}

pub(crate) async fn run_worker(index: usize, plan: Plan) -> Tally {
    let mut tally = Tally::default();
    // this worker's connections: users index, index + workers, ...
    let mine: Vec<usize> = (index..plan.connections)
        .step_by(plan.workers.max(1))
        .collect();
    let mut conns: Vec<Conn> = mine
        .iter()
        .map(|i| Conn {
            user: Uuid::new_v4(),
            url: plan.urls[i % plan.urls.len()].clone(),
        })
        .collect();
    let sending = conns.len();
    // the agents connect in worker 0, so business chats are delivered somewhere
    if index == 0 {
        for (_, agents) in &plan.businesses {
            for (k, a) in agents.iter().enumerate() {
                conns.push(Conn {
                    user: *a,
                    url: plan.urls[k % plan.urls.len()].clone(),
                });
            }
        }
    }
    let bar = ProgressBar::new(conns.len() as u64);
    if index == 0 {
        bar.set_style(
            ProgressStyle::with_template("connecting {bar:40} {pos}/{len} {per_sec}")
                .expect("template"),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let gate = Arc::new(Semaphore::new(256));
    let mut handles = Vec::new();
    for c in &conns {
        let (url, tok, gate, bar) = (
            c.url.clone(),
            token(&plan.tokens, c.user),
            gate.clone(),
            bar.clone(),
        );
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let r = connect(&url, &tok).await;
            bar.inc(1);
            r.ok()
        }));
    }
    let mut sockets: Vec<Option<(Ws, String)>> = Vec::new();
    for h in handles {
        sockets.push(h.await.ok().flatten());
    }
    bar.finish_and_clear();
    tally.counts.connect_errors = sockets.iter().filter(|s| s.is_none()).count() as u64;
    tally.counts.connections = sockets.len() as u64 - tally.counts.connect_errors;
    if plan.idle {
        let until = plan.start_us + (plan.duration * 1e6) as u64;
        let left = Duration::from_micros(until.saturating_sub(now_us()));
        // Each connection keeps reading, as an app does, so the node's pings are answered
        // (tungstenite sends the pong): a socket nobody reads is closed by the node as dead after
        // two heartbeats, and that closing, not quiet users, is what such a run would measure.
        let held: Vec<_> = sockets
            .into_iter()
            .flatten()
            .map(|(mut ws, _)| {
                tokio::spawn(async move {
                    let read = async { while let Some(Ok(_)) = ws.next().await {} };
                    let closed_early = tokio::time::timeout(left, read).await.is_ok();
                    let _ = ws.close(None).await;
                    closed_early
                })
            })
            .collect();
        for h in held {
            if h.await.unwrap_or(true) {
                tally.counts.errors += 1;
            }
        }
        return tally;
    }

    // conversations
    let rooms = plan_rooms(&plan, sending, index);
    let mut conv_of: Vec<Option<(String, Kind, usize)>> = vec![None; sending];
    for room in &rooms {
        let creator = room.members[0];
        let Some((ws, _)) = sockets[creator].as_mut() else {
            continue;
        };
        let users: Vec<String> = room.members[1..]
            .iter()
            .map(|m| conns[*m].user.to_string())
            .collect();
        let req = match room.kind {
            Kind::Direct => json!({"t": "create", "kind": "direct", "members": users}),
            Kind::Group => json!({"t": "create", "kind": "group", "members": users}),
            Kind::Business => {
                json!({"t": "create", "kind": "business", "business": room.business.map(|b| b.to_string())})
            }
        };
        match call(ws, 1, req).await {
            Some(r) if r["t"] == "conversation" => {
                let id = r["conversation"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let fanout = match room.kind {
                    Kind::Direct => 1,
                    Kind::Group => room.members.len() - 1,
                    Kind::Business if plan.businesses.iter().any(|(_, a)| !a.is_empty()) => 1,
                    Kind::Business => 0,
                };
                for m in &room.members {
                    conv_of[*m] = Some((id.clone(), room.kind, fanout));
                }
            }
            other => {
                tally.counts.errors += 1;
                eprintln!("load: create failed: {other:?}");
            }
        }
    }
    let senders = conv_of.iter().filter(|c| c.is_some()).count().max(1);
    let worker_rate = plan.rate / plan.workers.max(1) as f64;
    let per_sender = worker_rate / senders as f64;
    let interval_us = if per_sender > 0.0 {
        (1e6 / per_sender) as u64
    } else {
        u64::MAX
    };
    let live = Arc::new(Live::default());
    let end_us = plan.start_us + (plan.duration * 1e6) as u64;

    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let Some((ws, node)) = ws else { continue };
        let role = conv_of.get(i).cloned().flatten();
        let live = live.clone();
        let payload = Payload {
            body_bytes: plan.body_bytes,
            mids: plan.mids,
            reads_per_msg: plan.reads_per_msg,
        };
        // spread the senders' phases over one interval
        let phase = if senders > 0 && interval_us != u64::MAX {
            interval_us * (i as u64 % senders as u64) / senders as u64
        } else {
            0
        };
        let warmup_us = (plan.warmup * 1e6) as u64;
        let start = plan.start_us - warmup_us + phase;
        let schedule = Schedule {
            start_us: start,
            measure_from_us: plan.start_us,
            end_us,
            interval_us,
        };
        tasks.push(tokio::spawn(connection(
            ws, node, role, schedule, payload, live,
        )));
    }
    if index == 0 {
        tokio::spawn(live_line(live.clone(), plan.start_us, end_us));
    }
    let mut ack = histogram();
    let mut delivery = histogram();
    let (mut local, mut cross) = (histogram(), histogram());
    let mut read = histogram();
    for t in tasks {
        if let Ok(r) = t.await {
            tally.counts.add(&r.counts);
            let _ = ack.add(&r.ack);
            let _ = delivery.add(&r.delivery);
            let _ = local.add(&r.delivery_local);
            let _ = cross.add(&r.delivery_cross);
            let _ = read.add(&r.read);
        }
    }
    tally.read_us = pairs(&read);
    tally.delivery_local_us = pairs(&local);
    tally.delivery_cross_us = pairs(&cross);
    tally.ack_us = pairs(&ack);
    tally.delivery_us = pairs(&delivery);
    tally
}

struct ConnResult {
    counts: Counts,
    ack: Histogram<u64>,
    delivery: Histogram<u64>,
    /// Deliveries from a sender on this connection's node, and from one on another node.
    delivery_local: Histogram<u64>,
    delivery_cross: Histogram<u64>,
    /// Request→reply of the reads.
    read: Histogram<u64>,
}

/// One connection: sends on its schedule (if it sends), records acks and deliveries, and after
/// the end waits a little for what is still in flight.
/// When one connection sends (µs since the epoch).
struct Schedule {
    /// Its first send (warm-up included).
    start_us: u64,
    /// Sends scheduled from here on are measured.
    measure_from_us: u64,
    /// No sends from here on.
    end_us: u64,
    /// Between two sends.
    interval_us: u64,
}

/// What each send of a connection carries.
struct Payload {
    /// Bytes of the body.
    body_bytes: usize,
    /// A fresh `mid` on each send.
    mids: bool,
    /// Reads after the sends, per send.
    reads_per_msg: f64,
}

async fn connection(
    mut ws: Ws,
    node: String,
    role: Option<(String, Kind, usize)>,
    schedule: Schedule,
    payload: Payload,
    live: Arc<Live>,
) -> ConnResult {
    let mut r = ConnResult {
        counts: Counts::default(),
        ack: histogram(),
        delivery: histogram(),
        delivery_local: histogram(),
        delivery_cross: histogram(),
        read: histogram(),
    };
    let mut pending: HashMap<u64, u64> = HashMap::new(); // request id → scheduled µs
    let mut reads: HashMap<u64, u64> = HashMap::new(); // read's id → asked µs (measured ones)
    let mut read_credit = 0.0;
    let mut read_history = true;
    let Schedule {
        start_us,
        measure_from_us,
        end_us,
        interval_us,
    } = schedule;
    let mut next_us = start_us;
    let mut id = 10u64;
    let drain_until = end_us + 5_000_000;
    // The body: scheduled µs, the sender's node (so a receiver can tell a delivery that crossed
    // nodes), padding to --body-bytes.
    let pad = "x".repeat(payload.body_bytes.saturating_sub(18 + node.len()));
    let mut mid_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    // One timer for the connection, moved rather than made anew on every frame.
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let now = now_us();
        let sending = role.is_some() && next_us < end_us;
        let quiet = pending.is_empty() && reads.is_empty();
        if !sending && (now > drain_until || (quiet && now > end_us + 2_000_000)) {
            break;
        }
        let wake = if sending {
            next_us
        } else {
            drain_until.min(now + 100_000)
        };
        aim(timer.as_mut(), wake, now);
        tokio::select! {
            _ = &mut timer => {
                if !sending {
                    continue;
                }
                if let Some((conv, _, fanout)) = &role {
                    id += 1;
                    let body = format!("{next_us:016}|{node}|{pad}");
                    let mid = if payload.mids {
                        Some(&*Uuid::new_v4().hyphenated().encode_lower(&mut mid_text))
                    } else {
                        None
                    };
                    let out = SendFrame { t: "send", id, conv, mid, body: &body };
                    if ws.send(encode(&out)).await.is_err() {
                        r.counts.errors += 1;
                        break;
                    }
                    pending.insert(id, next_us);
                    let measured = next_us >= measure_from_us;
                    if measured {
                        r.counts.sent += 1;
                        r.counts.expected_deliveries += *fanout as u64;
                        live.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    read_credit += payload.reads_per_msg;
                    while read_credit >= 1.0 {
                        read_credit -= 1.0;
                        id += 1;
                        let conv = read_history.then_some(conv.as_str());
                        read_history = !read_history;
                        let t = if conv.is_some() { "history" } else { "conversations" };
                        if ws.send(encode(&ReadFrame { t, id, conv, limit: 20 })).await.is_err() {
                            r.counts.errors += 1;
                            break;
                        }
                        if measured {
                            reads.insert(id, now_us());
                        }
                    }
                }
                next_us += interval_us;
            }
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { r.counts.errors += 1; break };
                let Message::Binary(bytes) = &msg else { continue };
                let Ok(f) = rmp_serde::from_slice::<InFrame>(bytes) else { continue };
                let now = now_us();
                match f.t {
                    "sent" => {
                        if let Some(at) = f.id.and_then(|i| pending.remove(&i)).filter(|at| *at >= measure_from_us) {
                            r.counts.acked += 1;
                            live.acked.fetch_add(1, Ordering::Relaxed);
                            let _ = r.ack.record(now.saturating_sub(at).max(1));
                        }
                    }
                    "history" | "conversations" => {
                        if let Some(at) = f.id.and_then(|i| reads.remove(&i)) {
                            r.counts.reads += 1;
                            let _ = r.read.record(now.saturating_sub(at).max(1));
                        }
                    }
                    "error" => {
                        if let Some(i) = f.id {
                            pending.remove(&i);
                            reads.remove(&i);
                        }
                        if f.code == Some("rate_limited") { r.counts.rate_limited += 1 } else { r.counts.errors += 1 }
                    }
                    "message" => {
                        if let Some(at) = f.body.and_then(|b| b.get(..16)).and_then(|t| t.parse::<u64>().ok()).filter(|at| *at >= measure_from_us) {
                            r.counts.delivered += 1;
                            live.delivered.fetch_add(1, Ordering::Relaxed);
                            let latency = now.saturating_sub(at).max(1);
                            let _ = r.delivery.record(latency);
                            let from = f.body.and_then(|b| b.get(17..)).and_then(|b| b.split_once('|')).map(|(n, _)| n);
                            let split = if from == Some(node.as_str()) { &mut r.delivery_local } else { &mut r.delivery_cross };
                            let _ = split.record(latency);
                            if let Ok(mut recent) = live.recent.lock() {
                                let _ = recent.get_or_insert_with(histogram).record(latency);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    r
}

async fn live_line(live: Arc<Live>, start_us: u64, end_us: u64) {
    tokio::time::sleep(Duration::from_micros(start_us.saturating_sub(now_us()))).await;
    // On a terminal the line is redrawn in place; into a file or a pipe it is printed each second.
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
    let plain = !std::io::stderr().is_terminal();
    let (mut last_sent, mut last_acked, mut last_delivered) = (0, 0, 0);
    let mut second = 0;
    while now_us() < end_us + 2_000_000 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let (s, a, d) = (
            live.sent.load(Ordering::Relaxed),
            live.acked.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed),
        );
        let p99 = live
            .recent
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
            .unwrap_or(0.0);
        let line = format!(
            "worker 0, second {second}: sent {}/s  acked {}/s  delivered {}/s  delivery p99 {p99:.1} ms  (total sent {s}, acked {a}, delivered {d})",
            s - last_sent,
            a - last_acked,
            d - last_delivered
        );
        if plain {
            eprintln!("{line}");
        } else {
            bar.set_message(line);
            bar.tick();
        }
        (last_sent, last_acked, last_delivered) = (s, a, d);
    }
    bar.finish_and_clear();
}
