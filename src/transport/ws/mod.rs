//! WebSocket: the upgrade (auth, subprotocol, origin, connection caps), the slot a connection
//! holds, the session that serves one connection, and what its requests ask of the node.

mod requests;
pub mod session;
pub mod slot;
pub mod upgrade;
