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
//! pointing at `--url`), `--server-pid` (repeatable: the node processes to measure; every
//! PostgreSQL and Redis process of the machine is measured beside them, so a cluster's report
//! gives its total RSS and CPU per message split into nodes, PostgreSQL and Redis). Users,
//! conversations and bodies are made fresh each run (random UUIDs); nothing else is random.
//! `CHAT_LOAD_BIN=PATH` starts another build of the node (before/after comparisons).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

#[derive(Parser, Debug, Clone)]
#[command(name = "load", about = "chat-backend load tester")]
struct Args {
    /// WebSocket URL of a node (repeat for several; connections are spread over them).
    #[arg(long)]
    url: Vec<String>,
    /// Database for the node this tool starts (default: a temporary SQLite file).
    #[arg(long)]
    database_url: Option<String>,
    /// HS256 secret the node checks tokens with.
    #[arg(long, default_value = "load-test-secret-0123456789abcdef0123")]
    secret: String,
    /// `iss` claim to put in tokens.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim to put in tokens.
    #[arg(long)]
    audience: Option<String>,
    /// PEM private key (RSA: RS256, EC P-256: ES256) to sign tokens with instead of the secret.
    #[arg(long)]
    private_key: Option<PathBuf>,
    /// Connections (each a distinct user).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending, measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of sending at the same rate before the measured window: its messages are not
    /// counted and the server's CPU is not sampled (fresh connections, caches and plans).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Shares of the senders by conversation kind.
    #[arg(long, default_value = "direct=70,group=25,business=5")]
    mix: String,
    /// Members of each group.
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Send without a `mid` (the node makes one), as the figures before 2026-11-30 did; by
    /// default each send carries a fresh `mid`, as PROTOCOL tells clients to.
    #[arg(long)]
    no_mids: bool,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Child processes to spread the connections over.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Connect and hold the connections; send nothing.
    #[arg(long)]
    idle: bool,
    /// Raise the rate step by step; report the highest whose p99 stays under the limit.
    #[arg(long)]
    find_max: bool,
    /// Run 500 msgs/s, 1,000, 2,000, 4,000 and up until two rates in a row miss the p99 limit,
    /// and print the CPU-per-message curve, so a regression at any rate shows.
    #[arg(long)]
    sweep: bool,
    /// The p99 limit of --find-max and --sweep, ms.
    #[arg(long, default_value_t = 50.0)]
    p99_limit_ms: f64,
    /// Businesses to use against --url (comma-separated UUIDs).
    #[arg(long, value_delimiter = ',')]
    business: Vec<String>,
    /// A node process to measure (RSS, CPU) when pointing at --url; repeat for every node of a
    /// cluster. PostgreSQL's and Redis's processes on this machine are measured beside them.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Internal: run as worker I of the plan in this file.
    #[arg(long, hide = true)]
    worker: Option<usize>,
    /// Internal: the plan file of a worker.
    #[arg(long, hide = true)]
    plan: Option<PathBuf>,
    /// cargo bench appends --bench; accepted and ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What each worker is told.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Plan {
    urls: Vec<String>,
    connections: usize,
    workers: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    mix: (f64, f64, f64),
    group_size: usize,
    body_bytes: usize,
    /// Whether each send carries its own `mid`.
    mids: bool,
    idle: bool,
    /// business → its agents (agents connect in worker 0; empty agent lists against --url)
    businesses: Vec<(Uuid, Vec<Uuid>)>,
    /// When the measured window starts (µs since the epoch), so all workers start together;
    /// the warm-up comes before it.
    start_us: u64,
    tokens: TokenSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct TokenSpec {
    secret: String,
    issuer: Option<String>,
    audience: Option<String>,
    private_key: Option<String>,
}

/// What is counted, per connection, per worker and in the report.
#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy)]
struct Counts {
    connections: u64,
    connect_errors: u64,
    sent: u64,
    acked: u64,
    delivered: u64,
    expected_deliveries: u64,
    errors: u64,
    rate_limited: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.connections += o.connections;
        self.connect_errors += o.connect_errors;
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.expected_deliveries += o.expected_deliveries;
        self.errors += o.errors;
        self.rate_limited += o.rate_limited;
    }
}

