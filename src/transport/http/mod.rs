//! Plain HTTP handlers, one module per resource.

pub mod api;
pub mod conversations;
pub mod demo;
pub mod internal;
pub mod messages;
pub mod openapi;
pub mod probes;
pub mod response;
