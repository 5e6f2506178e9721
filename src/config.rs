//! One typed configuration: `cluster.toml`, then `CHAT_*` variables, then flags; each later wins.
//!
//! [`settings!`] writes the list once and derives from it the `Config` struct (its `Default` is
//! the documented defaults), the clap flags with their `CHAT_*` variables, and the merge. A string
//! setting left empty means "unset", as PROTOCOL §1 reads `CHAT_REDIS_URL=""`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::sqlite::Durability;

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config`/`CHAT_CONFIG` could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`].
    #[error("invalid configuration in {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid setting {0}")]
    Invalid(String),
}

macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, $env:literal; )*) => {
        /// Every setting of a node. Field names are the `cluster.toml` keys.
        #[derive(Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $field: $default, )* }
            }
        }

        /// The same settings as flags, each also read from its `CHAT_*` variable.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct SettingsArgs {
            // `hide_env_values`: `--help` would print each variable's value, secrets included.
            $( #[arg(long, env = $env, hide_env_values = true, help = with_default(concat!($($doc,)*), stringify!($field)))] pub $field: Option<$ty>, )*
        }

        /// The settings as flags of `serve` (`chat-backend serve --listen …`); the variables
        /// are read once, by [`SettingsArgs`], so a flag before `serve` still beats them.
        #[derive(clap::Args, Debug, Default, Clone)]
        pub struct ServeFlags {
            $( #[arg(long, help = with_default(concat!($($doc,)* " [variable: ", $env, "]"), stringify!($field)))] pub $field: Option<$ty>, )*
        }

        impl SettingsArgs {
            /// Overrides `config` with every setting given as a flag or variable. An empty value
            /// is no setting: `CHAT_JWT_SECRET=` leaves the file's secret in place rather than
            /// putting the development one in its stead.
            pub fn apply(self, config: &mut Config) {
                $( if let Some(v) = self.$field.filter(Given::given) { config.$field = v; } )*
            }

            /// These settings, with `serve`'s own flags winning where both give one.
            pub fn with(self, serve: ServeFlags) -> SettingsArgs {
                SettingsArgs { $( $field: serve.$field.or(self.$field), )* }
            }
        }

        impl fmt::Debug for Config {
            /// Secrets (any key naming a secret or token, a URL's password) never reach a log.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct("Config");
                $(
                    let name = stringify!($field);
                    if name.contains("secret") || name.contains("token") || name.contains("keys") {
                        d.field(name, &"<redacted>");
                    } else if name.ends_with("_url") || name.ends_with("_urls") {
                        d.field(name, &redact_urls(&self.$field.to_string()));
                    } else {
                        d.field(name, &self.$field);
                    }
                )*
                d.finish()
            }
        }
    };
}

/// Whether a value from a flag or variable says anything (an empty string does not).
trait Given {
    fn given(&self) -> bool;
}

impl Given for String {
    fn given(&self) -> bool {
        !self.is_empty()
    }
}

macro_rules! always_given {
    ($($ty:ty),*) => { $( impl Given for $ty { fn given(&self) -> bool { true } } )* };
}
always_given!(bool, u32, u64, usize);

