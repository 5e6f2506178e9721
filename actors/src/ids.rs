//! Identifiers, parsed once at the edge and `Copy` everywhere inside.
//!
//! On the wire every id is the hyphenated lower-case UUID string (PROTOCOL §3), in MessagePack as
//! in JSON, so the serde impls here write and read strings whatever the format.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the textual form; any UUID spelling is accepted, the hyphenated one is written.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::parse_str(s).ok().map(Self)
            }
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
            /// The inner UUID.
            pub fn uuid(self) -> Uuid {
                self.0
            }
            /// The form for logs: the first 8 hex digits, never the whole id.
            pub fn masked(self) -> Masked {
                Masked(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = Uuid::encode_buffer();
                s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(UuidVisitor).map(Self)
            }
        }
    };
}

/// An id as logs show it: its first 8 hex digits and an ellipsis (`1f0c2d3e…`), enough to
/// follow one user or conversation through a log without the log holding the id itself.
#[derive(Clone, Copy)]
pub struct Masked(Uuid);

impl fmt::Display for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Uuid::encode_buffer();
        let simple = self.0.simple().encode_lower(&mut buf);
        write!(f, "{}…", &simple[..8])
    }
}

impl fmt::Debug for Masked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct UuidVisitor;

impl serde::de::Visitor<'_> for UuidVisitor {
    type Value = Uuid;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a UUID string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Uuid, E> {
        Uuid::parse_str(v).map_err(|_| E::custom("invalid UUID"))
    }
}

uuid_id!(
    /// A user, a business or an agent: all are UUIDs owned by the user service.
    UserId
);
uuid_id!(
    /// A conversation.
    ConversationId
);
uuid_id!(
    /// A message's client-chosen (or server-made) idempotency key, unique across conversations.
    Mid
);
uuid_id!(
    /// One WebSocket connection.
    SessionId
);

/// A conversation's message number: 1, 2, 3, ... with no gaps.
pub type Seq = i64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_travel_as_hyphenated_strings_in_msgpack_and_json() {
        let u = UserId::random();
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(json, format!("\"{}\"", u.0.hyphenated()));
        let packed = rmp_serde::to_vec(&u).unwrap();
        let back: UserId = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back, u);
        assert!(serde_json::from_str::<UserId>("\"nope\"").is_err());
    }

    #[test]
    fn a_masked_id_shows_its_first_eight_hex_digits_only() {
        let c = ConversationId::parse("1f0c2d3e-4b5a-6978-8695-a4b3c2d1e0f9").unwrap();
        assert_eq!(c.masked().to_string(), "1f0c2d3e…");
        assert_eq!(format!("{:?}", c.masked()), "1f0c2d3e…");
    }
}
