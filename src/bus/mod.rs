//! The bus that carries pushes between nodes. With no `CHAT_REDIS_URL` there is one node and the
//! in-process bus; cluster mode adds a Redis implementation of the same port.

pub mod local;

pub use local::LocalBus;
