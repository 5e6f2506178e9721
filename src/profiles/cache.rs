//! The profile cache in front of the user service: fresh for 24 h, refreshed in the background
//! before that, served `stale` while the service fails, placeholders when nothing is known.
//! Concurrent look-ups of missing ids are coalesced into one batch call by a single task, and a
//! chat request waits for it at most [`REQUEST_WAIT`]; the answer still fills the cache after.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chat_actors::ids::UserId;
use chat_actors::ports::{Profiles, ProfilesError};
use chat_actors::protocol::Profile;
use moka::future::Cache;
use tokio::sync::{mpsc, oneshot};

use super::client::{ClientError, UserServiceClient};
use super::shared::{Kind, SharedProfiles};

/// How long entries live and how long a request waits; the defaults are PROTOCOL §5's.
#[derive(Debug, Clone, Copy)]
pub struct CachePolicy {
    /// How long a profile is fresh (24 h).
    pub fresh_for: Duration,
    /// Past this age an access refreshes the entry in the background.
    pub refresh_after: Duration,
    /// How long an id the service did not know stays a placeholder before it is asked again.
    pub unknown_for: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            fresh_for: Duration::from_secs(24 * 3600),
            refresh_after: Duration::from_secs(20 * 3600),
            unknown_for: Duration::from_secs(300),
        }
    }
}
/// How long expired entries are kept to be served stale.
pub const KEEP_FOR: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest a chat request waits on the user service.
pub const REQUEST_WAIT: Duration = Duration::from_millis(300);
/// How long a business's agent list is fresh.
const AGENTS_FRESH_FOR: Duration = Duration::from_secs(60);
/// Background retries of a failed batch, with doubling delays from this one.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRIES: u32 = 3;

#[derive(Debug, Clone)]
struct Cached {
    /// None: the service answered without this id.
    profile: Option<Profile>,
    fetched: Instant,
}

impl Cached {
    fn is_fresh(&self, policy: &CachePolicy) -> bool {
        let lives = if self.profile.is_some() {
            policy.fresh_for
        } else {
            policy.unknown_for
        };
        self.fetched.elapsed() < lives
    }
}

struct Lookup {
    ids: Vec<(Kind, UserId)>,
    done: Option<oneshot::Sender<()>>,
    attempt: u32,
}

/// Profiles and agents from the user service, cached.
pub struct CachedProfiles {
    profiles: Cache<(Kind, UserId), Arc<Cached>>,
    agents: Cache<UserId, Arc<(Vec<UserId>, Instant)>>,
    lookups: mpsc::UnboundedSender<Lookup>,
    client: Arc<UserServiceClient>,
    policy: CachePolicy,
    /// The cluster's Redis tier, behind this one.
    shared: Option<SharedProfiles>,
}

impl CachedProfiles {
    /// Starts the batching task over `client`, with the default policy.
    pub fn start(client: UserServiceClient) -> Arc<CachedProfiles> {
        Self::start_with(client, CachePolicy::default())
    }

    /// Starts the batching task over `client`.
    pub fn start_with(client: UserServiceClient, policy: CachePolicy) -> Arc<CachedProfiles> {
        Self::start_tiered(client, policy, None)
    }

    /// Starts the batching task over `client`, with the cluster's Redis tier behind the
    /// in-process one.
    pub fn start_shared(client: UserServiceClient, shared: SharedProfiles) -> Arc<CachedProfiles> {
        Self::start_tiered(client, CachePolicy::default(), Some(shared))
    }

    fn start_tiered(
        client: UserServiceClient,
        policy: CachePolicy,
        shared: Option<SharedProfiles>,
    ) -> Arc<CachedProfiles> {
        let client = Arc::new(client);
        let profiles = Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(KEEP_FOR)
            .build();
        let (tx, rx) = mpsc::unbounded_channel();
        let tier = Tiers {
            cache: profiles.clone(),
            shared: shared.clone(),
            policy,
        };
        tokio::spawn(batcher(client.clone(), tier, rx, tx.clone()));
        Arc::new(CachedProfiles {
            profiles,
            agents: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(KEEP_FOR)
                .build(),
            lookups: tx,
            client,
            policy,
            shared,
        })
    }

