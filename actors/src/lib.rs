//! The chat core: PROTOCOL.md as types, the rules, and the actors that order, persist and fan out.
//!
//! This crate names no driver: storage, the bus and the user service are reached through the
//! traits in [`ports`], which `src/` implements. Transports call [`node::Node`]'s typed methods and
//! never build actor messages themselves.
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod clock;
pub mod conversation;
pub mod delivery;
pub mod directory;
pub mod ids;
pub mod node;
pub mod ownership;
pub mod ports;
pub mod protocol;
pub mod rules;
pub mod user;
