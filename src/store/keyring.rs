//! The keys message bodies are encrypted with at rest (`CHAT_ENCRYPTION_KEYS`): AES-256-GCM,
//! each sealed body naming the key that sealed it, so keys rotate without rewriting history.
//!
//! A sealed body is stored as text: `"\u{1}aes256gcm:" KEY_ID ":" base64(nonce ‖ ciphertext ‖
//! tag)`. The leading control character keeps it apart from a body stored before encryption was
//! switched on (read as it is). The message's `mid` is the associated data, so a sealed body
//! copied onto another row does not open.

use std::borrow::Cow;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Generate, Key, KeyInit, Nonce, Payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chat_actors::ids::Mid;

/// What marks a sealed body.
const SEALED: &str = "\u{1}aes256gcm:";
/// AES-GCM's nonce: 12 bytes, random per body.
const NONCE_BYTES: usize = 12;

/// Why the keys or a sealed body are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// `CHAT_ENCRYPTION_KEYS` is malformed.
    #[error(
        "CHAT_ENCRYPTION_KEYS: {0} (expected ID:BASE64 of 32 bytes, comma-separated; the first encrypts)"
    )]
    Spec(String),
    /// A body names a key that is not configured.
    #[error("a message body is sealed with key {0:?}, which is not in CHAT_ENCRYPTION_KEYS")]
    UnknownKey(String),
    /// A body does not open with its key (altered, or copied from another message).
    #[error("a sealed message body does not open (key {0:?})")]
    Damaged(String),
}

/// The configured keys; the first seals, any opens.
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).finish()
    }
}

impl Keyring {
    /// Parses `ID:BASE64,ID:BASE64,...`; `None` when `spec` is empty (encryption off).
    pub fn parse(spec: &str) -> Result<Option<Keyring>, KeyringError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry
                .split_once(':')
                .ok_or_else(|| KeyringError::Spec(format!("{:?} has no key id", mask(entry))))?;
            let valid_id = !id.is_empty()
                && id.len() <= 32
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_id {
                return Err(KeyringError::Spec(format!(
                    "key id {id:?} must be 1 to 32 of A-Z a-z 0-9 _ -"
                )));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeyringError::Spec(format!("key id {id:?} appears twice")));
            }
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| KeyringError::Spec(format!("key {id:?} is not base64")))?;
            let key = Key::<Aes256Gcm>::try_from(bytes.as_slice())
                .map_err(|_| KeyringError::Spec(format!("key {id:?} is not 32 bytes")))?;
            keys.push((id.to_owned(), Aes256Gcm::new(&key)));
        }
        Ok((!keys.is_empty()).then_some(Keyring { keys }))
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        self.keys.first().map_or("", |(id, _)| id.as_str())
    }

    /// How every body sealed with the current key begins, for finding the others.
    pub fn current_prefix(&self) -> String {
        format!("{SEALED}{}:", self.current())
    }

    /// The stored form of `body`, sealed with the current key.
    pub fn seal(&self, mid: Mid, body: &str) -> String {
        let Some((id, cipher)) = self.keys.first() else {
            return body.to_owned();
        };
        let nonce = Nonce::<Aes256Gcm>::generate();
        let payload = Payload {
            msg: body.as_bytes(),
            aad: mid.0.as_bytes(),
        };
        // AES-GCM fails only past 64 GiB of plaintext; bodies are a few KiB at most.
        let sealed = cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_BYTES + sealed.len());
        raw.extend_from_slice(nonce.as_slice());
        raw.extend_from_slice(&sealed);
        format!("{SEALED}{id}:{}", STANDARD.encode(raw))
    }

    /// The body `stored` holds: opened when sealed, as it is when stored in the clear.
    pub fn open<'a>(&self, mid: Mid, stored: &'a str) -> Result<Cow<'a, str>, KeyringError> {
        let Some(rest) = stored.strip_prefix(SEALED) else {
            return Ok(Cow::Borrowed(stored));
        };
        let (id, b64) = rest
            .split_once(':')
            .ok_or_else(|| KeyringError::Damaged(String::new()))?;
        let cipher = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, c)| c)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_owned()))?;
        let damaged = || KeyringError::Damaged(id.to_owned());
        let raw = STANDARD.decode(b64).map_err(|_| damaged())?;
        if raw.len() < NONCE_BYTES {
            return Err(damaged());
        }
        let (nonce, sealed) = raw.split_at(NONCE_BYTES);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| damaged())?;
        let payload = Payload {
            msg: sealed,
            aad: mid.0.as_bytes(),
        };
        let plain = cipher.decrypt(&nonce, payload).map_err(|_| damaged())?;
        String::from_utf8(plain)
            .map(Cow::Owned)
            .map_err(|_| damaged())
    }

    /// The id of the key `stored` is sealed with; `None` when stored in the clear.
    pub fn sealed_with(stored: &str) -> Option<&str> {
        stored
            .strip_prefix(SEALED)
            .and_then(|rest| rest.split_once(':'))
            .map(|(id, _)| id)
    }
}

/// An entry of the key list as an error may show it: the id, never the key.
fn mask(entry: &str) -> String {
    format!("{}…", entry.chars().take(4).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn a_sealed_body_opens_with_its_key_and_not_on_another_message() {
        let ring = Keyring::parse(&format!("k1:{}", key(1))).unwrap().unwrap();
        let mid = Mid::random();
        let stored = ring.seal(mid, "namaste");
        assert!(!stored.contains("namaste"));
        assert_eq!(Keyring::sealed_with(&stored), Some("k1"));
        assert_eq!(ring.open(mid, &stored).unwrap(), "namaste");
        assert!(matches!(
            ring.open(Mid::random(), &stored),
            Err(KeyringError::Damaged(_))
        ));
        // Two seals of one body differ (a fresh nonce each).
        assert_ne!(ring.seal(mid, "namaste"), stored);
    }

    #[test]
    fn after_a_rotation_old_bodies_open_and_new_ones_use_the_first_key() {
        let old = Keyring::parse(&format!("k1:{}", key(1))).unwrap().unwrap();
        let mid = Mid::random();
        let stored = old.seal(mid, "before");
        let rotated = Keyring::parse(&format!("k2:{}, k1:{}", key(2), key(1)))
            .unwrap()
            .unwrap();
        assert_eq!(rotated.current(), "k2");
        assert_eq!(rotated.open(mid, &stored).unwrap(), "before");
        assert_eq!(
            Keyring::sealed_with(&rotated.seal(mid, "after")),
            Some("k2")
        );
        let dropped = Keyring::parse(&format!("k2:{}", key(2))).unwrap().unwrap();
        assert!(matches!(
            dropped.open(mid, &stored),
            Err(KeyringError::UnknownKey(id)) if id == "k1"
        ));
    }

    #[test]
    fn a_body_stored_in_the_clear_reads_as_it_is() {
        let ring = Keyring::parse(&format!("k1:{}", key(1))).unwrap().unwrap();
        assert_eq!(ring.open(Mid::random(), "plain").unwrap(), "plain");
    }

    #[test]
    fn bad_key_lists_are_refused_without_showing_a_key() {
        assert!(Keyring::parse("").unwrap().is_none());
        for bad in [
            "nokey".to_owned(),
            format!("k1:{}", STANDARD.encode([1u8; 16])),
            "k1:!!!".to_owned(),
            format!("k1:{0},k1:{0}", key(1)),
            format!("bad id:{}", key(1)),
        ] {
            let e = Keyring::parse(&bad).unwrap_err().to_string();
            assert!(!e.contains(&key(1)), "{e}");
        }
    }
}
