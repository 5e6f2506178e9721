//! The command line: `serve` (the default), `token`, `migrate`, each flag with its `CHAT_*` variable.

use std::path::PathBuf;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser, Subcommand};

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
    #[arg(long, env = "CHAT_CONFIG", global = true, hide_env_values = true)]
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

/// A plainer word for two command-line mistakes clap words poorly: a node setting given after a
/// subcommand that takes none (`token --jwt-secret …`: where it goes instead), and a bad value
/// that came from a `CHAT_*` variable rather than a flag (which variable).
pub fn explain(e: &clap::Error) -> Option<String> {
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = arg
        .split([' ', '='])
        .next()
        .and_then(|a| a.strip_prefix("--"))?;
    let command = Cli::command();
    let setting = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))?;
    let variable = setting.get_env()?.to_string_lossy().into_owned();
    match e.kind() {
        ErrorKind::UnknownArgument => Some(format!(
            "--{long} is a node setting: give it before the subcommand \
             (chat-backend --{long} VALUE <subcommand> ...), or set {variable}"
        )),
        // Only when the refused value is the variable's: a flag's own mistake is clap's to say.
        ErrorKind::InvalidValue
            if matches!(e.get(ContextKind::InvalidValue), Some(ContextValue::String(v))
                if std::env::var(&variable).is_ok_and(|given| given == *v)) =>
        {
            let given = std::env::var(&variable).unwrap_or_default();
            let accepted = match e.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(values)) => {
                    format!(" (accepted: {})", values.join(", "))
                }
                _ => String::new(),
            };
            Some(format!(
                "{variable}={given:?} is not a valid value{accepted}"
            ))
        }
        _ => None,
    }
}
