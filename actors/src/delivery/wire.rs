//! What nodes say to each other over the bus: pushes for users connected there, where users are
//! connected, and requests to a conversation's owner with their answers.
//!
//! One MessagePack map per bus message. The request and answer types are parameters so that this
//! module names no conversation type: the node fills them in; a sender of the other variants
//! uses [`Plain`], which encodes them byte for byte the same.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, SessionId, UserId};

/// One message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Wire<Q, R> {
    /// Pushes for users connected on the receiving node: one frame, encoded once (MessagePack),
    /// for every target there.
    Push {
        /// Who gets it.
        targets: Vec<Target>,
        /// The frame as MessagePack.
        frame: Bytes,
    },
    /// `user` now has a connection on `node` (`online`), or no longer any.
    Presence {
        /// The node.
        node: String,
        /// The user.
        user: UserId,
        /// Connected there or not.
        online: bool,
    },
    /// `node` has just joined: the others count it live at once, not at their next heartbeat,
    /// so that every node names the same owners as soon as it serves; a node they knew under
    /// another incarnation restarted, and hears their rosters.
    Hello {
        /// The node.
        node: String,
        /// The number its process drew at start (0 from a node that predates incarnations).
        #[serde(default)]
        incarnation: u64,
    },
    /// Every user connected on `node` (replacing what the receiver knew of that node), for a
    /// node that just joined or after the bus lost messages.
    Roster {
        /// The node.
        node: String,
        /// Its users.
        users: Vec<UserId>,
        /// The receiver is asked to send its own roster back: the sender saw it come back into
        /// the live set, which the receiver, never out of it as it saw things, cannot know.
        /// (Absent from older nodes' rosters: false.)
        #[serde(default)]
        answer: bool,
    },
    /// The user service said `id`'s profile changed: every node drops what it cached.
    ProfileChanged {
        /// The user or business.
        id: UserId,
    },
    /// A request for a conversation the receiving node owns; `corr` 0 wants no answer.
    Request {
        /// The asking node, where the answer goes.
        from: String,
        /// The asker's number for the answer.
        corr: u64,
        /// The conversation.
        conv: ConversationId,
        /// The request.
        request: Q,
    },
    /// The owner's answer to request `corr`.
    Reply {
        /// The asker's number.
        corr: u64,
        /// The answer.
        answer: R,
    },
}

/// A wire message without requests or answers.
pub type Plain = Wire<(), ()>;

/// One recipient of a push on the receiving node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The user.
    pub user: UserId,
    /// Not this connection (the sender's own, which got the reply instead).
    pub except: Option<SessionId>,
}

/// The newest bus format this build reads. Version 1 is a bare MessagePack map (an externally
/// tagged [`Wire`]), what every build has written since cluster mode began, and what this one
/// writes still: a node of the build before reads it, so a rolling upgrade keeps the nodes
/// talking. A later version goes out behind one byte that names it (a positive fixint, which no
/// version 1 message starts with); a node that does not know it refuses the message, never
/// misreads it.
pub const NEWEST_FORMAT: u8 = 1;

/// Why a bus message was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// Written in a format newer than this build reads.
    #[error("bus format version {0}, newer than this node reads ({NEWEST_FORMAT}): upgrade it")]
    Version(u8),
    /// Not a bus message of any version.
    #[error("not a bus message")]
    Malformed,
}

/// The MessagePack body of a bus message in a format this build reads.
pub fn body(message: &[u8]) -> Result<&[u8], Unreadable> {
    match message.first() {
        // A bare map: version 1.
        Some(0x80..=0x8f | 0xde | 0xdf) => Ok(message),
        Some(&version @ 0x00..=0x7f) => match version {
            1 => Ok(&message[1..]),
            _ => Err(Unreadable::Version(version)),
        },
        _ => Err(Unreadable::Malformed),
    }
}

/// Encodes a wire message; our own types always encode, short of a bug (logged, then empty).
pub fn encode<Q: Serialize, R: Serialize>(wire: &Wire<Q, R>) -> Bytes {
    match rmp_serde::to_vec_named(wire) {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            tracing::error!(error = %e, "a bus message failed to encode");
            Bytes::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_read_bare_or_named_and_a_newer_version_is_refused() {
        let hello: Plain = Wire::Hello {
            node: "node-1".to_owned(),
            incarnation: 7,
        };
        let bare = encode(&hello);
        assert_eq!(body(&bare), Ok(&bare[..]));
        let mut named = vec![1u8];
        named.extend_from_slice(&bare);
        assert_eq!(body(&named), Ok(&bare[..]));
        let mut newer = vec![2u8];
        newer.extend_from_slice(&bare);
        assert_eq!(body(&newer), Err(Unreadable::Version(2)));
        assert_eq!(body(&[]), Err(Unreadable::Malformed));
        assert_eq!(body(&[0xc0]), Err(Unreadable::Malformed));
    }

    #[test]
    fn a_plain_push_decodes_as_any_wire() {
        let target = Target {
            user: UserId::random(),
            except: Some(SessionId::random()),
        };
        let sent: Plain = Wire::Push {
            targets: vec![target],
            frame: Bytes::from_static(b"\x81\xa1t\xa2ok"),
        };
        let bytes = encode(&sent);
        let got: Wire<String, u64> = rmp_serde::from_slice(&bytes).unwrap();
        match got {
            Wire::Push { targets, frame } => {
                assert_eq!(targets, vec![target]);
                assert_eq!(&frame[..], b"\x81\xa1t\xa2ok");
            }
            other => panic!("decoded as {other:?}"),
        }
    }
}
