//! PROTOCOL.md as types: what clients send, what the server answers and pushes, and how a frame
//! becomes bytes. Shared by the actors, both transports, the tests and the benches.

pub mod encode;
pub mod error_code;
pub mod frames;
pub mod objects;

pub use encode::{Format, SharedFrame, decode_request, encode_frame};
pub use error_code::{ErrorCode, Rejection};
pub use frames::{CreateKind, Request, ServerFrame};
pub use objects::{
    ConversationKind, ConversationObject, MemberObject, MessageObject, PresenceItem,
    PresenceStatus, Profile, Role,
};
