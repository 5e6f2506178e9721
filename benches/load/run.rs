//! One measured run, from the parent: the workers started with the plan, the server sampled
//! meanwhile, their tallies gathered into one report.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::args::Args;
use crate::plan::Plan;
use crate::report::{Report, quantiles};
use crate::sample::{Cpu, ServerStats, cpu, rss_kib};
use crate::tally::{Tally, histogram, now_us};

pub(crate) fn run_once(args: &Args, plan: &Plan, server_pids: &[u32]) -> Report {
    let primary = args.primary_pid;
    let dir = tempfile::tempdir().expect("temp dir");
    let plan_path = dir.path().join("plan.json");
    std::fs::write(&plan_path, serde_json::to_vec(plan).expect("plan")).expect("write plan");
    let idle_rss = rss_kib(server_pids);
    let cpu_window = Arc::new(std::sync::Mutex::new((None::<Cpu>, None::<Cpu>)));
    let exe = std::env::current_exe().expect("own path");
    let children: Vec<Child> = (0..plan.workers)
        .map(|i| {
            Command::new(&exe)
                .args(["--worker", &i.to_string(), "--plan"])
                .arg(&plan_path)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let held = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held_at_us = plan.start_us + (plan.duration * 1e6) as u64 - 300_000;
    let send_end_us = plan.start_us + (plan.duration * 1e6) as u64;
    let start_us = plan.start_us;
    let sampler = (!server_pids.is_empty()).then(|| {
        let (peak, held, stop, window) =
            (peak.clone(), held.clone(), stop.clone(), cpu_window.clone());
        let pids = server_pids.to_vec();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // CPU is counted over the sending window only, not the connection ramp
                let now = now_us();
                if let Ok(mut w) = window.lock() {
                    if w.0.is_none() && now >= start_us {
                        w.0 = Some(cpu(&pids, primary));
                    }
                    if w.1.is_none() && now >= send_end_us {
                        w.1 = Some(cpu(&pids, primary));
                    }
                }
                let rss = rss_kib(&pids);
                peak.fetch_max(rss, Ordering::Relaxed);
                if now_us() < held_at_us {
                    held.store(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let mut total = Tally::default();
    let mut ack = histogram();
    let mut delivery = histogram();
    let (mut local, mut cross) = (histogram(), histogram());
    let mut read = histogram();
    for child in children {
        let out = child.wait_with_output().expect("worker output");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find_map(|l| l.strip_prefix("WORKER_RESULT ")) else {
            eprintln!("load: a worker reported nothing");
            total.counts.errors += 1;
            continue;
        };
        let t: Tally = serde_json::from_str(line).expect("worker JSON");
        total.counts.add(&t.counts);
        for (v, n) in t.ack_us {
            let _ = ack.record_n(v, n);
        }
        for (v, n) in t.delivery_us {
            let _ = delivery.record_n(v, n);
        }
        for (v, n) in t.delivery_local_us {
            let _ = local.record_n(v, n);
        }
        for (v, n) in t.delivery_cross_us {
            let _ = cross.record_n(v, n);
        }
        for (v, n) in t.read_us {
            let _ = read.record_n(v, n);
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let server = (!server_pids.is_empty()).then(|| ServerStats {
        nodes: server_pids.len(),
        rss_kib_idle: idle_rss,
        rss_kib_peak: peak.load(Ordering::Relaxed).max(rss_kib(server_pids)),
        rss_kib_held: held.load(Ordering::Relaxed),
        cpu: match cpu_window.lock().map(|w| *w) {
            Ok((Some(a), Some(b))) => b.since(&a),
            _ => Cpu::default(),
        },
    });
    Report {
        counts: total.counts,
        rate: plan.rate,
        duration_s: plan.duration,
        throughput_msgs_s: total.counts.acked as f64 / plan.duration.max(1e-9),
        deliveries_s: total.counts.delivered as f64 / plan.duration.max(1e-9),
        ack_ms: quantiles(&ack),
        delivery_ms: quantiles(&delivery),
        delivery_local_ms: quantiles(&local),
        delivery_cross_ms: quantiles(&cross),
        delivered_cross: cross.len(),
        read_ms: quantiles(&read),
        server,
    }
}
