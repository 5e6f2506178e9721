//! The whole system's cost during a people run, measured by the tester itself: CPU of every node,
//! PostgreSQL, Redis and nginx over the connect ramp and the measured window, the nodes' RSS over time (so a leak
//! shows as a slope), and the work Redis and PostgreSQL did (`INFO commandstats`,
//! `pg_stat_database`) per message.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::sample::{Cpu, cpu, process_cpu_s, rss_by_name, rss_kib};
use crate::tally::now_us;

/// Counters read from Redis and PostgreSQL at the window's start and end.
#[derive(Default, Clone, Copy, Serialize)]
pub(crate) struct Work {
    /// Commands Redis ran (every `cmdstat_*` `calls`).
    pub(crate) redis_commands: u64,
    /// Transactions committed or rolled back in the run's database.
    pub(crate) pg_transactions: u64,
    /// Rows inserted in the run's database.
    pub(crate) pg_rows_inserted: u64,
}

impl Work {
    fn since(&self, before: &Work) -> Work {
        Work {
            redis_commands: self.redis_commands.saturating_sub(before.redis_commands),
            pg_transactions: self.pg_transactions.saturating_sub(before.pg_transactions),
            pg_rows_inserted: self
                .pg_rows_inserted
                .saturating_sub(before.pg_rows_inserted),
        }
    }
}

/// Where the counters of `Work` are read.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) redis_url: Option<String>,
    pub(crate) database_url: Option<String>,
}

impl Sources {
    /// Reads both; a source that cannot be reached counts 0 (and says so once).
    pub(crate) async fn read(&self) -> Work {
        let mut w = Work::default();
        if let Some(url) = &self.redis_url {
            match redis_commands(url).await {
                Ok(n) => w.redis_commands = n,
                Err(e) => eprintln!("load: Redis INFO commandstats at {url}: {e}"),
            }
        }
        if let Some(url) = self
            .database_url
            .as_deref()
            .filter(|u| u.starts_with("postgres"))
        {
            match pg_counters(url).await {
                Ok((x, r)) => (w.pg_transactions, w.pg_rows_inserted) = (x, r),
                Err(e) => eprintln!("load: pg_stat_database: {e}"),
            }
        }
        w
    }
}

async fn redis_commands(url: &str) -> Result<u64, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await?;
    Ok(info
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum())
}

/// `ANALYZE` of the run's database, when it is PostgreSQL: right after the setup (a bulk load
/// leaves the planner's statistics describing empty tables), then every 30 s until `until_us`
/// if the server's autovacuum is off, as it is on some test machines: without it the statistics
/// never follow the tables' growth, and within minutes every list is planned as scans of whole
/// message partitions (seen here: PostgreSQL saturated and most requests `unavailable` four
/// minutes into a 50,000-user run). A production server runs autovacuum; this stands in for it.
pub(crate) async fn keep_analyzed(database_url: Option<&str>, until_us: u64) {
    use sqlx::Connection;
    let Some(url) = database_url.filter(|u| u.starts_with("postgres")) else {
        return;
    };
    let mut con = match sqlx::PgConnection::connect(url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("load: ANALYZE of the run's database: {e}");
            return;
        }
    };
    if let Err(e) = sqlx::query("ANALYZE").execute(&mut con).await {
        eprintln!("load: ANALYZE after the setup: {e}");
        return;
    }
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut con)
        .await
        .unwrap_or_else(|_| "on".to_owned());
    if autovacuum != "off" {
        return;
    }
    eprintln!("load: the server's autovacuum is off: the tester runs ANALYZE every 30 s instead");
    while now_us() + 30_000_000 < until_us {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if let Err(e) = sqlx::query("ANALYZE").execute(&mut con).await {
            eprintln!("load: ANALYZE: {e}");
        }
    }
}

async fn pg_counters(url: &str) -> Result<(u64, u64), sqlx::Error> {
    use sqlx::Connection;
    let mut con = sqlx::PgConnection::connect(url).await?;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT (xact_commit + xact_rollback)::int8, tup_inserted::int8 \
         FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&mut con)
    .await?;
    Ok((row.0.max(0) as u64, row.1.max(0) as u64))
}

/// What the watch saw.
#[derive(Default, Clone, Serialize)]
pub(crate) struct Seen {
    /// CPU seconds over the measured window, by who spent them.
    pub(crate) cpu_s: Cpu,
    /// CPU seconds over the connect ramp before it.
    pub(crate) ramp_cpu_s: Cpu,
    /// The nodes' summed RSS every few seconds of the window: (seconds into it, KiB).
    pub(crate) nodes_rss_series: Vec<(f64, u64)>,
    /// At the end of the window.
    pub(crate) nodes_rss_kib: u64,
    pub(crate) postgres_pss_kib: u64,
    pub(crate) redis_pss_kib: u64,
    pub(crate) nginx_pss_kib: u64,
    /// When `--kill-node` struck, in seconds into the window.
    pub(crate) killed_at_s: Option<f64>,
}

