//! Integration tests: one binary (one link on two cores). Each test makes its own database.

mod abuse;
mod binary;
mod browser;
mod cluster;
mod dashboard;
mod demo;
mod encryption;
mod faults;
mod helpers;
mod http;
mod partitions;
mod profiles;
mod protocol_doc;
mod store;
mod ws;
