//! The frames a person's app reads and writes, and what each request in flight was for.

use serde::{Deserialize, Serialize};

/// What a request in flight was for.
pub(super) enum Asked {
    List {
        first: bool,
        at: u64,
        /// A page a catch-up waits for (`CatchUp::lists`).
        counted: bool,
    },
    History {
        conv: usize,
        at: u64,
    },
    Send {
        conv: usize,
        scheduled: u64,
    },
    /// Answered `ok`: a `read` or a `watch`.
    Plain(&'static str),
}

impl Asked {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Asked::List { .. } => "conversations",
            Asked::History { .. } => "history",
            Asked::Send { .. } => "send",
            Asked::Plain(t) => t,
        }
    }
}

/// A server frame, the fields this client reads, borrowed from the frame's bytes.
#[derive(Deserialize)]
pub(super) struct In<'a> {
    pub(super) t: &'a str,
    #[serde(default)]
    pub(super) id: Option<u64>,
    #[serde(default)]
    pub(super) conv: Option<&'a str>,
    #[serde(default)]
    pub(super) seq: Option<u64>,
    #[serde(default)]
    pub(super) user: Option<&'a str>,
    #[serde(default)]
    pub(super) from: Option<&'a str>,
    #[serde(default)]
    pub(super) body: Option<&'a str>,
    #[serde(default)]
    pub(super) code: Option<&'a str>,
    #[serde(default)]
    pub(super) on: Option<bool>,
    #[serde(default)]
    pub(super) more: Option<bool>,
    #[serde(default, borrow)]
    pub(super) items: Vec<Item<'a>>,
    #[serde(default)]
    pub(super) messages: Vec<Seq>,
    #[serde(default, borrow)]
    pub(super) conversation: Option<Item<'a>>,
}

#[derive(Deserialize)]
pub(super) struct Item<'a> {
    pub(super) id: &'a str,
    #[serde(default)]
    pub(super) last_seq: u64,
    #[serde(default)]
    pub(super) last_activity: u64,
}

#[derive(Deserialize)]
pub(super) struct Seq {
    pub(super) seq: u64,
}

#[derive(Serialize)]
pub(super) struct SendOut<'a> {
    pub(super) t: &'static str,
    pub(super) id: u64,
    pub(super) conv: &'a str,
    pub(super) mid: &'a str,
    pub(super) body: &'a str,
}
