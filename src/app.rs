//! The composition root: the one place that names the concrete adapters and wires them to the
//! core. It decides nothing of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_actors::node::budget::BudgetConfig;
use chat_actors::node::{Node, NodeConfig};
use chat_actors::ports::{Bus, Profiles, Store};
use chat_actors::rules::Limits;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Verifier};
use crate::bus::LocalBus;
use crate::bus::redis::RedisLink;
use crate::config::Config;
use crate::profiles::{CachedProfiles, PlaceholderProfiles, SharedProfiles, UserServiceClient};
use crate::redis_conn::RedisConn;
use crate::store::keyring::Keyring;
use crate::store::sealed::SealedStore;
use crate::store::{self, GuardedStore, SqlStore, writer::BatchingWriter};

use crate::transport::state::{Demo, Probe, Transport, WsSettings};
use crate::transport::{self};
use crate::{metrics, retention};

/// How often the retention job runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
/// How long a readiness check waits for the database or Redis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a node on `listener` until `shutdown` is cancelled, then drains: sessions say `bye`,
/// actors stop, the writer commits what it holds, the pool closes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    App::build(config, addr, shutdown)
        .await?
        .run(listener)
        .await
}

/// A node built from its configuration: the adapters connected, the core started, the cluster
/// joined (it knows the live set); not yet serving, nor yet heard by the other nodes.
pub struct App {
    node: Node,
    transport: Arc<Transport>,
    store: Arc<dyn Store>,
    sql: SqlStore,
    writer: Arc<BatchingWriter>,
    writer_task: JoinHandle<()>,
    /// The Redis bus, joined but not yet running.
    link: Option<RedisLink>,
    retention: (u32, u32),
    shutdown: CancellationToken,
}

impl App {
    /// Builds the node that will listen on `addr`: config → adapters → core. Fails, with what
    /// to do, when a dependency does not answer or the configuration is unsafe.
    pub async fn build(
        config: Config,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        let recorder = metrics::install();
        refuse_public_dev_secret(&config, addr)?;
        let verifier = Verifier::new(&config).context("JWT configuration")?;
        let (sql, store) = open_store(&config).await?;
        let (writer, writer_task) = BatchingWriter::start(
            store.clone(),
            sql.write_concurrency(),
            Duration::from_millis(config.commit_window_ms),
        );
        let node_id = if config.node_id.is_empty() {
            format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.node_id.clone()
        };
        let (bus, link): (Arc<dyn Bus>, _) = if config.redis_url.is_empty() {
            (Arc::new(LocalBus), None)
        } else {
            let (bus, link) =
                crate::bus::redis::connect(&config.redis_url, &config.redis_prefix, &node_id)
                    .await
                    .context("connecting to Redis")?;
            tracing::info!(prefix = %config.redis_prefix, "cluster mode: Redis bus");
            (bus, Some(link))
        };
        let profiles = connect_profiles(&config).await?;
        let node = Node::start(
            node_config(&config, &node_id),
            store.clone(),
            writer.clone(),
            bus,
            profiles,
        )
        .await
        .context("starting the node supervisor")?;
        let link = match link {
            Some(mut link) => {
                link.join(&node).await.context("joining the cluster")?;
                Some(link)
            }
            None => None,
        };
        let ready = readiness(store.clone(), link.as_ref().map(RedisLink::probe));
        let transport = Arc::new(Transport {
            node: node.clone(),
            verifier,
            metrics: recorder,
            ready,
            service_token: config.service_token.clone(),
            ws: WsSettings {
                heartbeat: Duration::from_millis(config.heartbeat_ms),
                max_frame_bytes: config.max_frame_bytes,
                outbound_queue: config.outbound_queue,
                allowed_origins: config.origins(),
                max_connections_per_user: config.max_connections_per_user,
                max_connections: config.max_connections,
                node_id,
            },
            per_user: DashMap::new(),
            open: Default::default(),
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            demo: Demo::new(&config),
        });
        Ok(App {
            node,
            transport,
            store,
            sql,
            writer,
            writer_task,
            link,
            retention: (config.retention_days, config.deleted_audit_days),
            shutdown,
        })
    }

