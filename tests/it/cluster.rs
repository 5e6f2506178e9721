//! Several real nodes on one PostgreSQL and one Redis: users anywhere reach users anywhere, each
//! push crosses to another node once per node (not per recipient), and what stays on one node
//! never touches Redis.

use chat_actors::ids::ConversationId;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{Backend, Binary, Client, TestDb, free_port};

fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// `n` nodes named `node-0`.. on one fresh database and a fresh Redis prefix, each ready and
/// each seeing all the others.
async fn cluster(db: &TestDb, n: usize) -> Vec<Binary> {
    cluster_on(db, n, &redis_url(), &[]).await
}

/// [`cluster`] on the Redis at `redis`, with `extra` settings for every node.
async fn cluster_on(db: &TestDb, n: usize, redis: &str, extra: &[(&str, &str)]) -> Vec<Binary> {
    let prefix = format!("test-{}", Uuid::new_v4().simple());
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        let mut env = vec![
            ("CHAT_DATABASE_URL", db.url.as_str()),
            ("CHAT_REDIS_URL", redis),
            ("CHAT_REDIS_PREFIX", prefix.as_str()),
            ("CHAT_NODE_ID", id.as_str()),
            ("CHAT_RATE_MESSAGES", "100000"),
            ("CHAT_RATE_BURST", "100000"),
        ];
        env.extend_from_slice(extra);
        nodes.push(Binary::start(Backend::Postgres, &env).await);
    }
    nodes
}

/// The pushes node `b` has published to other nodes so far.
async fn pushes_published(b: &Binary) -> f64 {
    b.metric("chat_bus_publishes_total{kind=\"push\"}").await
}

async fn group(c: &mut Client, members: &[Uuid]) -> String {
    let members: Vec<String> = members.iter().map(Uuid::to_string).collect();
    let r = c
        .call("create", json!({"kind": "group", "members": members}))
        .await;
    r["conversation"]["id"].as_str().unwrap().to_owned()
}

/// The node that owns `conv` among `node-0`..`node-{n-1}`, as every node computes it.
fn owner(conv: &str, n: usize) -> usize {
    let live: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let conv = ConversationId::parse(conv).unwrap();
    let owner = chat_actors::ownership::owner(conv, &live).unwrap();
    live.iter().position(|n| n == owner).unwrap()
}

/// `conv`'s history is exactly seq 1..N and holds every one of `acked` (mids answered `sent`).
async fn assert_kept(c: &mut Client, conv: &str, acked: &[String]) {
    let h = c.call("history", json!({"conv": conv, "limit": 200})).await;
    let messages = h["messages"].as_array().unwrap();
    let seqs: Vec<i64> = messages
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    for mid in acked {
        assert!(
            messages.iter().any(|m| m["mid"] == mid.as_str()),
            "lost {mid}"
        );
    }
}

