//! A node served in this process on port 0 with a fresh database.

use std::net::SocketAddr;
use std::time::Duration;

use chat_backend::config::Config;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backend, Client, SECRET, TestDb};

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
