//! The report: quantiles, the table printed after a run, the `--sweep` curve, and whether a run
//! held its limits.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::sample::ServerStats;
use crate::tally::Counts;

#[derive(Serialize, Default, Clone, Copy)]
pub(crate) struct Quantiles {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

pub(crate) fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Quantiles {
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

#[derive(Serialize, Default)]
pub(crate) struct Report {
    #[serde(flatten)]
    pub(crate) counts: Counts,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) throughput_msgs_s: f64,
    pub(crate) deliveries_s: f64,
    pub(crate) ack_ms: Quantiles,
    pub(crate) delivery_ms: Quantiles,
    /// Deliveries whose sender was on the receiver's node, and on another node.
    pub(crate) delivery_local_ms: Quantiles,
    pub(crate) delivery_cross_ms: Quantiles,
    pub(crate) delivered_cross: u64,
    /// Request→reply of the reads (`--reads-per-msg`).
    pub(crate) read_ms: Quantiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<ServerStats>,
}

impl Report {
    /// Everything acknowledged and delivered, no error, and both p99s within `limit_ms`.
    pub(crate) fn held(&self, limit_ms: f64) -> bool {
        let c = &self.counts;
        c.acked == c.sent
            && c.delivered >= c.expected_deliveries
            && c.errors == 0
            && self.delivery_ms.p99 <= limit_ms
            && self.ack_ms.p99 <= limit_ms
    }
}

/// The `--sweep` summary: one line per rate.
pub(crate) fn print_curve(curve: &[Report], limit_ms: f64) {
    println!("== CPU per acked message by rate (p99 limit {limit_ms} ms)");
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8}  held",
        "rate", "acked/s", "p50 ms", "p99 ms", "µs/msg", "nodes", "pg", "redis"
    );
    for r in curve {
        let cpu = r.server.map(|s| s.cpu).unwrap_or_default();
        let per = |s: f64| s * 1e6 / r.counts.acked.max(1) as f64;
        println!(
            "{:>8.0} {:>9.0} {:>9.2} {:>9.2} {:>10.1} {:>8.1} {:>8.1} {:>8.1}  {}",
            r.rate,
            r.throughput_msgs_s,
            r.delivery_ms.p50,
            r.delivery_ms.p99,
            per(cpu.total()),
            per(cpu.nodes_s),
            per(cpu.postgres_s),
            per(cpu.redis_s),
            if r.held(limit_ms) { "yes" } else { "no" }
        );
    }
}

pub(crate) fn print_table(r: &Report) {
    let c = &r.counts;
    println!(
        "connections {:>10}   (connect errors {})",
        c.connections, c.connect_errors
    );
    println!(
        "sent        {:>10}   acked {}   delivered {}/{} expected",
        c.sent, c.acked, c.delivered, c.expected_deliveries
    );
    println!(
        "errors      {:>10}   rate_limited {}",
        c.errors, c.rate_limited
    );
    if c.reads > 0 {
        println!("reads       {:>10}   answered", c.reads);
    }
    println!(
        "throughput  {:>10.0} msgs/s acked, {:.0} deliveries/s",
        r.throughput_msgs_s, r.deliveries_s
    );
    let mut rows = vec![("send→ack", r.ack_ms), ("send→delivery", r.delivery_ms)];
    if r.delivered_cross > 0 {
        // Several nodes: the deliveries whose sender was on the same node, and on another.
        rows.push(("  same node", r.delivery_local_ms));
        rows.push(("  cross-node", r.delivery_cross_ms));
    }
    if c.reads > 0 {
        rows.push(("read", r.read_ms));
    }
    for (name, q) in rows {
        println!(
            "{name:<14} p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}",
            q.p50, q.p90, q.p99, q.p999, q.max
        );
    }
    if let Some(s) = r.server {
        let per_conn = |rss: u64| {
            if c.connections > 0 {
                rss.saturating_sub(s.rss_kib_idle) as f64 / c.connections as f64
            } else {
                0.0
            }
        };
        let per_msg = |cpu_s: f64| {
            if c.acked > 0 {
                cpu_s * 1e6 / c.acked as f64
            } else {
                0.0
            }
        };
        let nodes = if s.nodes == 1 {
            "server".to_owned()
        } else {
            format!("{} nodes", s.nodes)
        };
        println!(
            "{nodes:<11} RSS idle {} KiB, held {} KiB ({:.1} KiB per connection), peak {} KiB ({:.1} per connection)",
            s.rss_kib_idle,
            s.rss_kib_held,
            per_conn(s.rss_kib_held),
            s.rss_kib_peak,
            per_conn(s.rss_kib_peak)
        );
        if c.acked == 0 {
            println!(
                "server CPU  {:.2} s: nodes {:.2} + PostgreSQL {:.2} + Redis {:.2}",
                s.cpu.total(),
                s.cpu.nodes_s,
                s.cpu.postgres_s,
                s.cpu.redis_s
            );
            return;
        }
        println!(
            "server CPU  {:.2} s: {:.1} µs per acked message = nodes {:.1} + PostgreSQL {:.1} + Redis {:.1}",
            s.cpu.total(),
            per_msg(s.cpu.total()),
            per_msg(s.cpu.nodes_s),
            per_msg(s.cpu.postgres_s),
            per_msg(s.cpu.redis_s),
        );
        if s.cpu.postgres_primary_s > 0.0 {
            println!(
                "            of PostgreSQL's, the primary {:.1} µs per acked message",
                per_msg(s.cpu.postgres_primary_s)
            );
        }
    }
}
