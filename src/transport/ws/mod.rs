//! WebSocket: the upgrade (auth, subprotocol, origin, per-user cap) and the session that serves
//! one connection.

pub mod session;
pub mod upgrade;