/// What each worker reports: its counts and its histograms as (value, count) pairs.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Tally {
    #[serde(flatten)]
    counts: Counts,
    ack_us: Vec<(u64, u64)>,
    delivery_us: Vec<(u64, u64)>,
    #[serde(default)]
    delivery_local_us: Vec<(u64, u64)>,
    #[serde(default)]
    delivery_cross_us: Vec<(u64, u64)>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

fn token(spec: &TokenSpec, user: Uuid) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: String,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
    }
    let claims = Claims {
        sub: user.to_string(),
        exp: now_us() / 1_000_000 + 24 * 3600,
        iss: spec.issuer.as_deref(),
        aud: spec.audience.as_deref(),
    };
    let (header, key) = match &spec.private_key {
        Some(pem) => match EncodingKey::from_rsa_pem(pem.as_bytes()) {
            Ok(k) => (Header::new(Algorithm::RS256), k),
            Err(_) => (
                Header::new(Algorithm::ES256),
                EncodingKey::from_ec_pem(pem.as_bytes()).expect("an RSA or EC private key"),
            ),
        },
        None => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(spec.secret.as_bytes()),
        ),
    };
    jsonwebtoken::encode(&header, &claims, &key).expect("token")
}

fn parse_mix(mix: &str) -> (f64, f64, f64) {
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

// ------------------------------------------------------------------ the node this tool starts

struct Started {
    node: Child,
    users: Child,
    _dir: tempfile::TempDir,
    url: String,
    pid: u32,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.users.kill();
        let _ = self.node.wait();
        let _ = self.users.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_node(args: &Args, businesses: &[(Uuid, Vec<Uuid>)]) -> Started {
    // `CHAT_LOAD_BIN` runs another build of the node, for before/after comparisons.
    let bin = std::env::var("CHAT_LOAD_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chat-backend").to_owned());
    let bin = bin.as_str();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut users = serde_json::Map::new();
    let mut biz = serde_json::Map::new();
    for (b, agents) in businesses {
        for a in agents {
            users.insert(
                a.to_string(),
                json!({"name": format!("Agent {}", &a.to_string()[..8])}),
            );
        }
        biz.insert(
            b.to_string(),
            json!({"name": format!("Business {}", &b.to_string()[..8]), "agents": agents}),
        );
    }
    let file = dir.path().join("users.json");
    std::fs::write(
        &file,
        json!({"users": users, "businesses": biz}).to_string(),
    )
    .expect("write users.json");
    let users_at = format!("127.0.0.1:{}", free_port());
    let users_proc = Command::new(bin)
        .args(["dev-user-service", "--file"])
        .arg(&file)
        .args(["--at", &users_at])
        .env("CHAT_PROFILES_TOKEN", "load")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the stand-in user service");
    let listen = format!("127.0.0.1:{}", free_port());
    let db = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/chat.db", dir.path().display()));
    let node = Command::new(bin)
        .arg("serve")
        .current_dir(dir.path())
        .env("CHAT_LISTEN", &listen)
        .env("CHAT_DATABASE_URL", db)
        .env("CHAT_JWT_SECRET", &args.secret)
        .env("CHAT_JWT_ISSUER", args.issuer.clone().unwrap_or_default())
        .env(
            "CHAT_JWT_AUDIENCE",
            args.audience.clone().unwrap_or_default(),
        )
        .env("CHAT_RATE_MESSAGES", "1000000")
        .env("CHAT_RATE_BURST", "1000000")
        .env("CHAT_PROFILES_URL", format!("http://{users_at}"))
        .env("CHAT_PROFILES_TOKEN", "load")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the node");
    let pid = node.id();
    let ready = format!("http://{listen}/readyz");
    for _ in 0..300 {
        if http_ok(&ready) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Started {
        node,
        users: users_proc,
        _dir: dir,
        url: format!("ws://{listen}/v1/ws"),
        pid,
    }
}

fn http_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

// ------------------------------------------------------------------ server measurements

#[derive(Serialize, Default, Clone, Copy)]
struct ServerStats {
    /// Nodes measured (their RSS is summed).
    nodes: usize,
    /// Before the first connection.
    rss_kib_idle: u64,
    /// The highest seen, connecting and closing included.
    rss_kib_peak: u64,
    /// With every connection open, just before the end of the run (steady state).
    rss_kib_held: u64,
    /// CPU seconds over the sending window.
    cpu: Cpu,
}

/// CPU seconds by who spent them: the nodes, PostgreSQL (every `postgres` process: its
/// backends work for the nodes) and Redis (every `redis-server`).
#[derive(Serialize, Default, Clone, Copy)]
struct Cpu {
    nodes_s: f64,
    postgres_s: f64,
    redis_s: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.nodes_s + self.postgres_s + self.redis_s
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            nodes_s: self.nodes_s - before.nodes_s,
            postgres_s: self.postgres_s - before.postgres_s,
            redis_s: self.redis_s - before.redis_s,
        }
    }
}

