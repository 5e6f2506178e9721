//! The node this tool starts when no `--url` is given: a release node on a temporary SQLite
//! database (or `--database-url`), with a stand-in user service so business chats work;
//! `CHAT_LOAD_BIN` starts another build, for before/after comparisons.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::args::Args;

pub(crate) struct Started {
    pub(crate) node: Child,
    pub(crate) users: Child,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) url: String,
    pub(crate) pid: u32,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.users.kill();
        let _ = self.node.wait();
        let _ = self.users.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub(crate) fn start_node(args: &Args, businesses: &[(Uuid, Vec<Uuid>)]) -> Started {
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

pub(crate) fn http_ok(url: &str) -> bool {
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