settings! {
    /// `host:port` for HTTP and WebSocket.
    listen: String = "127.0.0.1:8080".to_owned(), "CHAT_LISTEN";
    /// This node's unique name in a cluster; empty: generated at start.
    node_id: String = String::new(), "CHAT_NODE_ID";
    /// `sqlite://PATH` (embedded) or `postgres://...` (several hosts: a primary and its standbys).
    database_url: String = "sqlite://data/chat.db".to_owned(), "CHAT_DATABASE_URL";
    /// PostgreSQL standbys that serve reads (history, conversation lists, unread counts), as
    /// URLs separated by commas or spaces, one host each; empty: every read on the primary.
    database_replica_urls: String = String::new(), "CHAT_DATABASE_REPLICA_URLS";
    /// A standby whose replay lags the primary by more than this many ms is skipped.
    database_replica_max_lag_ms: u64 = 1000, "CHAT_DATABASE_REPLICA_MAX_LAG_MS";
    /// Empty: one node with an in-process bus; `redis://...` (one server) or
    /// `redis+cluster://host:port,...` (a Redis Cluster's seed nodes): cluster mode.
    redis_url: String = String::new(), "CHAT_REDIS_URL";
    /// Prefix of every Redis key and channel.
    redis_prefix: String = "chat".to_owned(), "CHAT_REDIS_PREFIX";
    /// HS256 secret for client tokens; empty: a development secret, with a warning.
    jwt_secret: String = String::new(), "CHAT_JWT_SECRET";
    /// Path of a PEM public key (RSA: RS256, EC P-256: ES256); when set, HS256 is refused.
    jwt_public_key: String = String::new(), "CHAT_JWT_PUBLIC_KEY";
    /// Required `iss` claim; empty: not checked.
    jwt_issuer: String = String::new(), "CHAT_JWT_ISSUER";
    /// Required `aud` claim; empty: not checked.
    jwt_audience: String = String::new(), "CHAT_JWT_AUDIENCE";
    /// Base URL of the user service; empty: placeholder profiles.
    profiles_url: String = String::new(), "CHAT_PROFILES_URL";
    /// Bearer token sent to the user service.
    profiles_token: String = String::new(), "CHAT_PROFILES_TOKEN";
    /// Bearer token the user service sends to /v1/internal/events; empty: refuse all.
    service_token: String = String::new(), "CHAT_SERVICE_TOKEN";
    /// Members of a group, creator included.
    max_group_size: usize = 8, "CHAT_MAX_GROUP_SIZE";
    /// UTF-8 bytes of a message body.
    max_message_bytes: usize = 4096, "CHAT_MAX_MESSAGE_BYTES";
    /// Per-user `send`s per second.
    rate_messages: u32 = 20, "CHAT_RATE_MESSAGES";
    /// Per-user burst of `send`s.
    rate_burst: u32 = 40, "CHAT_RATE_BURST";
    /// Per-user rate of every other request (and `typing`), per second.
    rate_requests: u32 = 50, "CHAT_RATE_REQUESTS";
    /// Per-user burst of other requests.
    rate_requests_burst: u32 = 200, "CHAT_RATE_REQUESTS_BURST";
    /// Requests of one user in flight at once on this node, over all its connections.
    max_in_flight_per_user: usize = 64, "CHAT_MAX_IN_FLIGHT_PER_USER";
    /// Days a message is kept.
    retention_days: u32 = 90, "CHAT_RETENTION_DAYS";
    /// Days a deleted message's body is kept for audit.
    deleted_audit_days: u32 = 7, "CHAT_DELETED_AUDIT_DAYS";
    /// Comma-separated origins allowed to open a WebSocket; empty: any.
    allowed_origins: String = String::new(), "CHAT_ALLOWED_ORIGINS";
    /// Open connections per user on this node; one more is refused with 429.
    max_connections_per_user: usize = 16, "CHAT_MAX_CONNECTIONS_PER_USER";
    /// Open WebSocket connections on this node; one more is refused with 503.
    max_connections: usize = 50_000, "CHAT_MAX_CONNECTIONS";
    /// WebSocket ping interval; a connection silent for twice this is closed.
    heartbeat_ms: u64 = 30_000, "CHAT_HEARTBEAT_MS";
    /// A conversation's actor stops after this long unused (its record rests in memory for
    /// `conversation_rest_ms`, and after that reloads in one statement when next needed).
    conversation_idle_ms: u64 = 10_000, "CHAT_CONVERSATION_IDLE_MS";
    /// How long a conversation's record stays in memory after its actor stopped, so that its
    /// next use starts the actor without loading it (a few hundred bytes against ~5 KiB for
    /// the actor). 0: never kept.
    conversation_rest_ms: u64 = 600_000, "CHAT_CONVERSATION_REST_MS";
    /// How late (ms, smoothed) this node's runtime may run what is ready before it refuses a share
    /// of new requests `unavailable` (all of them at five times this): a node given more than
    /// its cores serve does what it can in time instead of queueing everything to its deadline.
    /// 0: never refuse.
    overload_lag_ms: u64 = 100, "CHAT_OVERLOAD_LAG_MS";
    /// The largest WebSocket frame accepted; a larger one closes the connection with 1009.
    max_frame_bytes: usize = 65_536, "CHAT_MAX_FRAME_BYTES";
    /// Pushes queued per connection before a client that stopped reading is dropped.
    outbound_queue: usize = 1024, "CHAT_OUTBOUND_QUEUE";
    /// When a SQLite commit is acknowledged: `full` (on disk: survives a power loss) or
    /// `normal` (faster; survives a killed process, but a power loss or an OS crash may roll
    /// back the last acknowledged messages). PostgreSQL is not affected.
    sqlite_synchronous: String = "full".to_owned(), "CHAT_SQLITE_SYNCHRONOUS";
    /// PostgreSQL connections per node, the writer's two commit connections included.
    db_max_connections: u32 = 16, "CHAT_DB_MAX_CONNECTIONS";
    /// Least ms between the starts of two commits: messages gather meanwhile and commit
    /// together. 0: commit each batch as soon as it comes.
    commit_window_ms: u64 = 4, "CHAT_COMMIT_WINDOW_MS";
    /// Keys that encrypt message bodies at rest, `ID:BASE64,...` (32-byte AES-256-GCM keys;
    /// the first encrypts, all decrypt); empty: bodies stored in the clear.
    encryption_keys: String = String::new(), "CHAT_ENCRYPTION_KEYS";
    /// Serve the browser demo at `/` (and development tokens for it while the development
    /// secret is in use).
    demo: bool = true, "CHAT_DEMO";
}

