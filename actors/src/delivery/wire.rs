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