fn rss_kib(pids: &[u32]) -> u64 {
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

/// CPU seconds (user + system) of one process.
fn process_cpu_s(pid: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

/// CPU so far of the node processes `pids`, and of every PostgreSQL and Redis process this
/// user can see.
fn cpu(pids: &[u32]) -> Cpu {
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
                Ok("postgres\n") => c.postgres_s += process_cpu_s(&name),
                Ok("redis-server\n") => c.redis_s += process_cpu_s(&name),
                _ => {}
            }
        }
    }
    c
}

// ------------------------------------------------------------------ one worker

struct Conn {
    user: Uuid,
    url: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Group,
    Business,
}

/// One conversation to create and the senders in it.
struct Room {
    kind: Kind,
    members: Vec<usize>, // indexes into the worker's connections; [0] creates it
    business: Option<Uuid>,
}

fn plan_rooms(plan: &Plan, n: usize, offset: usize) -> Vec<Room> {
    let (d, g, b) = plan.mix;
    let with_agents = !plan.businesses.is_empty();
    let n_group = ((n as f64) * g) as usize / plan.group_size.max(2) * plan.group_size.max(2);
    let n_business = if with_agents || !plan.businesses.is_empty() {
        ((n as f64) * b) as usize
    } else {
        0
    };
    let _ = d;
    let n_direct = (n - n_group.min(n) - n_business.min(n - n_group.min(n))) / 2 * 2;
    let mut rooms = Vec::new();
    let mut i = 0;
    while i + 1 < n_direct {
        rooms.push(Room {
            kind: Kind::Direct,
            members: vec![i, i + 1],
            business: None,
        });
        i += 2;
    }
    let gs = plan.group_size.max(2);
    while i + gs <= n_direct + n_group {
        rooms.push(Room {
            kind: Kind::Group,
            members: (i..i + gs).collect(),
            business: None,
        });
        i += gs;
    }
    let mut k = offset;
    while i < n && !plan.businesses.is_empty() && i < n_direct + n_group + n_business {
        let business = plan.businesses[k % plan.businesses.len()].0;
        rooms.push(Room {
            kind: Kind::Business,
            members: vec![i],
            business: Some(business),
        });
        i += 1;
        k += 1;
    }
    rooms
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects and reads the hello: the socket and the name of the node it landed on.
async fn connect(url: &str, token: &str) -> Result<(Ws, String), String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token header")?,
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    // the hello
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(hello))) => {
            let node = decode(&hello)
                .and_then(|v| v["node"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Ok((ws, node))
        }
        _ => Err("no hello".to_owned()),
    }
}

fn frame(v: &Value) -> Message {
    Message::Binary(rmp_serde::to_vec_named(v).expect("encode").into())
}

/// A `send` request, encoded without building a `Value`.
#[derive(Serialize)]
struct SendFrame<'a> {
    t: &'static str,
    id: u64,
    conv: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mid: Option<&'a str>,
    body: &'a str,
}

