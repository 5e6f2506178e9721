//! Test scaffolding: fresh databases on both backends, an in-process node on port 0, and a
//! MessagePack WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use chat_backend::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// The two storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL admin URL the tests create databases with.
pub fn pg_admin_url() -> String {
    std::env::var("CHAT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database, removed when dropped.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/chat.db", dir.path().display());
                TestDb {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = pg_admin_url();
                let name = format!("chat_test_{}", Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&admin)
                    .await
                    .expect("PostgreSQL must run for the tests");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let base = admin.rsplit_once('/').unwrap().0;
                TestDb {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(pool) = sqlx::PgPool::connect(&pg_admin_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A node served in this process on port 0 with a fresh database.
pub struct TestNode {
    pub addr: SocketAddr,
    pub config: Config,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: TestDb,
}

impl TestNode {
    /// Port 0, a fresh database; the listener is bound before this returns.
    pub async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestNode {
        let db = TestDb::new(backend).await;
        let mut config = Config {
            database_url: db.url.clone(),
            jwt_secret: SECRET.to_owned(),
            node_id: format!("test-{}", &Uuid::new_v4().simple().to_string()[..6]),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(chat_backend::app::serve(
            config.clone(),
            listener,
            stop.clone(),
        ));
        let node = TestNode {
            addr,
            config,
            stop,
            task: Some(task),
            _db: db,
        };
        node.wait_ready().await;
        node
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(mut s) = TcpStream::connect(self.addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node not ready");
    }

    pub fn token(&self, user: Uuid) -> String {
        chat_backend::auth::sign(
            &self.config,
            chat_actors::ids::UserId(user),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    pub async fn client(&self, user: Uuid) -> Client {
        Client::connect(&format!("ws://{}/v1/ws", self.addr), &self.token(user)).await
    }

    /// Stops the node the way SIGTERM does and waits for it.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A MessagePack WebSocket client that keeps pushes aside while it waits for replies.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pub pushes: Vec<Value>,
    pub hello: Value,
    /// The close code the server sent, once it closed.
    pub close_code: Option<u16>,
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        Client::try_connect(url, token)
            .await
            .expect("could not connect and be greeted")
    }

    /// [`Client::connect`], or None when the handshake fails or no `hello` comes (a node that
    /// is dying, a balancer with no node behind it).
    pub async fn try_connect(url: &str, token: &str) -> Option<Client> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.ok()?;
        let mut c = Client::fresh(ws);
        loop {
            let f = c.try_next_frame().await?;
            if f["t"] == "hello" {
                c.hello = f;
                return Some(c);
            }
            c.pushes.push(f);
        }
    }

    /// Connects with a small kernel receive buffer, so a client that stops reading fills up
    /// after little data whatever the machine's socket defaults are.
    pub async fn connect_small_buffer(url: &str, token: &str) -> Client {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let host = req.uri().authority().unwrap().as_str().to_owned();
        let addr: SocketAddr = host.parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        Client::greeted(ws).await
    }

    fn fresh(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            next_id: 1,
            pushes: Vec::new(),
            hello: Value::Null,
            close_code: None,
        }
    }

    async fn greeted(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        let mut c = Client::fresh(ws);
        c.hello = c.push("hello").await;
        c
    }

    pub async fn send_frame(&mut self, frame: Value) {
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Sends bytes as one binary frame, whatever they hold.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next frame, or None when the connection closed.
    pub async fn next_frame(&mut self) -> Option<Value> {
        self.frame_within(Duration::from_secs(10))
            .await
            .expect("no frame in 10 s")
    }

    /// The next frame, or None when the connection closed or nothing came for 10 s.
    pub async fn try_next_frame(&mut self) -> Option<Value> {
        self.frame_within(Duration::from_secs(10))
            .await
            .ok()
            .flatten()
    }

    async fn frame_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Value>, tokio::time::error::Elapsed> {
        loop {
            let Some(msg) = tokio::time::timeout(wait, self.ws.next()).await? else {
                return Ok(None);
            };
            match msg {
                Ok(Message::Binary(b)) => {
                    return Ok(Some(rmp_serde::from_slice(&b).unwrap()));
                }
                Ok(Message::Close(frame)) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return Ok(None);
                }
                Err(_) => return Ok(None),
                Ok(_) => continue,
            }
        }
    }

    /// The raw connection, for frames the helpers do not make.
    pub fn raw(&mut self) -> &mut TcpStream {
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("tests use plain TCP"),
        }
    }

    /// Sends a request and returns its reply (an `error` reply included).
    pub async fn call(&mut self, t: &str, fields: Value) -> Value {
        self.try_call(t, fields)
            .await
            .expect("closed (or silent for 10 s) while waiting for a reply")
    }

    /// [`Client::call`], or None when the connection closed or the reply did not come in 10 s.
    pub async fn try_call(&mut self, t: &str, fields: Value) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = fields;
        frame["t"] = json!(t);
        frame["id"] = json!(id);
        let bytes = rmp_serde::to_vec_named(&frame).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.ok()?;
        loop {
            let f = self.try_next_frame().await?;
            if f.get("id").and_then(Value::as_u64) == Some(id) {
                return Some(f);
            }
            self.pushes.push(f);
        }
    }

    /// Creates (or finds) the direct conversation with `other`; its id.
    pub async fn direct_with(&mut self, other: Uuid) -> String {
        let r = self
            .call(
                "create",
                json!({"kind": "direct", "members": [other.to_string()]}),
            )
            .await;
        r["conversation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no conversation in {r}"))
            .to_owned()
    }

    /// The next frame whose type is one of `kinds`; frames of other types are dropped.
    pub async fn next_of(&mut self, kinds: &[&str]) -> Value {
        loop {
            let f = self.next_frame().await.expect("closed while waiting");
            if kinds.iter().any(|k| f["t"] == *k) {
                return f;
            }
        }
    }

    /// The next push of type `t` (pushes of other types are kept).
    pub async fn push(&mut self, t: &str) -> Value {
        if let Some(i) = self.pushes.iter().position(|f| f["t"] == t) {
            return self.pushes.remove(i);
        }
        loop {
            let f = self
                .next_frame()
                .await
                .expect("closed while waiting for a push");
            if f["t"] == t {
                return f;
            }
            self.pushes.push(f);
        }
    }
}

/// The real binary, serving on a free port with its own database; killed when dropped.
pub struct Binary {
    pub port: u16,
    pub child: std::process::Child,
    /// The database it serves (its own, unless `CHAT_DATABASE_URL` was given).
    pub db_url: String,
    _db: Option<TestDb>,
    /// The working directory (removed when dropped).
    dir: tempfile::TempDir,
    /// The settings it was started with, for a restart.
    env: Vec<(String, String)>,
    shell: Option<String>,
}

impl Binary {
    /// Starts `chat-backend serve` with `env` on top of a fresh database on `backend`, and waits
    /// until it is ready.
    pub async fn start(backend: Backend, env: &[(&str, &str)]) -> Binary {
        Binary::start_with(backend, env, None).await
    }

    /// [`Binary::start`], through `sh -c '<shell>; exec chat-backend serve'` when `shell` is
    /// given: limits (`ulimit -n 64`) or signal dispositions (`trap '' XFSZ`) the process keeps.
    /// A `CHAT_LISTEN` in `env` sets the port (a free one otherwise).
    pub async fn start_with(backend: Backend, env: &[(&str, &str)], shell: Option<&str>) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let given = env.iter().find(|(k, _)| *k == "CHAT_DATABASE_URL");
        let db = match given {
            Some(_) => None,
            None => Some(TestDb::new(backend).await),
        };
        let db_url = match (given, &db) {
            (Some((_, url)), _) => url.to_string(),
            (None, Some(db)) => db.url.clone(),
            (None, None) => unreachable!("a database is made when none is given"),
        };
        let port = match env.iter().find(|(k, _)| *k == "CHAT_LISTEN") {
            Some((_, listen)) => listen.rsplit(':').next().unwrap().parse().unwrap(),
            None => free_port(),
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let shell = shell.map(str::to_owned);
        let b = Binary {
            port,
            child: spawn_serve(dir.path(), port, &db_url, &env, shell.as_deref()),
            db_url,
            _db: db,
            dir,
            env,
            shell,
        };
        b.wait_ready().await;
        b
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.get("/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the binary never became ready");
    }

    /// `kill -9`, then at once the same process again (same settings, port and node name), as
    /// systemd or Kubernetes restarts one; returns when it is ready.
    pub async fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_serve(
            self.dir.path(),
            self.port,
            &self.db_url,
            &self.env,
            self.shell.as_deref(),
        );
        self.wait_ready().await;
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/ws", self.port)
    }

    /// Everything the process wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// A token for `user`, signed like the binary's `token` command would.
    pub fn token(&self, user: Uuid) -> String {
        token(user)
    }

    pub async fn client(&self, user: Uuid) -> Client {
        Client::connect(&self.url(), &self.token(user)).await
    }

    /// A plain HTTP GET: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        self.get_accepting(path, "*/*").await
    }

    /// [`Binary::get`] with an `Accept` header, as a browser (`text/html`) or a program sends.
    pub async fn get_accepting(&self, path: &str, accept: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return (0, String::new());
        };
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            return (0, String::new());
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of one metric series in `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .filter(|rest| rest.starts_with(' '))
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// The process's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit and returns its code.
    pub async fn wait(&mut self) -> Option<i32> {
        let mut child = std::mem::replace(
            &mut self.child,
            std::process::Command::new("true").spawn().unwrap(),
        );
        let code = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        code.code()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `chat-backend serve` in `dir` on `port` and `db_url`, with `env` on top (through `sh -c
/// '<shell> && exec chat-backend serve'` when `shell` is given); its log is appended to
/// `dir/stderr.log`.
fn spawn_serve(
    dir: &std::path::Path,
    port: u16,
    db_url: &str,
    env: &[(String, String)],
    shell: Option<&str>,
) -> std::process::Child {
    let bin = env!("CARGO_BIN_EXE_chat-backend");
    let mut cmd = match shell {
        None => std::process::Command::new(bin),
        Some(first) => {
            let mut sh = std::process::Command::new("sh");
            sh.args(["-c", &format!("{first} && exec \"$0\" \"$@\""), bin]);
            sh
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap();
    cmd.arg("serve")
        .current_dir(dir)
        .env("CHAT_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHAT_DATABASE_URL", db_url)
        .env("CHAT_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd.spawn().unwrap()
}

/// The status of a bodiless `method path` to 127.0.0.1:`port`, with a bearer `token` if given.
pub async fn http_status(port: u16, method: &str, path: &str, token: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A token for `user` that a binary started with [`SECRET`] accepts for an hour.
pub fn token(user: Uuid) -> String {
    let config = Config {
        jwt_secret: SECRET.to_owned(),
        ..Config::default()
    };
    chat_backend::auth::sign(
        &config,
        chat_actors::ids::UserId(user),
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// The p50 and p99 of `samples` (milliseconds), for the figures a flood test prints.
pub fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Runs one statement as the PostgreSQL admin.
pub async fn admin(sql: String) {
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// Cuts the node off its database (only this test's database: others go on), or lets it back.
pub async fn outage(db_name: &str, down: bool) {
    admin(format!(
        "ALTER DATABASE {db_name} WITH ALLOW_CONNECTIONS {}",
        !down
    ))
    .await;
    if !down {
        return;
    }
    admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}'"
    ))
    .await;
    // Termination is a signal: wait until every backend of the database is gone.
    let pool = sqlx::PgPool::connect(&pg_admin_url()).await.unwrap();
    for _ in 0..100 {
        let left: i64 = sqlx::query("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(db_name)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.close().await;
}

/// A free local port (free when asked: bind to it soon), chosen below the kernel's ephemeral
/// range: every outgoing connection of every test takes its local port from that range, and
/// could take a port picked there before its server (a node, nginx) binds it ("Address already
/// in use"). Below the range only another `free_port` could pick it, at random.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let from = low.saturating_sub(12_000).max(1024);
    let span = u128::from(low.saturating_sub(from).max(1));
    loop {
        let offset = u16::try_from(Uuid::new_v4().as_u128() % span).unwrap_or(0);
        let port = from + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `conv`'s history is exactly seq 1..N and holds each of `acked` (mids answered `sent`) once;
/// read page by page, so any length is checked.
pub async fn assert_kept(c: &mut Client, conv: &str, acked: &[String]) {
    let mut messages = Vec::new();
    loop {
        let after = messages.len();
        let h = c
            .call(
                "history",
                json!({"conv": conv, "after": after, "limit": 100}),
            )
            .await;
        messages.extend(h["messages"].as_array().unwrap().iter().cloned());
        if h["more"] != true {
            break;
        }
    }
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    for mid in acked {
        let copies = messages.iter().filter(|m| m["mid"] == mid.as_str()).count();
        assert_eq!(copies, 1, "{mid} is there {copies} times");
    }
}