    async fn lookup(&self, wanted: &[(Kind, UserId)]) -> HashMap<UserId, Profile> {
        let mut out = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        let mut refresh = Vec::new();
        for key in wanted {
            match self.profiles.get(key).await {
                Some(c) if c.is_fresh(&self.policy) => {
                    if c.profile.is_some() && c.fetched.elapsed() > self.policy.refresh_after {
                        refresh.push(*key);
                    }
                    out.insert(key.1, shown(key.1, &c, false));
                }
                _ => missing.push(*key),
            }
        }
        if !refresh.is_empty() {
            let _ = self.lookups.send(Lookup {
                ids: refresh,
                done: None,
                attempt: 0,
            });
        }
        if missing.is_empty() {
            return out;
        }
        let (tx, rx) = oneshot::channel();
        let _ = self.lookups.send(Lookup {
            ids: missing.clone(),
            done: Some(tx),
            attempt: 0,
        });
        let _ = tokio::time::timeout(REQUEST_WAIT, rx).await;
        for key in missing {
            let profile = match self.profiles.get(&key).await {
                Some(c) if c.is_fresh(&self.policy) => shown(key.1, &c, false),
                // expired and not refreshed in time: the old entry, marked stale
                Some(c) => shown(key.1, &c, true),
                None => Profile::placeholder(key.1),
            };
            out.insert(key.1, profile);
        }
        out
    }
}

fn shown(id: UserId, c: &Cached, stale: bool) -> Profile {
    match &c.profile {
        Some(p) => Profile { stale, ..p.clone() },
        None => Profile::placeholder(id),
    }
}

#[async_trait]
impl Profiles for CachedProfiles {
    async fn profiles(&self, users: &[UserId], businesses: &[UserId]) -> HashMap<UserId, Profile> {
        let wanted: Vec<(Kind, UserId)> = users
            .iter()
            .map(|u| (Kind::User, *u))
            .chain(businesses.iter().map(|b| (Kind::Business, *b)))
            .collect();
        self.lookup(&wanted).await
    }

    async fn business_agents(&self, business: UserId) -> Result<Vec<UserId>, ProfilesError> {
        let cached = self.agents.get(&business).await;
        if let Some(c) = &cached
            && c.1.elapsed() < AGENTS_FRESH_FOR
        {
            return Ok(c.0.clone());
        }
        match tokio::time::timeout(Duration::from_secs(2), self.client.agents(business)).await {
            Ok(Ok(Some(agents))) => {
                self.agents
                    .insert(business, Arc::new((agents.clone(), Instant::now())))
                    .await;
                Ok(agents)
            }
            Ok(Ok(None)) => {
                self.agents.invalidate(&business).await;
                Err(ProfilesError::UnknownBusiness)
            }
            Ok(Err(e)) => stale_agents(cached, e.to_string()),
            Err(_) => stale_agents(cached, "timed out".to_owned()),
        }
    }

    async fn invalidate(&self, id: UserId) {
        self.profiles.invalidate(&(Kind::User, id)).await;
        self.profiles.invalidate(&(Kind::Business, id)).await;
        self.agents.invalidate(&id).await;
        if let Some(shared) = &self.shared {
            shared.forget(id).await;
        }
    }
}

fn stale_agents(
    cached: Option<Arc<(Vec<UserId>, Instant)>>,
    why: String,
) -> Result<Vec<UserId>, ProfilesError> {
    match cached {
        Some(c) => Ok(c.0.clone()),
        None => Err(ProfilesError::Unavailable(why)),
    }
}

/// The caches the batcher fills: this node's, and the cluster's when there is one.
struct Tiers {
    cache: Cache<(Kind, UserId), Arc<Cached>>,
    shared: Option<SharedProfiles>,
    policy: CachePolicy,
}

