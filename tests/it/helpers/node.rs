//! A node served in this process on port 0 with a fresh database.

use std::net::SocketAddr;
use std::time::Duration;

use chat_backend::config::Config;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backend, Client, FAST_POLL, SECONDS_10, SECRET, TestDb, eventually, http_status};

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
        let ready = async || {
            let status = http_status(self.addr.port(), "GET", "/readyz", None).await;
            (status == 200).then_some(())
        };
        eventually(SECONDS_10, FAST_POLL, "the node becomes ready", ready).await;
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
