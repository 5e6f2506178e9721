//! Client tokens (PROTOCOL §2): one pinned algorithm, `iss`/`aud` when configured, `exp` with
//! 60 s of leeway at the door; and the signer behind `chat-backend token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_actors::ids::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The development secret used when none is configured (and loudly warned about).
const DEV_SECRET: &str = "chat-backend-development-secret-do-not-use-in-production";
/// Leeway on `exp` at the upgrade and on `auth` (none at the expiry timer).
const LEEWAY_SECS: u64 = 60;

/// Why the verifier or signer cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The public key file cannot be read.
    #[error("cannot read the JWT public key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an RSA nor an EC P-256 public key in PEM.
    #[error("{0} holds no RSA or EC public key in PEM")]
    Key(String),
    /// Tokens cannot be minted here: the node verifies with a public key.
    #[error(
        "CHAT_JWT_PUBLIC_KEY is set: tokens are signed by your identity provider, not by chat-backend"
    )]
    PublicKeyOnly,
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, wrong algorithm, expired, wrong issuer or audience, malformed.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `sub` is not a UUID.
    #[error("the token's sub is not a UUID")]
    Subject,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// A verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// When the token expires, seconds since the epoch.
    pub exp: u64,
}

impl Identity {
    /// Time left until `exp` (zero when past).
    pub fn remaining(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(self.exp).saturating_sub(now)
    }
}

/// Checks client tokens.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// Builds the verifier from the configuration. A public key pins RS256 or ES256 (by its
    /// type); otherwise HS256 with the secret.
    pub fn new(config: &Config) -> Result<Verifier, AuthConfigError> {
        let (key, algorithm) = if config.jwt_public_key.is_empty() {
            (
                DecodingKey::from_secret(secret(config).as_bytes()),
                Algorithm::HS256,
            )
        } else {
            let path = &config.jwt_public_key;
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::Read {
                path: path.clone(),
                source,
            })?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, Algorithm::ES256)
            } else {
                return Err(AuthConfigError::Key(path.clone()));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        // A configured iss/aud must also be present: jsonwebtoken only checks the claims a
        // token carries unless they are required.
        let mut required = vec!["exp", "sub"];
        if !config.jwt_issuer.is_empty() {
            required.push("iss");
        }
        if !config.jwt_audience.is_empty() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        if config.jwt_issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&config.jwt_issuer]);
        }
        if config.jwt_audience.is_empty() {
            // A token that carries an `aud` would otherwise be refused when none is configured.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.jwt_audience]);
        }
        Ok(Verifier { key, validation })
    }

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)?;
        let user = UserId::parse(&data.claims.sub).ok_or(AuthError::Subject)?;
        Ok(Identity {
            user,
            exp: data.claims.exp,
        })
    }
}

/// The configured HS256 secret, or the development one.
fn secret(config: &Config) -> &str {
    if config.jwt_secret.is_empty() {
        DEV_SECRET
    } else {
        &config.jwt_secret
    }
}

/// Whether the development secret is in use (worth a loud warning).
pub fn uses_dev_secret(config: &Config) -> bool {
    config.jwt_secret.is_empty() && config.jwt_public_key.is_empty()
}

/// Signs a token for `user`, valid for `ttl`, with the configured secret, issuer and audience.
pub fn sign(config: &Config, user: UserId, ttl: Duration) -> Result<String, AuthConfigError> {
    if !config.jwt_public_key.is_empty() {
        return Err(AuthConfigError::PublicKeyOnly);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: user.to_string(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        iss: (!config.jwt_issuer.is_empty()).then(|| config.jwt_issuer.clone()),
        aud: (!config.jwt_audience.is_empty()).then(|| config.jwt_audience.clone()),
    };
    let key = EncodingKey::from_secret(secret(config).as_bytes());
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &key,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            jwt_secret: "s3cret".to_owned(),
            jwt_issuer: "kaha".to_owned(),
            ..Config::default()
        }
    }

    #[test]
    fn a_signed_token_verifies_and_names_its_user() {
        let c = config();
        let user = UserId::random();
        let token = sign(&c, user, Duration::from_secs(60)).unwrap();
        let id = Verifier::new(&c).unwrap().verify(&token).unwrap();
        assert_eq!(id.user, user);
        assert!(id.remaining() > Duration::from_secs(50));
    }

    #[test]
    fn wrong_secret_issuer_or_alg_none_is_refused() {
        let c = config();
        let user = UserId::random();
        let other = Config {
            jwt_secret: "other".to_owned(),
            ..config()
        };
        let token = sign(&other, user, Duration::from_secs(60)).unwrap();
        assert!(Verifier::new(&c).unwrap().verify(&token).is_err());
        let no_iss = Config {
            jwt_issuer: String::new(),
            ..config()
        };
        let token = sign(&no_iss, user, Duration::from_secs(60)).unwrap();
        assert!(Verifier::new(&c).unwrap().verify(&token).is_err());
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(Verifier::new(&c).unwrap().verify(unsigned).is_err());
    }

    #[test]
    fn minting_is_refused_with_a_public_key() {
        let c = Config {
            jwt_public_key: "/some/key.pem".to_owned(),
            ..Config::default()
        };
        assert!(matches!(
            sign(&c, UserId::random(), Duration::from_secs(1)),
            Err(AuthConfigError::PublicKeyOnly)
        ));
    }
}