/// The fields of a server frame the measuring loop reads, borrowed from the frame's bytes.
#[derive(Deserialize)]
struct InFrame<'a> {
    t: &'a str,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    body: Option<&'a str>,
}

fn encode(v: &impl Serialize) -> Message {
    Message::Binary(rmp_serde::to_vec_named(v).expect("encode").into())
}

fn decode(m: &Message) -> Option<Value> {
    match m {
        Message::Binary(b) => rmp_serde::from_slice(b).ok(),
        _ => None,
    }
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

async fn call(ws: &mut Ws, id: u64, req: Value) -> Option<Value> {
    let mut req = req;
    req["id"] = json!(id);
    ws.send(frame(&req)).await.ok()?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .ok()??
            .ok()?;
        if let Some(v) = decode(&m)
            && v["id"].as_u64() == Some(id)
        {
            return Some(v);
        }
    }
}

async fn run_worker(index: usize, plan: Plan) -> Tally {
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
        tokio::time::sleep(Duration::from_micros(until.saturating_sub(now_us()))).await;
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
    for t in tasks {
        if let Ok(r) = t.await {
            tally.counts.add(&r.counts);
            let _ = ack.add(&r.ack);
            let _ = delivery.add(&r.delivery);
            let _ = local.add(&r.delivery_local);
            let _ = cross.add(&r.delivery_cross);
        }
    }
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
}

/// A histogram as (value, count) pairs, for a worker's report.
fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
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
    };
    let mut pending: HashMap<u64, u64> = HashMap::new(); // request id → scheduled µs
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
        if !sending && (now > drain_until || (pending.is_empty() && now > end_us + 2_000_000)) {
            break;
        }
        let wake = if sending {
            next_us
        } else {
            drain_until.min(now + 100_000)
        };
        let deadline =
            tokio::time::Instant::now() + Duration::from_micros(wake.saturating_sub(now));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
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
                    if next_us >= measure_from_us {
                        r.counts.sent += 1;
                        r.counts.expected_deliveries += *fanout as u64;
                        live.sent.fetch_add(1, Ordering::Relaxed);
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
                    "error" => {
                        if let Some(i) = f.id {
                            pending.remove(&i);
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

// ------------------------------------------------------------------ the parent

#[derive(Serialize, Default, Clone, Copy)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn quantiles(h: &Histogram<u64>) -> Quantiles {
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
struct Report {
    #[serde(flatten)]
    counts: Counts,
    rate: f64,
    duration_s: f64,
    throughput_msgs_s: f64,
    deliveries_s: f64,
    ack_ms: Quantiles,
    delivery_ms: Quantiles,
    /// Deliveries whose sender was on the receiver's node, and on another node.
    delivery_local_ms: Quantiles,
    delivery_cross_ms: Quantiles,
    delivered_cross: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<ServerStats>,
}

fn run_once(_args: &Args, plan: &Plan, server_pids: &[u32]) -> Report {
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
                        w.0 = Some(cpu(&pids));
                    }
                    if w.1.is_none() && now >= send_end_us {
                        w.1 = Some(cpu(&pids));
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
        server,
    }
}

/// The rates of `--sweep`, from a quiet node to well past what two cores hold.
const SWEEP_RATES: [f64; 12] = [
    500.0, 1_000.0, 2_000.0, 4_000.0, 8_000.0, 12_000.0, 16_000.0, 20_000.0, 25_000.0, 30_000.0,
    40_000.0, 50_000.0,
];

impl Report {
    /// Everything acknowledged and delivered, no error, and both p99s within `limit_ms`.
    fn held(&self, limit_ms: f64) -> bool {
        let c = &self.counts;
        c.acked == c.sent
            && c.delivered >= c.expected_deliveries
            && c.errors == 0
            && self.delivery_ms.p99 <= limit_ms
            && self.ack_ms.p99 <= limit_ms
    }
}

/// The `--sweep` summary: one line per rate.
fn print_curve(curve: &[Report], limit_ms: f64) {
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

fn print_table(r: &Report) {
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
    }
}

fn main() {
    let args = Args::parse();
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
