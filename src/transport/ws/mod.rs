//! WebSocket: the upgrade (auth, subprotocol, origin, connection caps), the slot a connection
//! holds, and the session that serves one connection.

pub mod session;
pub mod slot;
pub mod upgrade;
