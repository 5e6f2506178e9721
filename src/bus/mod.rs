//! The bus that carries messages between nodes. With no `CHAT_REDIS_URL` there is one node and
//! the in-process bus; with it, the Redis bus and the heartbeat that makes the live set.

pub mod local;
pub mod redis;

pub use local::LocalBus;
