//! The command line of the load tester, and the mix of conversation kinds it names.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(name = "load", about = "chat-backend load tester")]
pub(crate) struct Args {
    /// WebSocket URL of a node (repeat for several; connections are spread over them).
    #[arg(long)]
    pub(crate) url: Vec<String>,
    /// Database for the node this tool starts (default: a temporary SQLite file).
    #[arg(long)]
    pub(crate) database_url: Option<String>,
    /// HS256 secret the node checks tokens with.
    #[arg(long, default_value = "load-test-secret-0123456789abcdef0123")]
    pub(crate) secret: String,
    /// `iss` claim to put in tokens.
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// `aud` claim to put in tokens.
    #[arg(long)]
    pub(crate) audience: Option<String>,
    /// PEM private key (RSA: RS256, EC P-256: ES256) to sign tokens with instead of the secret.
    #[arg(long)]
    pub(crate) private_key: Option<PathBuf>,
    /// Connections (each a distinct user).
    #[arg(long, default_value_t = 100)]
    pub(crate) connections: usize,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Seconds of sending, measured.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Seconds of sending at the same rate before the measured window: its messages are not
    /// counted and the server's CPU is not sampled (fresh connections, caches and plans).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) warmup: f64,
    /// Shares of the senders by conversation kind.
    #[arg(long, default_value = "direct=70,group=25,business=5")]
    pub(crate) mix: String,
    /// Members of each group.
    #[arg(long, default_value_t = 8)]
    pub(crate) group_size: usize,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Reads per message sent: after a send its sender asks, in turn, for the newest page of
    /// the conversation (`history`, 20) or its conversation list (`conversations`, 20), as an
    /// app does when it is opened; 0.5 is one read every other send.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) reads_per_msg: f64,
    /// Send without a `mid` (the node makes one), as the figures before 2026-11-30 did; by
    /// default each send carries a fresh `mid`, as PROTOCOL tells clients to.
    #[arg(long)]
    pub(crate) no_mids: bool,
    /// Write the report here as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Child processes to spread the connections over.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: usize,
    /// Connect and hold the connections; send nothing.
    #[arg(long)]
    pub(crate) idle: bool,
    /// Raise the rate step by step; report the highest whose p99 stays under the limit.
    #[arg(long)]
    pub(crate) find_max: bool,
    /// Run 500 msgs/s, 1,000, 2,000, 4,000 and up until two rates in a row miss the p99 limit,
    /// and print the CPU-per-message curve, so a regression at any rate shows.
    #[arg(long)]
    pub(crate) sweep: bool,
    /// The p99 limit of --find-max and --sweep, ms.
    #[arg(long, default_value_t = 50.0)]
    pub(crate) p99_limit_ms: f64,
    /// Businesses to use against --url (comma-separated UUIDs).
    #[arg(long, value_delimiter = ',')]
    pub(crate) business: Vec<String>,
    /// A node process to measure (RSS, CPU) when pointing at --url; repeat for every node of a
    /// cluster. PostgreSQL's and Redis's processes on this machine are measured beside them.
    #[arg(long)]
    pub(crate) server_pid: Vec<u32>,
    /// The postmaster of the PostgreSQL primary, when standbys run on the same machine: its
    /// processes' CPU is reported apart (`postgres_primary_s`), beside every `postgres`'s.
    #[arg(long)]
    pub(crate) primary_pid: Option<u32>,
    /// A directory `scripts/cluster start` wrote: its nodes (`node-N.listen`, `node-N.pid`)
    /// are added as --url and --server-pid, each node's own address (not the balancer's).
    #[arg(long)]
    pub(crate) cluster_dir: Option<PathBuf>,
    /// `plain` (the fixed-rate stream above) or `people` (users as people behave: a connect
    /// ramp, lists and history, typing, Poisson sends, reads, drops and returns; see
    /// docs/PERFORMANCE.md).
    #[arg(long, value_enum, default_value_t = Scenario::Plain)]
    pub(crate) scenario: Scenario,
    /// People: how many users.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) users: usize,
    /// People: seconds over which the users connect, before the measured window.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) ramp: f64,
    /// People: messages each connected user sends per minute (Poisson).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) msgs_per_user_min: f64,
    /// People: percent of the users a minute who lose the network (no close frame) and
    /// reconnect 1–10 s later.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) drop_per_min: f64,
    /// People: percent of the users a minute who close the app and come back 1–5 min later.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) leave_per_min: f64,
    /// People: kill node N (its index among --url, from 0: `node-N` of --cluster-dir) with
    /// SIGKILL during the window, as a crash would, and measure the herd of its users failing
    /// over to the other nodes (each user's next connect goes to another node, as a balancer
    /// would send it). Needs the nodes' pids (--cluster-dir or --server-pid).
    #[arg(long)]
    pub(crate) kill_node: Option<usize>,
    /// People: when --kill-node strikes, in seconds into the measured window.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) kill_at: f64,
    /// People: conversations per user, `MIN-MAX`.
    #[arg(long, value_parser = parse_range, default_value = "5-30")]
    pub(crate) convs_per_user: (usize, usize),
    /// People: contacts per user, `MIN-MAX` (the first 20 are watched).
    #[arg(long, value_parser = parse_range, default_value = "10-50")]
    pub(crate) contacts_per_user: (usize, usize),
    /// People: businesses (each with 3–10 agents among the users); 0: one per 1,000 users.
    #[arg(long, default_value_t = 0)]
    pub(crate) businesses: usize,
    /// People: the seed of the businesses and agents (the users are fresh each run).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// People: write the user service's file (`chat-backend dev-user-service --file`) that
    /// knows the seed's businesses and agents, and exit: start a cluster's user service with it.
    #[arg(long)]
    pub(crate) print_directory: Option<PathBuf>,
    /// People: the Redis whose `INFO commandstats` counts commands per message.
    #[arg(long)]
    pub(crate) redis_url: Option<String>,
    /// Internal: run as worker I of the plan in this file.
    #[arg(long, hide = true)]
    pub(crate) worker: Option<usize>,
    /// Internal: the plan file of a worker.
    #[arg(long, hide = true)]
    pub(crate) plan: Option<PathBuf>,
    /// cargo bench appends --bench; accepted and ignored.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
}

/// What a run does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scenario {
    Plain,
    People,
}

/// `MIN-MAX` (or one number).
fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not MIN-MAX"))?;
    let b: usize = b
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not MIN-MAX"))?;
    if a > b {
        return Err(format!("{s:?}: MIN above MAX"));
    }
    Ok((a, b))
}

pub(crate) fn parse_mix(mix: &str) -> (f64, f64, f64) {
    let mut m = (0.0, 0.0, 0.0);
    for part in mix.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, "0"));
        let v: f64 = v.trim().parse().unwrap_or(0.0);
        match k.trim() {
            "direct" => m.0 = v,
            "group" => m.1 = v,
            "business" => m.2 = v,
            other => eprintln!("load: unknown mix kind {other:?} ignored"),
        }
    }
    let total = (m.0 + m.1 + m.2).max(1e-9);
    (m.0 / total, m.1 / total, m.2 / total)
}