/// A setting's help line with its default (from [`Config::default`], so it cannot drift).
fn with_default(doc: &str, field: &str) -> String {
    let default = toml::Value::try_from(Config::default())
        .ok()
        .and_then(|table| table.get(field).cloned());
    match default {
        Some(toml::Value::String(s)) if s.is_empty() => format!("{} [default: none]", doc.trim()),
        Some(toml::Value::String(s)) => format!("{} [default: {s}]", doc.trim()),
        Some(value) => format!("{} [default: {value}]", doc.trim()),
        None => doc.trim().to_owned(),
    }
}

/// [`redact_url`] on each URL of a list (separated by commas or white space; a multi-host URL's
/// later hosts come out as they were).
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive([',', ' ', '\n', '\t']) {
        let url = piece.trim_end_matches([',', ' ', '\n', '\t']);
        out.push_str(&redact_url(url));
        out.push_str(&piece[url.len()..]);
    }
    out
}

/// `url` with its password (if any) replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL the parser takes (a bare path, a typo): only a password-shaped part of what
        // would be its authority (`user:password@`) is masked, so the reader sees what was given.
        Err(_) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            match authority.rfind('@').map(|at| (&rest[..at], &rest[at..])) {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    let sep = if scheme.is_empty() { "" } else { "://" };
                    format!("{scheme}{sep}{user}:redacted{host}")
                }
                _ => url.to_owned(),
            }
        }
    }
}