impl Tiers {
    /// Takes what the shared tier holds for `users` and `businesses` into this node's cache, and
    /// drops from the lists those it holds fresh enough not to ask the service (younger than
    /// the refresh age: an entry as old as ours would not refresh it). An older one is kept
    /// here only to be served stale if the service fails.
    async fn take_from_shared(&self, users: &mut Vec<UserId>, businesses: &mut Vec<UserId>) {
        let Some(shared) = &self.shared else {
            return;
        };
        let keys: Vec<(Kind, UserId)> = users
            .iter()
            .map(|u| (Kind::User, *u))
            .chain(businesses.iter().map(|b| (Kind::Business, *b)))
            .collect();
        let hits = shared.get_many(&keys).await;
        let now = Instant::now();
        for (key, hit) in keys.into_iter().zip(hits) {
            let Some((profile, age)) = hit else { continue };
            let skip_service_within = if profile.is_some() {
                self.policy.refresh_after
            } else {
                self.policy.unknown_for
            };
            let current = age < skip_service_within;
            let fetched = now.checked_sub(age).unwrap_or(now);
            if current || self.cache.get(&key).await.is_none() {
                self.cache
                    .insert(key, Arc::new(Cached { profile, fetched }))
                    .await;
            }
            if current {
                let list = if key.0 == Kind::User {
                    &mut *users
                } else {
                    &mut *businesses
                };
                list.retain(|id| *id != key.1);
            }
        }
    }
}

/// The one task that calls the service for profiles: it takes every look-up queued, looks in the
/// cluster's tier first, asks the service for the rest in one call, fills both tiers, and
/// retries failures in the background.
async fn batcher(
    client: Arc<UserServiceClient>,
    tiers: Tiers,
    mut rx: mpsc::UnboundedReceiver<Lookup>,
    retry: mpsc::UnboundedSender<Lookup>,
) {
    let cache = &tiers.cache;
    while let Some(first) = rx.recv().await {
        let mut lookups = vec![first];
        while let Ok(more) = rx.try_recv() {
            lookups.push(more);
        }
        let mut users = Vec::new();
        let mut businesses = Vec::new();
        for l in &lookups {
            for (kind, id) in &l.ids {
                let list = if *kind == Kind::User {
                    &mut users
                } else {
                    &mut businesses
                };
                if !list.contains(id) {
                    list.push(*id);
                }
            }
        }
        tiers.take_from_shared(&mut users, &mut businesses).await;
        let outcome = if users.is_empty() && businesses.is_empty() {
            None
        } else {
            Some(client.batch_profiles(&users, &businesses).await)
        };
        match outcome {
            None => {}
            Some(Ok(answer)) => {
                let now = Instant::now();
                let mut found: HashMap<(Kind, UserId), Profile> = HashMap::new();
                for (kind, rows) in [
                    (Kind::User, answer.users),
                    (Kind::Business, answer.businesses),
                ] {
                    for r in rows {
                        let p = Profile {
                            name: r.name,
                            avatar_url: r.avatar_url,
                            stale: false,
                            placeholder: false,
                        };
                        found.insert((kind, r.uuid), p);
                    }
                }
                let asked = users
                    .iter()
                    .map(|u| (Kind::User, *u))
                    .chain(businesses.iter().map(|b| (Kind::Business, *b)));
                let mut stored = Vec::new();
                for key in asked {
                    let profile = found.remove(&key);
                    // An id the service does not know keeps an older profile rather than losing it.
                    if profile.is_none()
                        && let Some(old) = cache.get(&key).await
                        && old.profile.is_some()
                    {
                        continue;
                    }
                    if tiers.shared.is_some() {
                        stored.push((key, profile.clone()));
                    }
                    cache
                        .insert(
                            key,
                            Arc::new(Cached {
                                profile,
                                fetched: now,
                            }),
                        )
                        .await;
                }
                if let Some(shared) = &tiers.shared {
                    shared.put_many(&stored).await;
                }
            }
            Some(Err(e)) => {
                if !matches!(e, ClientError::Open) {
                    tracing::debug!(error = %e, "profile batch failed");
                }
                for l in &lookups {
                    if l.attempt < RETRIES {
                        let again = Lookup {
                            ids: l.ids.clone(),
                            done: None,
                            attempt: l.attempt + 1,
                        };
                        let tx = retry.clone();
                        let delay = RETRY_FIRST * 2u32.pow(l.attempt);
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = tx.send(again);
                        });
                    }
                }
            }
        }
        for l in lookups {
            if let Some(done) = l.done {
                let _ = done.send(());
            }
        }
    }
}
