//! Client tokens (PROTOCOL §2): one pinned algorithm, `iss`/`aud` when configured, `exp` with
//! 60 s of leeway at the door; and the signer behind `chat-backend token`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat_actors::ids::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The development secret used when none is configured (and loudly warned about).
const DEV_SECRET: &str = "chat-backend-development-secret-do-not-use-in-production";
/// The shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key as long as the hash (256 bits).
const MIN_SECRET_BYTES: usize = 32;
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
    /// An EC key on another curve than P-256: ES256 could never verify a token with it.
    #[error("{0} is an EC key on another curve than P-256; ES256 needs a P-256 key")]
    Curve(String),
    /// Tokens cannot be minted here: the node verifies with a public key.
    #[error(
        "CHAT_JWT_PUBLIC_KEY is set: tokens are signed by your identity provider, not by chat-backend"
    )]
    PublicKeyOnly,
    /// The configured secret is the development one, which anyone can read in this repository.
    #[error(
        "CHAT_JWT_SECRET is the public development secret: anyone could mint tokens; set a secret of your own"
    )]
    PublicSecret,
    /// The configured secret is too short to resist guessing.
    #[error(
        "CHAT_JWT_SECRET is {0} bytes long: HS256 needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret(usize),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Why a token was refused; the text says which check failed (never the token itself), for
/// the client's error and the log.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad signature, wrong algorithm, expired, wrong issuer or audience, malformed.
    #[error("invalid token: {}", reason(.0))]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// `sub` is not a UUID, or is the nil UUID (nobody).
    #[error("invalid token: the sub claim is not a user's UUID")]
    Subject,
    /// `iat` is later than now (beyond the leeway): the token is not issued yet.
    #[error("invalid token: it is issued in the future (iat)")]
    IssuedInFuture,
    /// The header names extensions that must be understood (RFC 7515 §4.1.11); we know none.
    #[error(
        "invalid token: its header lists critical extensions (crit) this server does not understand"
    )]
    Critical,
    /// Longer than any token we issue or accept.
    #[error("invalid token: longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
}

/// What a JWT check's failure means, in words a developer acts on.
fn reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "it has expired (exp)".to_owned(),
        K::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        K::InvalidSignature => "bad signature".to_owned(),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::UnsupportedAlgorithm
        | K::InvalidAlgorithmName => "wrong algorithm for this server".to_owned(),
        K::MissingRequiredClaim(claim) => format!("the {claim} claim is missing"),
        K::InvalidClaimFormat(claim) => format!("the {claim} claim has the wrong type"),
        K::InvalidIssuer => "wrong issuer (iss)".to_owned(),
        K::InvalidAudience => "wrong audience (aud)".to_owned(),
        K::InvalidSubject => "wrong subject (sub)".to_owned(),
        K::Json(_) => "its header or claims are not the JSON a JWT holds".to_owned(),
        _ => "not a signed JWT (three base64url parts)".to_owned(),
    }
}

/// The longest token accepted, in bytes: ours are ~250; an identity provider's with many claims
/// stay far below. Anything longer is refused before it is parsed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The credential of an `Authorization: Bearer …` header value (the scheme in any case).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The claims `chat-backend token` signs.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
}

/// The claims read from a verified token. `iss`, `aud` (a string or an array, RFC 7519
/// §4.1.3), `nbf` and `exp` are checked by jsonwebtoken; times are NumericDates, which may
/// carry fractions, and any value must be handled (an `exp` of 2^64-1 is "never").
#[derive(Debug, Deserialize)]
struct VerifiedClaims {
    sub: String,
    exp: f64,
    iat: Option<f64>,
}

/// The DER of the P-256 curve's object identifier (1.2.840.10045.3.1.7).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Whether a PEM EC public key is on P-256.
fn is_p256(pem_bytes: &[u8]) -> bool {
    pem::parse(pem_bytes).is_ok_and(|p| p.contents().windows(P256_OID.len()).any(|w| w == P256_OID))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
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
                DecodingKey::from_secret(secret(config)?.as_bytes()),
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
                if !is_p256(&pem) {
                    return Err(AuthConfigError::Curve(path.clone()));
                }
                (k, Algorithm::ES256)
            } else {
                return Err(AuthConfigError::Key(path.clone()));
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
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
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, &self.key, &self.validation)?;
        if data.header.crit.is_some() {
            return Err(AuthError::Critical);
        }
        let claims = data.claims;
        let user = UserId::parse(&claims.sub)
            .filter(|u| !u.uuid().is_nil())
            .ok_or(AuthError::Subject)?;
        if claims
            .iat
            .is_some_and(|iat| iat > now_secs().saturating_add(LEEWAY_SECS) as f64)
        {
            return Err(AuthError::IssuedInFuture);
        }
        Ok(Identity {
            user,
            // `as` saturates: a huge or fractional exp becomes the nearest whole second.
            exp: claims.exp as u64,
        })
    }
}

