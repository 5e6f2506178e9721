//! The server's side of a run, read from `/proc`: the nodes' resident memory and the CPU of the
//! nodes, PostgreSQL, Redis and nginx.

use serde::Serialize;

#[derive(Serialize, Default, Clone, Copy)]
pub(crate) struct ServerStats {
    /// Nodes measured (their RSS is summed).
    pub(crate) nodes: usize,
    /// Before the first connection.
    pub(crate) rss_kib_idle: u64,
    /// The highest seen, connecting and closing included.
    pub(crate) rss_kib_peak: u64,
    /// With every connection open, just before the end of the run (steady state).
    pub(crate) rss_kib_held: u64,
    /// CPU seconds over the sending window.
    pub(crate) cpu: Cpu,
}

/// CPU seconds by who spent them: the nodes, PostgreSQL (every `postgres` process: its
/// backends work for the nodes) and Redis (every `redis-server`).
#[derive(Serialize, Default, Clone, Copy)]
pub(crate) struct Cpu {
    pub(crate) nodes_s: f64,
    pub(crate) postgres_s: f64,
    /// Of `postgres_s`, the primary's (with `--primary-pid`).
    pub(crate) postgres_primary_s: f64,
    pub(crate) redis_s: f64,
    /// Every `nginx` process (a cluster's balancer).
    pub(crate) nginx_s: f64,
    /// The tester's own processes (the people scenario's: its parent and workers): not the
    /// server's, so not in [`Cpu::total`], but they share the machine's cores with it.
    pub(crate) tester_s: f64,
}

impl Cpu {
    pub(crate) fn total(&self) -> f64 {
        self.nodes_s + self.postgres_s + self.redis_s + self.nginx_s
    }

    pub(crate) fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            nodes_s: self.nodes_s - before.nodes_s,
            postgres_s: self.postgres_s - before.postgres_s,
            postgres_primary_s: self.postgres_primary_s - before.postgres_primary_s,
            redis_s: self.redis_s - before.redis_s,
            nginx_s: self.nginx_s - before.nginx_s,
            tester_s: self.tester_s - before.tester_s,
        }
    }
}

pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Proportional resident KiB (PSS) of every process named `postgres`, `redis-server` and
/// `nginx`, in that order.
pub(crate) fn rss_by_name() -> [u64; 3] {
    let mut sums = [0u64; 3];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return sums;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let slot = match std::fs::read_to_string(format!("/proc/{name}/comm")).as_deref() {
            Ok("postgres\n") => 0,
            Ok("redis-server\n") => 1,
            Ok("nginx\n") => 2,
            _ => continue,
        };
        // proportional set size: PostgreSQL's backends share its buffers, and summing their
        // RSS would count the shared memory once per backend
        sums[slot] += std::fs::read_to_string(format!("/proc/{name}/smaps_rollup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Pss:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
    }
    sums
}

/// CPU seconds (user + system) of one process.
pub(crate) fn process_cpu_s(pid: &str) -> f64 {
    cpu_and_parent(pid).map_or(0.0, |(cpu, _)| cpu)
}

/// CPU seconds (user + system) of one process and of its children that have exited (the
/// kernel adds a child's time to its parent's when the parent reaps it), and its parent's pid.
/// The children's share is what keeps a sum over PostgreSQL's processes from going down when a
/// backend exits between two samples: its time moves to the postmaster's.
fn cpu_and_parent(pid: &str) -> Option<(f64, u32)> {
    let ticks = 100.0; // USER_HZ on Linux
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, cutime, cstime
    let mut cpu = 0.0;
    for i in 11..=14 {
        cpu += f.get(i)?.parse::<f64>().ok()?;
    }
    Some((cpu / ticks, f.get(1)?.parse().ok()?))
}

/// CPU so far of the node processes `pids`, of every PostgreSQL and Redis process this user can
/// see, and of the PostgreSQL whose postmaster is `primary` (it and its children).
pub(crate) fn cpu(pids: &[u32], primary: Option<u32>) -> Cpu {
    let mut c = Cpu {
        nodes_s: pids.iter().map(|p| process_cpu_s(&p.to_string())).sum(),
        ..Cpu::default()
    };
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            match std::fs::read_to_string(format!("/proc/{name}/comm")).as_deref() {
                Ok("postgres\n") => {
                    let (cpu, parent) = cpu_and_parent(&name).unwrap_or_default();
                    c.postgres_s += cpu;
                    let pid = name.parse().ok();
                    if primary.is_some() && (pid == primary || Some(parent) == primary) {
                        c.postgres_primary_s += cpu;
                    }
                }
                Ok("redis-server\n") => c.redis_s += process_cpu_s(&name),
                Ok("nginx\n") => c.nginx_s += process_cpu_s(&name),
                _ => {}
            }
        }
    }
    c
}