    /// Serves `listener` until the shutdown token is cancelled: the bus runs and the other nodes
    /// hear this one, the expiry job starts; then drains (sessions say `bye`, actors stop, the
    /// bus leaves, the writer commits what it holds, the pool closes).
    pub async fn run(self, listener: TcpListener) -> anyhow::Result<()> {
        let bus_tasks = TaskTracker::new();
        let bus_stop = CancellationToken::new();
        if let Some(link) = self.link {
            link.run(Arc::new(self.node.clone()), bus_stop.clone(), &bus_tasks);
            self.node.say_hello();
        }
        let (retention_days, audit_days) = self.retention;
        tokio::spawn(retention::run(
            self.store.clone(),
            retention_days,
            audit_days,
            RETENTION_EVERY,
            self.shutdown.clone(),
        ));
        let addr = listener.local_addr().context("listener address")?;
        tracing::info!(addr = %addr, node = %self.transport.ws.node_id, "serving");
        transport::serve(listener, self.transport).await;

        self.node.stop().await;
        bus_stop.cancel();
        bus_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(3), bus_tasks.wait()).await;
        self.writer.flush().await;
        drop(self.writer);
        self.writer_task.abort();
        self.sql.close().await;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

/// The development secret is public: it may serve only what this machine alone reaches.
fn refuse_public_dev_secret(config: &Config, addr: SocketAddr) -> anyhow::Result<()> {
    if !auth::uses_dev_secret(config) {
        return Ok(());
    }
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "CHAT_JWT_SECRET is not set and the node listens on {addr}, beyond this machine: \
             with the public development secret anyone could mint tokens. Set CHAT_JWT_SECRET \
             (at least 32 bytes) or CHAT_JWT_PUBLIC_KEY, or listen on 127.0.0.1 only"
        );
    }
    tracing::warn!(
        "CHAT_JWT_SECRET is not set: using the built-in DEVELOPMENT secret; anyone can mint tokens"
    );
    Ok(())
}

/// The database, migrated, behind the breaker and (when keys are set) encryption at rest.
async fn open_store(config: &Config) -> anyhow::Result<(SqlStore, Arc<dyn Store>)> {
    let sql = store::connect_with(
        &config.database_url,
        config.db_max_connections,
        config.sqlite_durability(),
    )
    .await
    .context("opening the database")?;
    let replicas = config.replica_urls()?;
    let sql = if replicas.is_empty() {
        sql
    } else {
        let max_lag = Duration::from_millis(config.database_replica_max_lag_ms);
        tracing::info!(
            standbys = replicas.len(),
            "reads that a standby may serve go to the standbys"
        );
        sql.reading_from(&replicas, max_lag)
            .context("opening the read replicas")?
    };
    tracing::info!(backend = sql.backend(), "database ready");
    let mut store: Arc<dyn Store> = GuardedStore::new(sql.clone());
    if let Some(keys) = Keyring::parse(&config.encryption_keys)? {
        tracing::info!(key = keys.current(), "message bodies are encrypted at rest");
        store = SealedStore::wrap(store, Arc::new(keys));
    }
    ::metrics::gauge!("chat_database_up").set(1.0);
    Ok((sql, store))
}

/// The user service's client behind its caches (in a cluster, a tier shared in Redis too), or
/// placeholders when none is configured.
async fn connect_profiles(config: &Config) -> anyhow::Result<Arc<dyn Profiles>> {
    Ok(if config.profiles_url.is_empty() {
        tracing::info!("no CHAT_PROFILES_URL: placeholder profiles, no business agents");
        Arc::new(PlaceholderProfiles)
    } else {
        let client = UserServiceClient::new(&config.profiles_url, &config.profiles_token)
            .context("the user service client")?;
        if config.redis_url.is_empty() {
            CachedProfiles::start(client)
        } else {
            // In a cluster the nodes share a tier in Redis behind their own.
            let shared = SharedProfiles::connect(
                &config.redis_url,
                &config.redis_prefix,
                crate::profiles::cache::KEEP_FOR,
            )
            .await
            .context("connecting the profile cache to Redis")?;
            CachedProfiles::start_shared(client, shared)
        }
    })
}

