//! The people run's report: the table printed at the end and the JSON of `--json`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::PeoplePlan;
use super::events::{Count, Merged, Timed};
use super::population::{ConvKind, Population};
use super::setup::Made;
use super::system::{Seen, Work, slope_pct_per_min};
use crate::report::Quantiles;
use crate::sample::Cpu;

#[derive(Serialize)]
pub(crate) struct PopulationFigures {
    pub(crate) conversations: u64,
    pub(crate) direct: u64,
    pub(crate) group: u64,
    pub(crate) business: u64,
    pub(crate) businesses: u64,
    pub(crate) agents: u64,
    pub(crate) memberships_per_user: f64,
    pub(crate) setup: Made,
}

#[derive(Serialize)]
pub(crate) struct SystemFigures {
    /// Nodes + PostgreSQL + Redis + nginx, averaged over the measured window.
    pub(crate) cpu_cores_avg: f64,
    pub(crate) cpu_s: Cpu,
    pub(crate) cpu_us_per_msg: f64,
    /// The connect ramp: CPU seconds, and CPU µs per user connected (its list, pages and
    /// watch included).
    pub(crate) ramp_cpu_s: Cpu,
    pub(crate) ramp_cpu_us_per_connect: f64,
    /// CPU seconds per hour of one connected user (users connected at the end).
    pub(crate) cpu_s_per_user_hour: f64,
    pub(crate) nodes: usize,
    pub(crate) nodes_rss_kib: u64,
    pub(crate) nodes_rss_kib_per_user: f64,
    pub(crate) nodes_rss_slope_pct_per_min: f64,
    /// The same over the window's second half, once the conversations that talk have their
    /// actors (they stop two minutes after their last use) and the caches are warm.
    pub(crate) nodes_rss_slope_pct_per_min_second_half: f64,
    pub(crate) nodes_rss_series: Vec<(f64, u64)>,
    pub(crate) postgres_pss_kib: u64,
    pub(crate) redis_pss_kib: u64,
    pub(crate) nginx_pss_kib: u64,
    pub(crate) redis_commands_per_msg: f64,
    pub(crate) pg_transactions_per_msg: f64,
    pub(crate) pg_rows_inserted_per_msg: f64,
}

/// `--kill-node`: a node killed during the window and its users' herd to the others.
#[derive(Serialize)]
pub(crate) struct KillFigures {
    /// Its index among the nodes.
    pub(crate) node: usize,
    /// When it was killed, in seconds into the window.
    pub(crate) at_s: f64,
    /// Connections the server ended in the window (the dead node's, and any other).
    pub(crate) connections_lost: u64,
    /// Of them, users who caught up again on another connection within the window; the rest
    /// were still away at its end.
    pub(crate) caught_up_again: u64,
    /// Loss → caught up again (the pause before reconnecting included).
    pub(crate) failover_ms: Quantiles,
    /// Connects refused in the window (each user's first try at the dead node among them).
    pub(crate) connect_failures: u64,
}

#[derive(Serialize)]
pub(crate) struct PeopleReport {
    pub(crate) scenario: &'static str,
    pub(crate) users: usize,
    pub(crate) workers: usize,
    pub(crate) ramp_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) msgs_per_user_min: f64,
    pub(crate) drop_per_min: f64,
    pub(crate) leave_per_min: f64,
    pub(crate) population: PopulationFigures,
    /// Users connected at the end.
    pub(crate) connected: u64,
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    /// Acknowledged, but neither pushed to a connected member nor found by a catch-up.
    pub(crate) acked_lost: u64,
    pub(crate) acked_per_s: f64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) delivery_ms: Quantiles,
    pub(crate) delivery_same_ms: Quantiles,
    pub(crate) delivery_cross_ms: Quantiles,
    /// Every timed kind of event.
    pub(crate) timed_ms: BTreeMap<Timed, Quantiles>,
    pub(crate) timed_counts: BTreeMap<Timed, u64>,
    pub(crate) counts: BTreeMap<Count, u64>,
    /// With `--kill-node`; the nodes' RSS after it counts one node fewer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kill: Option<KillFigures>,
    pub(crate) system: SystemFigures,
}

