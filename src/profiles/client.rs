//! The HTTP client of the user service (kaha-main-v3): batch profiles and business agents, with a
//! bearer token, a short timeout, and a circuit breaker so an outage costs nothing per request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chat_actors::ids::UserId;
use serde::{Deserialize, Serialize};

/// One HTTP call's budget (the request path waits less: see the cache).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 3;
/// How long an open breaker refuses calls before letting one through (by default).
const OPEN_FOR: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The breaker is open: the service failed recently, no call was made.
    #[error("the user service is failing; not called")]
    Open,
    /// Timeout, connection refused, 5xx, or an answer that is not the expected JSON.
    #[error("user service call failed: {0}")]
    Failed(String),
}

/// A profile row as the user service sends it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ProfileRow {
    /// The id.
    pub uuid: UserId,
    /// Display name.
    pub name: String,
    /// Avatar.
    pub avatar_url: Option<String>,
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    user_uuids: &'a [UserId],
    business_uuids: &'a [UserId],
}

/// The answer of `POST /api/batch/profiles`; missing lists are empty.
#[derive(Debug, Default, Deserialize)]
pub struct BatchAnswer {
    /// Users found.
    #[serde(default)]
    pub users: Vec<ProfileRow>,
    /// Businesses found.
    #[serde(default)]
    pub businesses: Vec<ProfileRow>,
}

#[derive(Deserialize)]
struct AgentsAnswer {
    agents: Vec<UserId>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// The user service client.
pub struct UserServiceClient {
    http: reqwest::Client,
    base: String,
    token: String,
    breaker: Mutex<Breaker>,
    /// How long the breaker stays open once tripped.
    open_for: Duration,
}

impl UserServiceClient {
    /// A client of the service at `base` (no trailing slash needed).
    pub fn new(base: &str, token: &str) -> Result<Self, ClientError> {
        // reqwest is built without a provider of its own (Cargo.toml): ring serves the process.
        // An error only says a provider is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| ClientError::Failed(e.to_string()))?;
        Ok(UserServiceClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            breaker: Mutex::new(Breaker::default()),
            open_for: OPEN_FOR,
        })
    }

    /// The same client, its breaker open for `open_for` once tripped (tests shorten it).
    pub fn with_breaker_open_for(self, open_for: Duration) -> Self {
        UserServiceClient { open_for, ..self }
    }

    /// Profiles of `users` and `businesses`; ids the service does not know are simply absent.
    pub async fn batch_profiles(
        &self,
        users: &[UserId],
        businesses: &[UserId],
    ) -> Result<BatchAnswer, ClientError> {
        self.guard()?;
        let call = self
            .http
            .post(format!("{}/api/batch/profiles", self.base))
            .bearer_auth(&self.token)
            .json(&BatchRequest {
                user_uuids: users,
                business_uuids: businesses,
            })
            .send();
        let outcome = async {
            let res = call.await?.error_for_status()?;
            res.json::<BatchAnswer>().await
        }
        .await;
        self.record(outcome.map_err(|e| ClientError::Failed(e.to_string())))
    }

    /// The agents of `business`; `None` when the service does not know it (404).
    pub async fn agents(&self, business: UserId) -> Result<Option<Vec<UserId>>, ClientError> {
        self.guard()?;
        let outcome = async {
            let res = self
                .http
                .get(format!("{}/api/businesses/{business}/agents", self.base))
                .bearer_auth(&self.token)
                .send()
                .await?;
            if res.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let answer = res.error_for_status()?.json::<AgentsAnswer>().await?;
            Ok(Some(answer.agents))
        }
        .await;
        self.record(outcome.map_err(|e: reqwest::Error| ClientError::Failed(e.to_string())))
    }

    /// Refuses at once while the breaker is open; lets one call through when it half-opens.
    fn guard(&self) -> Result<(), ClientError> {
        // A short section, never held across an await.
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match b.open_until {
            Some(until) if Instant::now() < until => Err(ClientError::Open),
            Some(_) => {
                // half-open: this call probes; further ones wait for its outcome's verdict
                b.open_until = Some(Instant::now() + self.open_for);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record<T>(&self, outcome: Result<T, ClientError>) -> Result<T, ClientError> {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Ok(_) => *b = Breaker::default(),
            Err(e) => {
                b.failures += 1;
                if b.failures >= TRIP_AFTER {
                    if b.open_until.is_none() {
                        tracing::warn!(error = %e, "user service failing: circuit open");
                    }
                    b.open_until = Some(Instant::now() + self.open_for);
                }
            }
        }
        metrics::counter!("chat_user_service_calls_total", "ok" => if outcome.is_ok() { "true" } else { "false" }).increment(1);
        outcome
    }
}