#[tokio::test]
async fn a_push_crosses_once_per_node_and_local_traffic_stays_off_redis() {
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster(&db, 2).await;
    // a on node 0; b and c on node 1.
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let mut cc = nodes[1].client(c).await;
    let conv = group(&mut ca, &[b, c]).await;
    // Each member's `conversation` push (their own view: one bus message each) is in first.
    cb.push("conversation").await;
    cc.push("conversation").await;
    let before: Vec<f64> = [
        pushes_published(&nodes[0]).await,
        pushes_published(&nodes[1]).await,
    ]
    .to_vec();
    for i in 0..20 {
        let r = ca
            .call("send", json!({"conv": conv, "body": format!("m{i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
    }
    for reader in [&mut cb, &mut cc] {
        for i in 0..20 {
            let m = reader.push("message").await;
            assert_eq!(m["body"], format!("m{i}"));
        }
    }
    let after = [
        pushes_published(&nodes[0]).await,
        pushes_published(&nodes[1]).await,
    ];
    let published = (after[0] - before[0]) + (after[1] - before[1]);
    // Whichever node owns it, each message crossed to the other node once: b and c share one
    // bus message (or a's node got one for a, whose only connection sent it).
    assert_eq!(published, 20.0, "owner node-{}", owner(&conv, 2));

    // Two users on the owner's node only: their messages never touch Redis. New groups until
    // one is owned by node 0 (each is, with even odds).
    let (d, e) = (Uuid::new_v4(), Uuid::new_v4());
    let mut cd = nodes[0].client(d).await;
    let mut ce = nodes[0].client(e).await;
    let mut local = group(&mut cd, &[e]).await;
    while owner(&local, 2) != 0 {
        local = group(&mut cd, &[e]).await;
    }
    let before = pushes_published(&nodes[0]).await;
    for i in 0..10 {
        let r = cd
            .call("send", json!({"conv": local, "body": format!("l{i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        assert_eq!(ce.push("message").await["body"], format!("l{i}"));
    }
    assert_eq!(pushes_published(&nodes[0]).await, before);
}

/// A Redis server of the test's own (the shared one must not be stopped under other tests).
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn with_redis_down_remote_work_fails_fast_local_work_goes_on_and_all_heals() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster_on(&db, 2, &redis.url(), &[]).await;
    // Two users on node 0, in a group node 1 owns (reached over Redis), and one node 0 owns.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[0].client(b).await;
    let mut remote = group(&mut ca, &[b]).await;
    while owner(&remote, 2) != 1 {
        remote = group(&mut ca, &[b]).await;
    }
    let mut local = group(&mut ca, &[b]).await;
    while owner(&local, 2) != 0 {
        local = group(&mut ca, &[b]).await;
    }
    let r = ca
        .call("send", json!({"conv": remote, "body": "before"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");

    redis.kill();
    // Within a heartbeat the node knows: a request for node 1 is refused, not left to time out.
    let mut refused = false;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let r = ca
            .call("send", json!({"conv": remote, "body": "during"}))
            .await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{r}");
        if r["code"] == "unavailable" {
            // Refused for knowing Redis is away, not for having waited out the 4.8 s deadline.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "refused only after {:?}",
                started.elapsed()
            );
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "sends to a remote owner kept going with Redis down"
    );
    // What needs no other node goes on.
    for i in 0..5 {
        let r = ca
            .call("send", json!({"conv": local, "body": format!("local {i}")}))
            .await;
        assert_eq!(r["t"], "sent", "{r}");
        let pushed = loop {
            let m = cb.push("message").await;
            if m["conv"] == local.as_str() {
                break m;
            }
        };
        assert_eq!(pushed["body"], format!("local {i}"));
    }

    let _redis = PrivateRedis::start(port);
    // Healed by itself within PROTOCOL's 10 s.
    let mut healed = false;
    for _ in 0..100 {
        let r = ca
            .call("send", json!({"conv": remote, "body": "after"}))
            .await;
        if r["t"] == "sent" {
            healed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        healed,
        "the cluster did not heal within 10 s of Redis's return"
    );
    // One dense order.
    assert_kept(&mut ca, &remote, &[]).await;
}

#[tokio::test]
async fn a_killed_node_loses_nothing_acknowledged_and_its_work_moves_within_10_s() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut nodes = cluster(&db, 3).await;
    // Conversations of users on node 0, some owned by node 2, which dies.
    let (watcher, a) = (Uuid::new_v4(), Uuid::new_v4());
    let mut cw = nodes[0].client(watcher).await;
    let mut ca = nodes[0].client(a).await;
    let on_dying = Uuid::new_v4();
    let _doomed = nodes[2].client(on_dying).await;
    cw.call("watch", json!({"users": [on_dying.to_string()]}))
        .await;
    let mut convs = Vec::new();
    while convs.len() < 3 {
        let conv = group(&mut ca, &[Uuid::new_v4()]).await;
        if owner(&conv, 3) == 2 {
            convs.push(conv);
        }
    }
    let mut acked: Vec<(String, String)> = Vec::new();
    for conv in &convs {
        for i in 0..5 {
            let r = ca
                .call("send", json!({"conv": conv, "body": format!("before {i}")}))
                .await;
            assert_eq!(r["t"], "sent", "{r}");
            acked.push((conv.clone(), r["mid"].as_str().unwrap().to_owned()));
        }
    }
    nodes[2].child.kill().unwrap();
    let died = std::time::Instant::now();
    // Each conversation is served again by a survivor within PROTOCOL's 10 s.
    for conv in &convs {
        loop {
            let r = ca
                .call("send", json!({"conv": conv, "body": "after"}))
                .await;
            if r["t"] == "sent" {
                acked.push((conv.clone(), r["mid"].as_str().unwrap().to_owned()));
                break;
            }
            assert!(died.elapsed() < std::time::Duration::from_secs(10), "{r}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    println!(
        "a killed node's conversations served again after {:?}",
        died.elapsed()
    );
    // Its user went offline for the watcher on another node.
    let offline = loop {
        let f = cw.push("presence").await;
        if f["user"] == on_dying.to_string() && f["status"] == "offline" {
            break f;
        }
    };
    assert_eq!(offline["status"], "offline");
    // Nothing acknowledged is lost, and every conversation is still 1..N.
    for conv in &convs {
        let mids: Vec<String> = acked
            .iter()
            .filter(|(c, _)| c == conv)
            .map(|(_, m)| m.clone())
            .collect();
        assert_kept(&mut ca, conv, &mids).await;
    }
    let _ = nodes.pop();
}

/// `scripts/cluster` with the test's database, ports and directory.
fn cluster_script(args: &[&str], dir: &std::path::Path, db: &TestDb, ports: (u16, &[u16])) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster");
    let status = std::process::Command::new(script)
        .args(args)
        .arg(dir)
        .env("CHAT_DATABASE_URL", &db.url)
        .env("CHAT_REDIS_URL", redis_url())
        .env(
            "CHAT_REDIS_PREFIX",
            format!("test-{}", Uuid::new_v4().simple()),
        )
        .env("CHAT_JWT_SECRET", crate::helpers::SECRET)
        .env("CLUSTER_PORT", ports.0.to_string())
        .env(
            "CLUSTER_NODE_PORTS",
            ports
                .1
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        )
        .status()
        .unwrap();
    assert!(status.success(), "scripts/cluster {args:?} failed");
}

#[tokio::test]
async fn behind_nginx_clients_on_any_node_chat_and_outlive_a_killed_node() {
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    // nginx and each node on a port of its own.
    let (lb, node_ports) = (free_port(), [free_port(), free_port()]);
    cluster_script(&["start", "2"], dir.path(), &db, (lb, &node_ports));
    let url = format!("ws://127.0.0.1:{lb}/v1/ws");
    let config = chat_backend::config::Config {
        jwt_secret: crate::helpers::SECRET.to_owned(),
        ..Default::default()
    };
    let token = |u: Uuid| {
        chat_backend::auth::sign(
            &config,
            chat_actors::ids::UserId(u),
            std::time::Duration::from_secs(600),
        )
        .unwrap()
    };
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = Client::connect(&url, &token(a)).await;
    let mut cb = Client::connect(&url, &token(b)).await;
    let nodes_seen = [ca.hello["node"].clone(), cb.hello["node"].clone()];
    let r = ca
        .call(
            "create",
            json!({"kind": "direct", "members": [b.to_string()]}),
        )
        .await;
    let conv = r["conversation"]["id"].as_str().unwrap().to_owned();
    let r = ca
        .call("send", json!({"conv": conv, "body": "through nginx"}))
        .await;
    assert_eq!(r["t"], "sent", "{r}");
    assert_eq!(cb.push("message").await["body"], "through nginx");
    // least_conn spread the two connections over both nodes.
    assert_ne!(nodes_seen[0], nodes_seen[1], "both clients on one node");

    // Kill b's node; b reconnects through nginx (to the survivor) and both go on.
    let killed = cb.hello["node"].as_str().unwrap().to_owned();
    let pid = std::fs::read_to_string(dir.path().join(format!("{killed}.pid"))).unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    let died = std::time::Instant::now();
    let mut cb = loop {
        // nginx passes a connection the dead node refuses on to the live one.
        let c = Client::connect(&url, &token(b)).await;
        if c.hello["node"] != killed.as_str() {
            break c;
        }
        assert!(died.elapsed() < std::time::Duration::from_secs(10));
    };
    loop {
        let r = ca
            .call("send", json!({"conv": conv, "body": "after"}))
            .await;
        if r["t"] == "sent" {
            break;
        }
        assert!(died.elapsed() < std::time::Duration::from_secs(10), "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let h = cb.call("history", json!({"conv": conv})).await;
    let bodies: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["through nginx", "after"]);
    cluster_script(&["stop"], dir.path(), &db, (lb, &node_ports));
}

/// The stand-in user service (`chat-backend dev-user-service`) on `port`, naming `user` `name`.
fn user_service(port: u16, user: Uuid, name: &str, dir: &std::path::Path) -> std::process::Child {
    let file = dir.join(format!("users-{}.json", Uuid::new_v4().simple()));
    let users = json!({"users": {user.to_string(): {"name": name}}, "businesses": {}});
    std::fs::write(&file, users.to_string()).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-backend"))
        .arg("dev-user-service")
        .arg("--file")
        .arg(&file)
        .args(["--at", &format!("127.0.0.1:{port}")])
        .env("CHAT_PROFILES_TOKEN", "profiles-token")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

/// Two nodes on a stand-in user service that names `subject` `name`.
struct ProfileSetup {
    dir: tempfile::TempDir,
    port: u16,
    service: Option<std::process::Child>,
    nodes: Vec<Binary>,
    _db: TestDb,
}

impl ProfileSetup {
    async fn start(subject: Uuid, name: &str) -> ProfileSetup {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let service = user_service(port, subject, name, dir.path());
        let db = TestDb::new(Backend::Postgres).await;
        let url = format!("http://127.0.0.1:{port}");
        let extra = [
            ("CHAT_PROFILES_URL", url.as_str()),
            ("CHAT_PROFILES_TOKEN", "profiles-token"),
            ("CHAT_SERVICE_TOKEN", "service-token"),
        ];
        let nodes = cluster_on(&db, 2, &redis_url(), &extra).await;
        ProfileSetup {
            dir,
            port,
            service: Some(service),
            nodes,
            _db: db,
        }
    }

    fn stop_service(&mut self) {
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
    }
}

impl Drop for ProfileSetup {
    fn drop(&mut self) {
        self.stop_service();
    }
}

/// A new user on `node` in a direct chat with `subject`, once its view names them `name`.
async fn chat_seeing(node: &Binary, subject: Uuid, name: &str) -> (Client, String) {
    let mut viewer = node.client(Uuid::new_v4()).await;
    let r = viewer
        .call(
            "create",
            json!({"kind": "direct", "members": [subject.to_string()]}),
        )
        .await;
    let conv = r["conversation"]["id"].as_str().unwrap().to_owned();
    let mut seen = String::new();
    for _ in 0..50 {
        seen = name_seen(&mut viewer, &conv, subject).await;
        if seen == name {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, name, "the node never cached the profile");
    (viewer, conv)
}

/// The name `viewer`'s `get` of `conv` shows for `user`.
async fn name_seen(c: &mut Client, conv: &str, user: Uuid) -> String {
    let r = c.call("get", json!({"conv": conv})).await;
    r["conversation"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == user.to_string())
        .map(|m| m["profile"]["name"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_profile_change_told_to_one_node_is_forgotten_on_every_node() {
    let subject = Uuid::new_v4();
    let mut setup = ProfileSetup::start(subject, "Old Name").await;
    let (dir, port) = (setup.dir.path().to_owned(), setup.port);
    let (mut viewer, conv) = chat_seeing(&setup.nodes[1], subject, "Old Name").await;
    let told = setup.nodes[0].port;

    // The service now says "New Name", and tells node 0 only.
    setup.stop_service();
    let mut service = user_service(port, subject, "New Name", &dir);
    let event = json!({"type": "user.profile.updated", "uuid": subject.to_string()}).to_string();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", told))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "POST /v1/internal/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer service-token\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
        event.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Node 1 forgot its copy and fetches the new name.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = name_seen(&mut viewer, &conv, subject).await;
        if seen == "New Name" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = service.kill();
    let _ = service.wait();
    assert_eq!(seen, "New Name", "node 1 kept the old profile");
}

#[tokio::test]
async fn postgres_stopped_under_a_clusters_traffic_loses_nothing_and_heals() {
    let db = TestDb::new(Backend::Postgres).await;
    let db_name = db.url.rsplit('/').next().unwrap().to_owned();
    let nodes = cluster(&db, 2).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ca = nodes[0].client(a).await;
    let mut cb = nodes[1].client(b).await;
    let conv = group(&mut ca, &[b]).await;
    let mut acked: Vec<String> = Vec::new();
    let send = async |c: &mut Client, body: &str| -> serde_json::Value {
        c.call("send", json!({"conv": conv, "body": body})).await
    };
    for i in 0..10 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let r = send(c, "before").await;
        assert_eq!(r["t"], "sent", "{r}");
        acked.push(r["mid"].as_str().unwrap().to_owned());
    }
    crate::helpers::outage(&db_name, true).await;
    // Every request is answered (never left hanging) while the database is away.
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        let started = std::time::Instant::now();
        let r = send(c, "during").await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{r}");
        match r["t"].as_str() {
            Some("sent") => acked.push(r["mid"].as_str().unwrap().to_owned()),
            _ => assert_eq!(r["code"], "unavailable", "{r}"),
        }
    }
    crate::helpers::outage(&db_name, false).await;
    let back = std::time::Instant::now();
    for c in [&mut ca, &mut cb] {
        loop {
            let r = send(c, "after").await;
            if r["t"] == "sent" {
                acked.push(r["mid"].as_str().unwrap().to_owned());
                break;
            }
            assert!(back.elapsed() < std::time::Duration::from_secs(10), "{r}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    assert_kept(&mut ca, &conv, &acked).await;
}

#[tokio::test]
async fn a_profile_one_node_fetched_is_served_by_another_from_redis() {
    let subject = Uuid::new_v4();
    let mut setup = ProfileSetup::start(subject, "Shared Name").await;
    chat_seeing(&setup.nodes[0], subject, "Shared Name").await;
    // The user service goes away; node 1 has never asked it about the subject.
    setup.stop_service();
    let nodes = &setup.nodes;
    let mut second = nodes[1].client(Uuid::new_v4()).await;
    let r = second
        .call(
            "create",
            json!({"kind": "direct", "members": [subject.to_string()]}),
        )
        .await;
    let conv = r["conversation"]["id"].as_str().unwrap().to_owned();
    let got = second.call("get", json!({"conv": conv})).await;
    let profile = got["conversation"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == subject.to_string())
        .map(|m| m["profile"].clone())
        .unwrap();
    assert_eq!(profile["name"], "Shared Name", "{profile}");
    assert!(
        profile.get("placeholder").is_none() && profile.get("stale").is_none(),
        "{profile}"
    );
}