/// What the core is configured with.
fn node_config(config: &Config, node_id: &str) -> NodeConfig {
    NodeConfig {
        node_id: node_id.to_owned(),
        limits: Limits {
            max_group_size: config.max_group_size,
            max_message_bytes: config.max_message_bytes,
        },
        budgets: BudgetConfig {
            sends: (config.rate_messages, config.rate_burst),
            requests: (config.rate_requests, config.rate_requests_burst),
            max_in_flight: config.max_in_flight_per_user,
            overload_lag: Duration::from_millis(config.overload_lag_ms),
        },
        conversation_idle: Duration::from_millis(config.conversation_idle_ms),
        conversation_rest: Duration::from_millis(config.conversation_rest_ms),
    }
}

/// Whether the database (and, in a cluster, Redis) answers, for `/readyz`.
fn readiness(store: Arc<dyn Store>, redis: Option<RedisConn>) -> Probe {
    Arc::new(move || {
        let store = store.clone();
        let redis = redis.clone();
        Box::pin(async move {
            let db = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await,
                Ok(Ok(()))
            );
            let bus = match redis {
                None => true,
                Some(conn) => redis_answers(conn).await,
            };
            db && bus
        })
    })
}

/// Whether Redis answers a `PING` in time.
async fn redis_answers(mut conn: RedisConn) -> bool {
    let ping = redis::cmd("PING");
    let answer = ping.query_async::<String>(&mut conn);
    matches!(tokio::time::timeout(PROBE_TIMEOUT, answer).await, Ok(Ok(_)))
}

/// Re-seals every stored body that is not sealed with the current (first) key: after a key
/// was added in front of `CHAT_ENCRYPTION_KEYS`, or encryption was switched on. Runs in rounds
/// of [`REKEY_ROUND`] rows while the nodes serve; returns how many bodies it re-sealed.
pub async fn rekey(config: &Config) -> anyhow::Result<u64> {
    let keys = Keyring::parse(&config.encryption_keys)?
        .context("CHAT_ENCRYPTION_KEYS is empty: there is no key to re-encrypt with")?;
    let sql = store::connect(&config.database_url, 2)
        .await
        .context("opening the database")?;
    let (mut total, mut after) = (0, None);
    let prefix = keys.current_prefix();
    loop {
        let rows = sql
            .bodies_not_sealed_with(&prefix, after, REKEY_ROUND)
            .await
            .context("reading bodies to re-encrypt")?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some((last.conv, last.seq));
        let mut resealed = Vec::with_capacity(rows.len());
        for row in &rows {
            let body = keys.open(row.mid, &row.body)?;
            resealed.push(keys.seal(row.mid, &body));
        }
        let changed = sql
            .replace_bodies(&rows, &resealed)
            .await
            .context("writing re-encrypted bodies")?;
        total += changed;
        tracing::info!(resealed = total, key = keys.current(), "rekey");
    }
    sql.close().await;
    Ok(total)
}

/// Rows one rekey transaction re-seals.
const REKEY_ROUND: u64 = 500;

/// Applies the migrations and returns.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let sql = store::connect(&config.database_url, 2)
        .await
        .context("opening the database")?;
    tracing::info!(backend = sql.backend(), "migrations applied");
    sql.close().await;
    Ok(())
}

/// Serves the stand-in user service from a JSON file until `stop`.
pub async fn dev_user_service(
    config: &Config,
    file: &std::path::Path,
    listen: &str,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let dir = crate::profiles::dev_service::Directory::load(file)
        .with_context(|| format!("reading {}", file.display()))?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(addr = %listen, users = dir.users.len(), businesses = dir.businesses.len(), "dev user service");
    crate::profiles::dev_service::serve(dir, config.profiles_token.clone(), listener, stop).await;
    Ok(())
}
