//! The real binary as a process: started with its settings on a free port, killed or restarted,
//! and asked over plain HTTP.

use tokio::net::TcpStream;
use uuid::Uuid;

use super::{Backend, Client, FAST_POLL, SECONDS_10, SECRET, TestDb, eventually, token};

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
        let ready = async || (self.get("/readyz").await.0 == 200).then_some(());
        eventually(SECONDS_10, FAST_POLL, "the binary becomes ready", ready).await;
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
        signal(self.child.id(), "-TERM");
    }

    /// Stops the process where it stands (SIGSTOP), as a stall would: it holds its connections
    /// and answers nothing until [`Binary::resume`].
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
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

/// A free local port (free when asked: bind to it soon), chosen below the kernel's ephemeral
/// range: every outgoing connection of every test takes its local port from that range, and
/// could take a port picked there before its server (a node, nginx) binds it ("Address already
/// in use"). Below the range only another `free_port` could pick it, and within this process
/// none gives a port twice.
/// Sends `sig` (as `kill` spells it: `-STOP`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

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
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

/// Every port [`free_port`] gave in this test process. A node restarted under its own port (a
/// rolling restart) leaves it unbound for a moment: a test running beside it must not be
/// given that port then (it was, once, and the restart failed with "address in use").
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
