//! A primary that can fail over: `CHAT_DATABASE_URL` may list several hosts, as libpq's URLs do
//! (`postgres://user@host1:5432,host2:5432/db`). The node writes only to the one that is not in
//! recovery; a watcher asks that one twice a second (on a connection it keeps) whether it still
//! is, and when it is gone or demoted finds the new primary among the hosts, points both pools
//! there and retires every connection opened before (a demoted primary's connections would
//! answer "read-only transaction", SQLSTATE 25006, for as long as they live).

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};

use crate::store::error::ConnectError;

/// How often the primary is asked whether it still is.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long one host may take to answer whether it is the primary.
const ASK_WITHIN: Duration = Duration::from_secs(1);

/// The URL once per host: `postgres://u@h1:1,h2:2/db?x` → `postgres://u@h1:1/db?x`,
/// `postgres://u@h2:2/db?x`. A URL with one host is returned as it is.
pub fn split_hosts(url: &str) -> Result<Vec<String>, ConnectError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(vec![url.to_owned()]);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|h| h.is_empty()) {
        return Err(ConnectError::Database(
            "CHAT_DATABASE_URL lists an empty host".to_owned(),
        ));
    }
    Ok(hosts
        .iter()
        .map(|host| format!("{scheme}://{user}{host}{tail}"))
        .collect())
}

/// The hosts, and which one the pools point at.
pub struct Failover {
    hosts: Vec<PgConnectOptions>,
    state: Mutex<State>,
}

struct State {
    /// The host the pools point at.
    current: usize,
    /// When the pools were pointed there (after a failover): connections older are retired.
    moved_at: Option<Instant>,
}

impl Failover {
    /// The hosts of `urls`, each with `extra` session settings; none chosen yet.
    pub fn new(urls: &[String], extra: &[(&str, &str)]) -> Result<Failover, ConnectError> {
        let hosts = urls
            .iter()
            .map(|url| Ok(PgConnectOptions::from_str(url)?.options(extra.iter().copied())))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Failover {
            hosts,
            state: Mutex::new(State {
                current: 0,
                moved_at: None,
            }),
        })
    }

    /// Whether there is more than one host to choose from.
    pub fn has_choice(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The options of the host the pools point at.
    pub fn current(&self) -> PgConnectOptions {
        let current = self.state.lock().map(|s| s.current).unwrap_or(0);
        self.hosts[current].clone()
    }

    /// Finds the primary among the hosts (the current one asked first) and points at it:
    /// whether it moved, or None when no host answers as a primary.
    pub async fn find_primary(&self) -> Option<bool> {
        let current = self.state.lock().map(|s| s.current).unwrap_or(0);
        let order = (0..self.hosts.len()).map(|i| (current + i) % self.hosts.len());
        for i in order {
            if is_primary(&self.hosts[i]).await {
                let mut state = self.state.lock().ok()?;
                let moved = state.current != i;
                if moved {
                    state.current = i;
                    state.moved_at = Some(Instant::now());
                }
                return Some(moved);
            }
        }
        None
    }

    /// Whether a connection of age `age` was opened before the last move (and must go).
    pub fn is_stale(&self, age: Duration) -> bool {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.moved_at)
            .is_some_and(|moved| age > moved.elapsed())
    }

    /// Watches the primary for as long as the process runs: when it stops answering as one,
    /// finds the new one and points `pools` (each with its own session settings) there.
    pub async fn watch(self: Arc<Self>, pools: Vec<(PgPool, Vec<(&'static str, &'static str)>)>) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        let mut without = false;
        // One connection of the watcher's own, kept between checks (dropped when it fails).
        let mut probe: Option<PgConnection> = None;
        loop {
            every.tick().await;
            if probe.is_none() {
                probe = connect(&self.current()).await;
            }
            if let Some(conn) = probe.as_mut() {
                match ask(conn).await {
                    Some(true) => continue,
                    Some(false) => {}
                    None => probe = None,
                }
            }
            let moved = match self.find_primary().await {
                Some(moved) => moved,
                None => {
                    if !without {
                        tracing::warn!("no database host answers as the primary; asking again");
                    }
                    without = true;
                    continue;
                }
            };
            without = false;
            if !moved {
                continue;
            }
            // The watcher's connection is to the old primary.
            probe = None;
            let now = self.current();
            for (pool, extra) in &pools {
                pool.set_connect_options(now.clone().options(extra.iter().copied()));
            }
            tracing::warn!(
                host = now.get_host(),
                port = now.get_port(),
                "the database's primary moved: writing there now"
            );
            metrics::counter!("chat_db_failovers_total").increment(1);
        }
    }
}

/// Whether the server at `options` answers, and is not in recovery (on a connection of its own).
async fn is_primary(options: &PgConnectOptions) -> bool {
    let Some(mut conn) = connect(options).await else {
        return false;
    };
    let primary = ask(&mut conn).await == Some(true);
    let _ = conn.close().await;
    primary
}

/// A connection to `options` within [`ASK_WITHIN`].
async fn connect(options: &PgConnectOptions) -> Option<PgConnection> {
    tokio::time::timeout(ASK_WITHIN, PgConnection::connect_with(options))
        .await
        .ok()?
        .ok()
}

/// Whether the server on `conn` is not in recovery; None when it does not answer in time.
async fn ask(conn: &mut PgConnection) -> Option<bool> {
    let query = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(conn);
    let in_recovery = tokio::time::timeout(ASK_WITHIN, query).await.ok()?.ok()?;
    Some(!in_recovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_several_hosts_is_one_url_per_host() {
        assert_eq!(
            split_hosts("postgres://app:pw@db1:5432,db2:5433/chat?sslmode=disable").unwrap(),
            [
                "postgres://app:pw@db1:5432/chat?sslmode=disable",
                "postgres://app:pw@db2:5433/chat?sslmode=disable"
            ]
        );
        assert_eq!(
            split_hosts("postgres://db1/chat").unwrap(),
            ["postgres://db1/chat"]
        );
        assert!(split_hosts("postgres://u@db1,/chat").is_err());
    }
}