impl Config {
    /// The file (explicit path, else `./cluster.toml` when present), then variables and flags.
    pub fn load(file: Option<&Path>, args: SettingsArgs) -> Result<Config, ConfigError> {
        let default_file = Path::new("cluster.toml");
        let file = match file {
            Some(path) => Some(path),
            None if default_file.exists() => Some(default_file),
            None => None,
        };
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        args.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Reads one TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_group_size", self.max_group_size as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("rate_messages", u64::from(self.rate_messages)),
            ("rate_burst", u64::from(self.rate_burst)),
            ("rate_requests", u64::from(self.rate_requests)),
            ("rate_requests_burst", u64::from(self.rate_requests_burst)),
            ("max_in_flight_per_user", self.max_in_flight_per_user as u64),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_user",
                self.max_connections_per_user as u64,
            ),
            ("heartbeat_ms", self.heartbeat_ms),
            ("conversation_idle_ms", self.conversation_idle_ms),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("outbound_queue", self.outbound_queue as u64),
            ("db_max_connections", u64::from(self.db_max_connections)),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!("{name} must be above 0")));
        }
        self.replica_urls()?;
        if Durability::parse(&self.sqlite_synchronous).is_none() {
            return Err(ConfigError::Invalid(format!(
                "sqlite_synchronous must be full or normal, not {:?}",
                self.sqlite_synchronous
            )));
        }
        Ok(())
    }

    /// How durable a SQLite commit is before it is acknowledged (`full` unless set otherwise;
    /// [`Config::load`] refused anything else).
    pub fn sqlite_durability(&self) -> Durability {
        Durability::parse(&self.sqlite_synchronous).unwrap_or_default()
    }

    /// The standbys' URLs: `database_replica_urls` split at commas and spaces, each a
    /// `postgres://` URL of one host.
    pub fn replica_urls(&self) -> Result<Vec<String>, ConfigError> {
        let urls: Vec<String> = self
            .database_replica_urls
            .split([',', ' ', '\n', '\t'])
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        match urls
            .iter()
            .find(|u| !u.starts_with("postgres://") && !u.starts_with("postgresql://"))
        {
            Some(bad) => Err(ConfigError::Invalid(format!(
                "database_replica_urls: {:?} is not a postgres:// URL (list one URL per standby, \
                 separated by commas or spaces)",
                redact_url(bad)
            ))),
            None => Ok(urls),
        }
    }

    /// The allowed WebSocket origins; empty allows any.
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cluster_toml_documents_exactly_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster.toml");
        assert_eq!(Config::from_file(&path).unwrap(), Config::default());
    }

    #[test]
    fn flags_and_variables_win_over_the_file() {
        let mut config: Config = toml::from_str("listen = \"0.0.0.0:1\"\nrate_burst = 3").unwrap();
        SettingsArgs {
            listen: Some("127.0.0.1:2".to_owned()),
            ..Default::default()
        }
        .apply(&mut config);
        assert_eq!(config.listen, "127.0.0.1:2");
        assert_eq!(config.rate_burst, 3);
    }

    #[test]
    fn an_empty_variable_leaves_the_files_value_in_place() {
        let mut config: Config =
            toml::from_str("jwt_secret = \"from-the-file-0123456789abcdef0123456789\"").unwrap();
        SettingsArgs {
            jwt_secret: Some(String::new()),
            redis_url: Some(String::new()),
            ..Default::default()
        }
        .apply(&mut config);
        assert_eq!(
            config.jwt_secret,
            "from-the-file-0123456789abcdef0123456789"
        );
        assert_eq!(config.redis_url, "");
    }

    #[test]
    fn replica_urls_are_a_list_of_postgres_urls() {
        let config = Config {
            database_replica_urls: "postgres://u@r1:5432/chat, postgres://u@r2/chat\n".to_owned(),
            ..Config::default()
        };
        assert_eq!(
            config.replica_urls().unwrap(),
            ["postgres://u@r1:5432/chat", "postgres://u@r2/chat"]
        );
        assert!(Config::default().replica_urls().unwrap().is_empty());
        // A libpq multi-host URL is not a list of standbys: its second host has no scheme.
        let multi = Config {
            database_replica_urls: "postgres://u@r1:5432,r2:5432/chat".to_owned(),
            ..Config::default()
        };
        assert!(multi.validate().is_err());
    }

    #[test]
    fn a_sqlite_synchronous_other_than_full_or_normal_is_refused() {
        let config = Config {
            sqlite_synchronous: "off".to_owned(),
            ..Config::default()
        };
        assert!(config.validate().is_err());
        let normal = Config {
            sqlite_synchronous: "normal".to_owned(),
            ..Config::default()
        };
        assert!(normal.validate().is_ok());
        assert_eq!(Config::default().sqlite_durability(), Durability::Full);
    }

    #[test]
    fn unknown_keys_and_secrets_in_logs_are_refused() {
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let config = Config {
            jwt_secret: "hunter2".to_owned(),
            database_url: "postgres://chat:pa55word@db:5432/chat".to_owned(),
            redis_url: "redis://:r3dis@cache:6379".to_owned(),
            database_replica_urls: "postgres://chat:s3cond@r1/chat, postgres://chat:th1rd@r2/chat"
                .to_owned(),
            ..Config::default()
        };
        let shown = format!("{config:?}");
        for secret in ["hunter2", "pa55word", "r3dis", "s3cond", "th1rd"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://chat:redacted@db:5432/chat"));
        assert_eq!(redact_url("sqlite://data/chat.db"), "sqlite://data/chat.db");
        // What the parser refuses is shown as given, but for a password.
        assert_eq!(redact_url("data/chat.db"), "data/chat.db");
        assert_eq!(
            redact_url("postgres://chat:pa55word@db host/chat"),
            "postgres://chat:redacted@db host/chat"
        );
    }
}