/// A node to kill during the window (`--kill-node`).
pub(crate) struct Kill {
    pub(crate) pid: u32,
    pub(crate) at_us: u64,
}

/// Samples the nodes and the machine's PostgreSQL, Redis and nginx from `start_us` to
/// `end_us`, on a thread of its own; kills a node when told to (the watch knows every node's
/// CPU, so the dead one's share up to its death stays counted).
pub(crate) struct Watch {
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// `pids` are the nodes, `tester` the tester's own processes (counted apart).
    pub(crate) fn start(
        mut pids: Vec<u32>,
        tester: Vec<u32>,
        ramp_start_us: u64,
        start_us: u64,
        end_us: u64,
        every: Duration,
        mut kill: Option<Kill>,
    ) -> Watch {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = seen.clone();
        let thread = std::thread::spawn(move || {
            let cpu = |pids: &[u32], primary| Cpu {
                tester_s: tester.iter().map(|p| process_cpu_s(&p.to_string())).sum(),
                ..cpu(pids, primary)
            };
            let mut at_ramp: Option<Cpu> = None;
            let mut before: Option<Cpu> = None;
            let mut next_rss = start_us;
            loop {
                let now = now_us();
                if now >= ramp_start_us && at_ramp.is_none() {
                    at_ramp = Some(cpu(&pids, None));
                }
                if now >= start_us && before.is_none() {
                    let c = cpu(&pids, None);
                    if let (Some(r), Ok(mut o)) = (at_ramp, out.lock()) {
                        o.ramp_cpu_s = c.since(&r);
                    }
                    before = Some(c);
                }
                if let Some(k) = kill.take_if(|k| now >= k.at_us) {
                    // The window's CPU is (the living nodes' at its end) minus (every node's at
                    // its start, less what the dead one had spent by its death).
                    let spent = process_cpu_s(&k.pid.to_string());
                    let killed = std::process::Command::new("kill")
                        .args(["-KILL", &k.pid.to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    if !killed {
                        eprintln!("load: --kill-node: kill -KILL {} failed", k.pid);
                    }
                    pids.retain(|p| *p != k.pid);
                    if let Some(b) = before.as_mut() {
                        b.nodes_s -= spent;
                    }
                    if let Ok(mut o) = out.lock() {
                        o.killed_at_s = Some(now.saturating_sub(start_us) as f64 / 1e6);
                    }
                }
                if now >= next_rss && now <= end_us + 500_000 {
                    let rss = rss_kib(&pids);
                    if let Ok(mut o) = out.lock() {
                        o.nodes_rss_series
                            .push(((now - start_us) as f64 / 1e6, rss));
                    }
                    next_rss += every.as_micros() as u64;
                }
                if now >= end_us {
                    if let Some(b) = before {
                        let [pg, redis, nginx] = rss_by_name();
                        if let Ok(mut o) = out.lock() {
                            o.cpu_s = cpu(&pids, None).since(&b);
                            o.nodes_rss_kib = rss_kib(&pids);
                            (o.postgres_pss_kib, o.redis_pss_kib, o.nginx_pss_kib) =
                                (pg, redis, nginx);
                        }
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watch {
            seen,
            thread: Some(thread),
        }
    }

    /// Waits for the window's end (the thread stops by itself there) and gives what it saw.
    pub(crate) fn finish(mut self) -> Seen {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The least-squares slope of `series` in percent of its mean per minute: a flat memory
/// is near 0, a leak shows as a steady positive slope.
pub(crate) fn slope_pct_per_min(series: &[(f64, u64)]) -> f64 {
    let n = series.len() as f64;
    if series.len() < 3 {
        return 0.0;
    }
    let mx = series.iter().map(|(x, _)| x).sum::<f64>() / n;
    let my = series.iter().map(|(_, y)| *y as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in series {
        sxy += (x - mx) * (*y as f64 - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 || my == 0.0 {
        return 0.0;
    }
    sxy / sxx * 60.0 / my * 100.0
}

/// Reads the counters now and after the window, on the caller's runtime.
pub(crate) async fn work_between(sources: &Sources, start_us: u64, end_us: u64) -> Work {
    tokio::time::sleep(Duration::from_micros(start_us.saturating_sub(now_us()))).await;
    let before = sources.read().await;
    tokio::time::sleep(Duration::from_micros(end_us.saturating_sub(now_us()))).await;
    sources.read().await.since(&before)
}
