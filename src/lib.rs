//! chat-backend: the adapters (storage, bus, user service, transports) around the `chat_actors`
//! core, and the one composition root that wires them.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod profiles;
pub mod redis_conn;
pub mod retention;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod transport;