/// The configured HS256 secret, or the development one when none is; a configured secret that
/// anyone could guess (the development one, or a short one) is refused.
fn secret(config: &Config) -> Result<&str, AuthConfigError> {
    match config.jwt_secret.as_str() {
        "" => Ok(DEV_SECRET),
        DEV_SECRET => Err(AuthConfigError::PublicSecret),
        short if short.len() < MIN_SECRET_BYTES => Err(AuthConfigError::ShortSecret(short.len())),
        configured => Ok(configured),
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
    let now = now_secs();
    let claims = Claims {
        sub: user.to_string(),
        exp: now.saturating_add(ttl.as_secs()),
        iat: now,
        iss: (!config.jwt_issuer.is_empty()).then(|| config.jwt_issuer.clone()),
        aud: (!config.jwt_audience.is_empty()).then(|| config.jwt_audience.clone()),
    };
    let key = EncodingKey::from_secret(secret(config)?.as_bytes());
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
            jwt_secret: "s3cret-0123456789abcdef0123456789abcdef".to_owned(),
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
            jwt_secret: "other-0123456789abcdef0123456789abcdef".to_owned(),
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

    /// Signs arbitrary claims with `c`'s secret.
    fn signed(c: &Config, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(c.jwt_secret.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    #[test]
    fn any_claim_value_is_handled_and_the_time_claims_are_checked() {
        let c = Config {
            jwt_audience: "chat".to_owned(),
            ..config()
        };
        let v = Verifier::new(&c).unwrap();
        let user = UserId::random().to_string();
        let now = now_secs();
        let base = serde_json::json!({"sub": user, "iss": "kaha", "aud": "chat", "exp": now + 600});
        let with = |extra: serde_json::Value| {
            let mut claims = base.clone();
            for (k, val) in extra.as_object().unwrap() {
                claims[k] = val.clone();
            }
            v.verify(&signed(&c, claims))
        };
        // An exp at the end of u64 is a token that never expires, not a panic later on.
        let forever = with(serde_json::json!({"exp": u64::MAX})).unwrap();
        assert!(forever.remaining() > Duration::from_secs(100 * 365 * 24 * 3600));
        // aud may be an array holding the configured audience.
        assert!(with(serde_json::json!({"aud": ["other", "chat"]})).is_ok());
        assert!(with(serde_json::json!({"aud": ["other"]})).is_err());
        // Not valid yet, or issued in the future, or for nobody: refused.
        assert!(with(serde_json::json!({"nbf": now + 600})).is_err());
        assert!(with(serde_json::json!({"nbf": now - 10})).is_ok());
        assert!(matches!(
            with(serde_json::json!({"iat": now + 600})),
            Err(AuthError::IssuedInFuture)
        ));
        assert!(with(serde_json::json!({"iat": now})).is_ok());
        assert!(matches!(
            with(serde_json::json!({"sub": uuid::Uuid::nil().to_string()})),
            Err(AuthError::Subject)
        ));
        assert!(with(serde_json::json!({"exp": "soon"})).is_err());
    }

    #[test]
    fn an_ec_key_not_on_p256_is_refused_at_start() {
        // openssl ecparam -name secp384r1 -genkey | openssl ec -pubout
        const P384: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEZgihdPGaE44RR5G4WMmBSV1orZXXON1e
JVhv2ANiybGyKIC8HtJdXIlst17VC7YUGUeANR7yh2oZq1o74ZMdGffsnN3I/nNX
UjoQ+8aZvPNwuP0wR+vmOYM5E1FtwCq/
-----END PUBLIC KEY-----
";
        // openssl ecparam -name prime256v1 -genkey | openssl ec -pubout
        const P256: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEMl6AOIgwLlztBQjimtGEGnha/VNI
MdYtJo57Uz+kLguo+UALrMsS8A8ze6djQmOjldWkPXfqRcRDwKQlt8vfHQ==
-----END PUBLIC KEY-----
";
        let dir = tempfile::tempdir().unwrap();
        let key = |pem: &str| {
            let path = dir.path().join(format!("{}.pem", pem.len()));
            std::fs::write(&path, pem).unwrap();
            Config {
                jwt_public_key: path.display().to_string(),
                ..Config::default()
            }
        };
        assert!(matches!(
            Verifier::new(&key(P384)),
            Err(AuthConfigError::Curve(_))
        ));
        assert!(Verifier::new(&key(P256)).is_ok());
    }

    /// RS256 and ES256 tokens from the user service's private key verify against its public
    /// key, whatever crypto backend is built in; the public key used as an HS256 secret (the
    /// classic algorithm confusion) does not.
    #[test]
    fn tokens_signed_with_an_rsa_or_ec_private_key_verify_against_the_public_key() {
        let fixture =
            |name: &str| format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
        let user = UserId::random();
        let claims = serde_json::json!({"sub": user.to_string(), "exp": now_secs() + 60});
        let cases = [
            ("rsa.pub", "rsa.key.pem", Algorithm::RS256),
            ("ec.pub", "ec.key.pem", Algorithm::ES256),
        ];
        for (public, private, alg) in cases {
            let c = Config {
                jwt_public_key: fixture(public),
                ..Config::default()
            };
            let v = Verifier::new(&c).unwrap();
            let pem = std::fs::read(fixture(private)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ec_pem(&pem).unwrap(),
            };
            let token = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
            assert_eq!(v.verify(&token).unwrap().user, user, "{alg:?}");
            let public_text = std::fs::read(fixture(public)).unwrap();
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(&public_text),
            )
            .unwrap();
            assert!(
                v.verify(&confused).is_err(),
                "{alg:?}: HS256 with the public key"
            );
        }
    }

    #[test]
    fn a_refusal_says_why_and_critical_extensions_or_huge_tokens_are_refused() {
        let c = config();
        let v = Verifier::new(&c).unwrap();
        let user = UserId::random();
        let now = now_secs();
        let claims = json_claims(user, now + 60);
        let key = EncodingKey::from_secret(c.jwt_secret.as_bytes());
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".to_owned()]);
        let critical = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        assert!(matches!(v.verify(&critical), Err(AuthError::Critical)));
        let padded = Claims {
            iss: Some("x".repeat(9000)),
            ..claims
        };
        let huge = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &padded, &key).unwrap();
        assert!(matches!(v.verify(&huge), Err(AuthError::TooLong)));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json_claims(user, now - 3600),
            &key,
        )
        .unwrap();
        let e = v.verify(&expired).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        let forged = format!("{}x", sign(&c, user, Duration::from_secs(60)).unwrap());
        let e = v.verify(&forged).unwrap_err().to_string();
        assert!(e.contains("bad signature"), "{e}");
    }

    /// The claims of a token for `user` that expires at `exp`, from the configured issuer.
    fn json_claims(user: UserId, exp: u64) -> Claims {
        Claims {
            sub: user.to_string(),
            exp,
            iat: now_secs(),
            iss: Some("kaha".to_owned()),
            aud: None,
        }
    }

    #[test]
    fn bearer_credentials_are_read_in_any_case_of_the_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bEaReR  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn a_configured_secret_anyone_could_guess_is_refused() {
        for (weak, why) in [
            (DEV_SECRET, "public"),
            ("short-secret", "12 bytes"),
            ("0123456789abcdef0123456789abcde", "31 bytes"),
        ] {
            let c = Config {
                jwt_secret: weak.to_owned(),
                ..Config::default()
            };
            let e = Verifier::new(&c).err().expect(weak);
            assert!(e.to_string().contains(why), "{e}");
            assert!(sign(&c, UserId::random(), Duration::from_secs(60)).is_err());
        }
        let long = Config {
            jwt_secret: "0123456789abcdef0123456789abcdef".to_owned(),
            ..Config::default()
        };
        assert!(Verifier::new(&long).is_ok());
        // Unset: the development secret (the node then listens on loopback only).
        assert!(Verifier::new(&Config::default()).is_ok());
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

/// Property fuzzing of the token path: whatever a client puts where a token goes (random text,
/// or three base64url parts with random headers and claims), the verifier answers, never panics,
/// and accepts nothing it did not sign.
#[cfg(test)]
mod fuzz {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    use super::*;

    fn verifier() -> Verifier {
        let config = Config {
            jwt_secret: "fuzz-secret-0123456789abcdef0123456789".to_owned(),
            ..Config::default()
        };
        Verifier::new(&config).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Replays the AFL++ corpus (`fuzz/corpus/token`) through the verifier: nothing in it was
    /// signed with this secret, so all of it is refused, without a panic.
    #[test]
    fn fuzz_the_afl_corpus_is_refused() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/token");
        let v = verifier();
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(v.verify(&String::from_utf8_lossy(&data)).is_err());
            replayed += 1;
        }
        assert!(replayed >= 5, "only {replayed} corpus entries in {dir}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_any_text_is_refused(token in "\\PC{0,300}") {
            prop_assert!(verifier().verify(&token).is_err());
        }

        #[test]
        fn fuzz_forged_jwts_are_refused(
            alg in prop_oneof![
                Just("none".to_owned()),
                Just("HS256".to_owned()),
                Just("RS256".to_owned()),
                Just("ES256".to_owned()),
                Just("HS512".to_owned()),
                "[A-Za-z0-9]{0,8}",
            ],
            sub in prop_oneof![Just(uuid::Uuid::new_v4().to_string()), "\\PC{0,40}"],
            exp in any::<i64>(),
            signature in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            let claims = URL_SAFE_NO_PAD.encode(
                serde_json::json!({"sub": sub, "exp": exp}).to_string(),
            );
            let token = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(signature));
            prop_assert!(verifier().verify(&token).is_err());
        }
    }
}