impl PeopleReport {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plan: &PeoplePlan,
        killed_node: Option<usize>,
        pop: &Population,
        setup: Made,
        m: &Merged,
        seen: Seen,
        work: Work,
        nodes: usize,
    ) -> PeopleReport {
        let kinds = |k: ConvKind| pop.convs.iter().filter(|c| c.kind == k).count() as u64;
        let memberships: usize = pop.convs.iter().map(|c| c.members.len()).sum::<usize>()
            + kinds(ConvKind::Business) as usize; // the assigned agent
        let window_s = (plan.end_us - plan.start_us) as f64 / 1e6;
        let acked = m.get(Count::Acked);
        let per_msg = |x: f64| if acked > 0 { x / acked as f64 } else { 0.0 };
        let cpu_total = seen.cpu_s.total();
        let users = pop.users.len();
        PeopleReport {
            scenario: "people",
            users,
            workers: plan.workers,
            ramp_s: plan.ramp_us as f64 / 1e6,
            duration_s: window_s,
            msgs_per_user_min: plan.msgs_per_user_min,
            drop_per_min: plan.drop_per_min,
            leave_per_min: plan.leave_per_min,
            population: PopulationFigures {
                conversations: pop.convs.len() as u64,
                direct: kinds(ConvKind::Direct),
                group: kinds(ConvKind::Group),
                business: kinds(ConvKind::Business),
                businesses: pop.businesses.len() as u64,
                agents: pop.agent.iter().filter(|a| **a).count() as u64,
                memberships_per_user: memberships as f64 / users.max(1) as f64,
                setup,
            },
            connected: m.connected,
            sent: m.get(Count::Sent),
            acked,
            acked_lost: m.acked_lost() + m.get(Count::HistoryHoles),
            acked_per_s: acked as f64 / window_s.max(1e-9),
            errors: m.errors.clone(),
            delivery_ms: m.quantiles(&[Timed::DeliverySameNode, Timed::DeliveryCrossNode]),
            delivery_same_ms: m.quantiles(&[Timed::DeliverySameNode]),
            delivery_cross_ms: m.quantiles(&[Timed::DeliveryCrossNode]),
            timed_ms: m.timed.keys().map(|k| (*k, m.quantiles(&[*k]))).collect(),
            timed_counts: m.timed.iter().map(|(k, h)| (*k, h.len())).collect(),
            counts: m.counts.clone(),
            kill: killed_node.map(|node| KillFigures {
                node,
                at_s: seen.killed_at_s.unwrap_or(f64::NAN),
                connections_lost: m.get(Count::Lost),
                caught_up_again: m.timed.get(&Timed::Failover).map_or(0, |h| h.len()),
                failover_ms: m.quantiles(&[Timed::Failover]),
                connect_failures: m.get(Count::ConnectFailures),
            }),
            system: SystemFigures {
                cpu_cores_avg: cpu_total / window_s.max(1e-9),
                cpu_s: seen.cpu_s,
                cpu_us_per_msg: per_msg(cpu_total * 1e6),
                ramp_cpu_s: seen.ramp_cpu_s,
                ramp_cpu_us_per_connect: seen.ramp_cpu_s.total() * 1e6 / users.max(1) as f64,
                cpu_s_per_user_hour: if m.connected > 0 {
                    cpu_total / m.connected as f64 * 3600.0 / window_s.max(1e-9)
                } else {
                    0.0
                },
                nodes,
                nodes_rss_kib: seen.nodes_rss_kib,
                nodes_rss_kib_per_user: seen.nodes_rss_kib as f64 / users.max(1) as f64,
                nodes_rss_slope_pct_per_min: slope_pct_per_min(&seen.nodes_rss_series),
                nodes_rss_slope_pct_per_min_second_half: slope_pct_per_min(
                    &seen.nodes_rss_series[seen.nodes_rss_series.len() / 2..],
                ),
                nodes_rss_series: seen.nodes_rss_series,
                postgres_pss_kib: seen.postgres_pss_kib,
                redis_pss_kib: seen.redis_pss_kib,
                nginx_pss_kib: seen.nginx_pss_kib,
                redis_commands_per_msg: per_msg(work.redis_commands as f64),
                pg_transactions_per_msg: per_msg(work.pg_transactions as f64),
                pg_rows_inserted_per_msg: per_msg(work.pg_rows_inserted as f64),
            },
        }
    }

    pub(crate) fn print(&self) {
        let p = &self.population;
        println!(
            "population  {} users; {} conversations: {} direct, {} group, {} business ({} businesses, {} agents); {:.1} per user",
            self.users,
            p.conversations,
            p.direct,
            p.group,
            p.business,
            p.businesses,
            p.agents,
            p.memberships_per_user
        );
        println!(
            "window      {:.0} s after a {:.0} s ramp; connected at the end {}",
            self.duration_s, self.ramp_s, self.connected
        );
        println!(
            "messages    sent {}  acked {} ({:.0}/s)  lost {}  errors {:?}",
            self.sent, self.acked, self.acked_per_s, self.acked_lost, self.errors
        );
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, n)| {
                format!(
                    "{}={n}",
                    serde_json::to_string(k)
                        .unwrap_or_default()
                        .trim_matches('"')
                )
            })
            .collect();
        println!("events      {}", counts.join(" "));
        for (k, q) in &self.timed_ms {
            println!(
                "{:<20} n {:>8}  p50 {:>8.2} ms  p90 {:>8.2}  p99 {:>8.2}  max {:>9.2}",
                serde_json::to_string(k)
                    .unwrap_or_default()
                    .trim_matches('"'),
                self.timed_counts.get(k).copied().unwrap_or(0),
                q.p50,
                q.p90,
                q.p99,
                q.max
            );
        }
        if let Some(k) = &self.kill {
            println!(
                "kill        node {} at {:.1} s: {} connections lost, {} caught up again (p50 {:.0} ms, p99 {:.0}, max {:.0}); {} connects refused",
                k.node,
                k.at_s,
                k.connections_lost,
                k.caught_up_again,
                k.failover_ms.p50,
                k.failover_ms.p99,
                k.failover_ms.max,
                k.connect_failures
            );
        }
        let s = &self.system;
        println!(
            "system CPU  {:.3} cores avg = nodes {:.1} s + PostgreSQL {:.1} + Redis {:.1} + nginx {:.1}; {:.0} µs per message; {:.2} CPU-s per user-hour",
            s.cpu_cores_avg,
            s.cpu_s.nodes_s,
            s.cpu_s.postgres_s,
            s.cpu_s.redis_s,
            s.cpu_s.nginx_s,
            s.cpu_us_per_msg,
            s.cpu_s_per_user_hour
        );
        println!(
            "tester CPU  {:.1} s ({:.3} cores avg; not the server's, on the same cores)",
            s.cpu_s.tester_s,
            s.cpu_s.tester_s / self.duration_s.max(1e-9)
        );
        println!(
            "ramp CPU    {:.1} s = nodes {:.1} + PostgreSQL {:.1} + Redis {:.1} + nginx {:.1}: {:.0} µs per user connected",
            s.ramp_cpu_s.total(),
            s.ramp_cpu_s.nodes_s,
            s.ramp_cpu_s.postgres_s,
            s.ramp_cpu_s.redis_s,
            s.ramp_cpu_s.nginx_s,
            s.ramp_cpu_us_per_connect
        );
        println!(
            "memory      {} node(s) {} KiB ({:.1} KiB per user, slope {:+.2} %/min, {:+.2} over the second half); PSS: PostgreSQL {} KiB, Redis {} KiB, nginx {} KiB",
            s.nodes,
            s.nodes_rss_kib,
            s.nodes_rss_kib_per_user,
            s.nodes_rss_slope_pct_per_min,
            s.nodes_rss_slope_pct_per_min_second_half,
            s.postgres_pss_kib,
            s.redis_pss_kib,
            s.nginx_pss_kib
        );
        println!(
            "per message Redis commands {:.2}, PostgreSQL transactions {:.2}, rows inserted {:.2}",
            s.redis_commands_per_msg, s.pg_transactions_per_msg, s.pg_rows_inserted_per_msg
        );
    }
}
