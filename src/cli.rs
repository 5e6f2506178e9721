//! The command line: `serve` (the default), `token`, `migrate`, each flag with its `CHAT_*` variable.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ServeFlags, SettingsArgs};

/// chat-backend: a chat service of one node or many (sharded over Redis and PostgreSQL).
///
/// Every setting is also read from cluster.toml and from its CHAT_* variable (`serve --help`
/// lists them); settings given before a subcommand apply to it (`chat-backend --database-url …
/// migrate`).
#[derive(Debug, Parser)]
#[command(name = "chat-backend", version, about)]
pub struct Cli {
    /// The configuration file (default: ./cluster.toml when present).
    #[arg(long, env = "CHAT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Settings, each also read from its CHAT_* variable.
    #[command(
        flatten,
        next_help_heading = "Settings (each also from its CHAT_* variable)"
    )]
    pub settings: SettingsArgs,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve {
        /// The settings, as flags of `serve`.
        #[command(
            flatten,
            next_help_heading = "Settings (each also from its CHAT_* variable)"
        )]
        flags: Box<ServeFlags>,
    },
    /// Print a client token signed with the configured secret (CHAT_JWT_SECRET, with
    /// CHAT_JWT_ISSUER and CHAT_JWT_AUDIENCE when set, or the same keys of cluster.toml).
    Token {
        /// The user's UUID (the `sub` claim).
        #[arg(long)]
        user: String,
        /// How long it is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: humantime::Duration,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Re-encrypt every stored message body with the first key of CHAT_ENCRYPTION_KEYS (after
    /// adding a key in front, or switching encryption on); safe while nodes serve.
    Rekey,
    /// Serve a stand-in user service (profiles, business agents) from a JSON file, for local
    /// use and demos; point CHAT_PROFILES_URL at it. It requires CHAT_PROFILES_TOKEN when set.
    DevUserService {
        /// The JSON file of users and businesses (see docs/dev-users.json).
        #[arg(long)]
        file: PathBuf,
        /// Where to listen.
        #[arg(long = "at", default_value = "127.0.0.1:8090")]
        at: String,
    },
}
