//! The rules of PROTOCOL §4 as pure functions: no actors, no I/O, each tested on its own.

pub mod assignment;
pub mod create;
pub mod limits;
pub mod membership;

pub use limits::Limits;
