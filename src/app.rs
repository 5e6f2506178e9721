//! The composition root: the one place that names the concrete adapters and wires them to the
//! core. It decides nothing of its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chat_actors::node::budget::BudgetConfig;
use chat_actors::node::{Node, NodeConfig};
use chat_actors::ports::{Bus, Profiles, Store};
use chat_actors::rules::Limits;
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Verifier};
use crate::bus::LocalBus;
use crate::config::Config;
use crate::profiles::{CachedProfiles, PlaceholderProfiles, SharedProfiles, UserServiceClient};
use crate::store::keyring::Keyring;
use crate::store::sealed::SealedStore;
use crate::store::{self, GuardedStore, writer::BatchingWriter};
use crate::transport::http::demo::Demo;
use crate::transport::state::{Probe, Transport, WsSettings};
use crate::transport::{self};
use crate::{metrics, retention};

/// How often the retention job runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Runs a node on `listener` until `shutdown` is cancelled, then drains: sessions say `bye`,
/// actors stop, the writer commits what it holds, the pool closes.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let recorder = metrics::install();
    if auth::uses_dev_secret(&config) {
        // The development secret is public: it may serve only what this machine alone reaches.
        let addr = listener.local_addr().context("listener address")?;
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
    }
    let verifier = Verifier::new(&config).context("JWT configuration")?;
    let sql = store::connect_with(
        &config.database_url,
        config.db_max_connections,
        config.sqlite_durability(),
    )
    .await
    .context("opening the database")?;
    tracing::info!(backend = sql.backend(), "database ready");
    let mut store: Arc<dyn Store> = GuardedStore::new(sql.clone());
    if let Some(keys) = Keyring::parse(&config.encryption_keys)? {
        tracing::info!(key = keys.current(), "message bodies are encrypted at rest");
        store = SealedStore::wrap(store, Arc::new(keys));
    }
    ::metrics::gauge!("chat_database_up").set(1.0);
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
    let profiles: Arc<dyn Profiles> = if config.profiles_url.is_empty() {
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
    };
    let node = Node::start(
        NodeConfig {
            node_id: node_id.clone(),
            limits: Limits {
                max_group_size: config.max_group_size,
                max_message_bytes: config.max_message_bytes,
            },
            budgets: BudgetConfig {
                sends: (config.rate_messages, config.rate_burst),
                requests: (config.rate_requests, config.rate_requests_burst),
                max_in_flight: config.max_in_flight_per_user,
            },
        },
        store.clone(),
        writer.clone(),
        bus,
        profiles,
    )
    .await
    .context("starting the node supervisor")?;
    let bus_tasks = TaskTracker::new();
    let bus_stop = CancellationToken::new();
    let redis_probe = match link {
        Some(mut link) => {
            link.join(&node).await.context("joining the cluster")?;
            let probe = link.probe();
            link.run(Arc::new(node.clone()), bus_stop.clone(), &bus_tasks);
            node.say_hello();
            Some(probe)
        }
        None => None,
    };

    let probe_store = store.clone();
    let ready: Probe = Arc::new(move || {
        let s = probe_store.clone();
        let redis = redis_probe.clone();
        Box::pin(async move {
            let db = matches!(
                tokio::time::timeout(Duration::from_secs(2), s.ping()).await,
                Ok(Ok(()))
            );
            let bus = match redis {
                None => true,
                Some(mut conn) => {
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<String>(&mut conn);
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), answer).await,
                        Ok(Ok(_))
                    )
                }
            };
            db && bus
        })
    });
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
            node_id: node_id.clone(),
        },
        per_user: DashMap::new(),
        open: Default::default(),
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        demo: Demo::new(&config),
    });
    tokio::spawn(retention::run(
        store.clone(),
        config.retention_days,
        config.deleted_audit_days,
        RETENTION_EVERY,
        shutdown.clone(),
    ));

    tracing::info!(addr = %listener.local_addr().context("listener address")?, node = %node_id, "serving");
    transport::serve(listener, transport).await;

    node.stop().await;
    bus_stop.cancel();
    bus_tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), bus_tasks.wait()).await;
    writer.flush().await;
    drop(writer);
    writer_task.abort();
    sql.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
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
