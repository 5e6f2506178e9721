//! The profile cache across nodes: the shared Redis tier and invalidation everywhere.

use serde_json::json;
use uuid::Uuid;

use super::{cluster_on, redis_url};
use crate::helpers::{Backend, Binary, Client, POLL, SECONDS_5, TestDb, eventually, free_port};

/// The stand-in user service (`chat-backend dev-user-service`) on `port`, naming `user` `name`.
fn user_service(port: u16, user: Uuid, name: &str, dir: &std::path::Path) -> std::process::Child {
    let users = json!({"users": {user.to_string(): {"name": name}}, "businesses": {}});
    user_service_with(port, &users, dir)
}

/// The stand-in user service on `port`, serving `directory` (users and businesses).
fn user_service_with(
    port: u16,
    directory: &serde_json::Value,
    dir: &std::path::Path,
) -> std::process::Child {
    let file = dir.join(format!("users-{}.json", Uuid::new_v4().simple()));
    std::fs::write(&file, directory.to_string()).unwrap();
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
    let conv = viewer.direct_with(subject).await;
    eventually(SECONDS_5, POLL, "the node caches the profile", async || {
        (name_seen(&mut viewer, &conv, subject).await == name).then_some(())
    })
    .await;
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
    // The scheme in any case, as for the user API.
    let req = format!(
        "POST /v1/internal/events HTTP/1.1\r\nHost: x\r\nAuthorization: bearer service-token\r\n\
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
    eventually(
        SECONDS_5,
        POLL,
        "node 1 forgets the old profile",
        async || (name_seen(&mut viewer, &conv, subject).await == "New Name").then_some(()),
    )
    .await;
    let _ = service.kill();
    let _ = service.wait();
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
    let conv = second.direct_with(subject).await;
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

/// A business is online on every node while an agent of theirs is connected anywhere, also on
/// a node that never made or transferred a chat with it (so never asked for its agents).
#[tokio::test]
async fn a_business_is_online_on_a_node_that_never_made_its_chat() {
    let shop = Shop::open();
    let (business, agent, customer) = (shop.business, shop.agent, shop.customer);
    let db = TestDb::new(Backend::Postgres).await;
    let nodes = cluster_on(&db, 2, &redis_url(), &shop.settings()).await;
    // The agent and the chat on node 0.
    let ca = nodes[0].client(agent).await;
    let mut on_first = nodes[0].client(customer).await;
    let r = on_first
        .call(
            "create",
            json!({"kind": "business", "business": business.to_string()}),
        )
        .await;
    assert_eq!(r["t"], "conversation", "{r}");
    // The customer, now also on node 1, watches the business there.
    let mut on_second = nodes[1].client(customer).await;
    let r = on_second
        .call("watch", json!({"users": [business.to_string()]}))
        .await;
    assert_eq!(r["t"], "ok", "{r}");
    let business_online = "node 1 shows the business online with its agent online";
    eventually(SECONDS_5, POLL, business_online, async || {
        let r = on_second
            .call("presence", json!({"users": [business.to_string()]}))
            .await;
        (r["items"][0]["status"] == "online").then_some(())
    })
    .await;
    // No `online` push is owed here: node 1 may have learned the agents before the watch (the
    // chat's actor, if it lives on node 1, asks for them when it starts), and a push comes only
    // when the status changes. The `offline` below is a change node 1 can only see through
    // the agents it learned.
    // The agent leaves: the business goes offline for the watcher on node 1.
    drop(ca);
    let gone = loop {
        let f = on_second.push("presence").await;
        if f["user"] == business.to_string() && f["status"] == "offline" {
            break f;
        }
    };
    assert_eq!(gone["status"], "offline");
}

/// One of a business's own agents (or the business itself) cannot be its customer: a
/// `bad_request`, which a client does not retry, while a customer's chat is made.
#[tokio::test]
async fn an_agent_opening_a_chat_with_its_own_business_is_a_bad_request() {
    let shop = Shop::open();
    let node = Binary::start(Backend::Sqlite, &shop.settings()).await;
    let create = json!({"kind": "business", "business": shop.business.to_string()});
    for who in [shop.agent, shop.business] {
        let mut c = node.client(who).await;
        let r = c.call("create", create.clone()).await;
        assert_eq!(r["code"], "bad_request", "{r}");
    }
    let mut cc = node.client(shop.customer).await;
    let r = cc.call("create", create).await;
    assert_eq!(r["t"], "conversation", "{r}");
}

/// A business with one agent, and a customer, on a stand-in user service of their own (stopped
/// when dropped).
struct Shop {
    business: Uuid,
    agent: Uuid,
    customer: Uuid,
    url: String,
    service: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Shop {
    fn open() -> Shop {
        let (business, agent, customer) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let directory = json!({
            "users": {agent.to_string(): {"name": "Agent"}, customer.to_string(): {"name": "Customer"}},
            "businesses": {business.to_string(): {"name": "Shop", "agents": [agent.to_string()]}},
        });
        let service = user_service_with(port, &directory, dir.path());
        Shop {
            business,
            agent,
            customer,
            url: format!("http://127.0.0.1:{port}"),
            service,
            _dir: dir,
        }
    }

    /// The node settings that point at its user service.
    fn settings(&self) -> [(&str, &str); 2] {
        [
            ("CHAT_PROFILES_URL", self.url.as_str()),
            ("CHAT_PROFILES_TOKEN", "profiles-token"),
        ]
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}
