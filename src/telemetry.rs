//! Logging: `tracing` to stderr, filtered by `RUST_LOG` (default `info`), as text (coloured
//! only when stderr is a terminal) or, with `CHAT_LOG_FORMAT=json`, one JSON object per line for
//! log shippers.
//!
//! Logs leave the process, so every line is redacted on its way out, whoever wrote it (our
//! code, sqlx's and Redis's error texts, a request path): a UUID keeps its first 8 hex digits
//! (`1f0c2d3e…`), a JWT or a bearer credential is replaced. Our own log lines mask ids at the
//! source too ([`chat_actors::ids::Masked`]); this is the net under them.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};
use std::sync::LazyLock;

use regex::Regex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The filter for `RUST_LOG`'s value (`info` when empty or unset). The WebSocket library logs
/// whole frames, message bodies included, at debug and trace: its lines stay at info and above
/// unless `RUST_LOG` names it (an operator chasing a protocol problem on a test node). The actor
/// library opens an info span for every actor's life and enters it on every poll: ~6 % of a
/// node's CPU per message (docs/PERFORMANCE.md) for a prefix naming an internal actor id, so it
/// stays at warn unless `RUST_LOG` names it.
fn filter_directives(rust_log: &str) -> String {
    let mut filter = if rust_log.trim().is_empty() {
        "info,sqlx::postgres::notice=warn,redis=error".to_owned()
    } else {
        rust_log.to_owned()
    };
    if !rust_log.contains("tungstenite") {
        filter.push_str(",tungstenite=info,tokio_tungstenite=info");
    }
    if !rust_log.contains("ractor") {
        filter.push_str(",ractor=warn");
    }
    filter
}

/// Installs the global subscriber once.
pub fn init() {
    // PostgreSQL's notices ("already exists, skipping" on every migrate) are not news; nor is
    // the Redis client's line per reconnect attempt while a shard fails over (the bus says
    // what it lost and when it carries again).
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = EnvFilter::try_new(filter_directives(&wanted))
        .unwrap_or_else(|_| EnvFilter::new(filter_directives("")));
    let format = std::env::var("CHAT_LOG_FORMAT").unwrap_or_default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(RedactingStderr);
    let _ = if format.eq_ignore_ascii_case("json") {
        builder.json().with_current_span(false).try_init()
    } else {
        let installed = builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
        if !format.is_empty() && !format.eq_ignore_ascii_case("text") {
            tracing::warn!(format = %format, "CHAT_LOG_FORMAT is text or json; logging text");
        }
        installed
    };
}

/// Hyphenated UUIDs (the first group kept) and 32-digit simple ones.
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b([0-9a-f]{8})[0-9a-f]{24}\b",
    )
    .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// A JWT (three base64url parts, the first a JSON header) or what follows `Bearer`.
static SECRET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|(?i)(bearer\s+)([^\s,;]+)")
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// Words that follow "bearer" in our own messages ("a bearer token is required"): prose, not a
/// credential, so they stay.
const BEARER_PROSE: [&str; 3] = ["token", "tokens", "credential"];

/// `line` with every UUID masked and every token replaced.
pub fn redact(line: &str) -> Cow<'_, str> {
    let tokens = SECRET.replace_all(line, |c: &regex::Captures<'_>| match (c.get(1), c.get(2)) {
        (Some(_), Some(word)) if BEARER_PROSE.contains(&word.as_str()) => c[0].to_owned(),
        (Some(bearer), _) => format!("{}[redacted]", bearer.as_str()),
        _ => "[token]".to_owned(),
    });
    if !UUID.is_match(&tokens) {
        return tokens;
    }
    let masked = UUID.replace_all(&tokens, |c: &regex::Captures<'_>| {
        let head = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
        format!("{head}…")
    });
    Cow::Owned(masked.into_owned())
}

/// Stderr, through [`redact`]. The formatter writes each event in one `write`, so each call
/// sees whole lines.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_masked_to_their_first_eight_hex_digits() {
        let line = "conv=1F0C2D3E-4b5a-6978-8695-a4b3c2d1e0f9 path=/v1/conversations/0b7e4c1a2f3d4e5f8a9b0c1d2e3f4a5b/read";
        assert_eq!(
            redact(line),
            "conv=1F0C2D3E… path=/v1/conversations/0b7e4c1a…/read"
        );
    }

    #[test]
    fn the_websocket_librarys_frame_dumps_stay_out_unless_asked_for() {
        assert_eq!(
            filter_directives(""),
            "info,sqlx::postgres::notice=warn,redis=error,tungstenite=info,tokio_tungstenite=info,ractor=warn"
        );
        assert_eq!(
            filter_directives("trace"),
            "trace,tungstenite=info,tokio_tungstenite=info,ractor=warn"
        );
        assert_eq!(
            filter_directives("tungstenite=trace"),
            "tungstenite=trace,ractor=warn"
        );
    }

    #[test]
    fn the_actor_librarys_per_actor_spans_stay_off_unless_asked_for() {
        use tracing_subscriber::layer::SubscriberExt;
        let actor_span_enabled = |rust_log: &str| {
            let filter = EnvFilter::try_new(filter_directives(rust_log)).expect("filter parses");
            let subscriber = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                // What ractor opens for every actor: `#[instrument(name = "Actor")]`, info.
                !tracing::info_span!(target: "ractor::actor", "Actor").is_disabled()
                    && tracing::enabled!(target: "chat_backend::app", tracing::Level::INFO)
            })
        };
        assert!(!actor_span_enabled(""));
        assert!(!actor_span_enabled("info"));
        assert!(actor_span_enabled("info,ractor=info"));
    }

    #[test]
    fn tokens_and_bearer_credentials_are_replaced() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";
        assert_eq!(redact(&format!("token {jwt} seen")), "token [token] seen");
        assert_eq!(
            redact("Authorization: Bearer s3cret-service-token, next"),
            "Authorization: Bearer [redacted], next"
        );
        assert_eq!(
            redact("a bearer token is required"),
            "a bearer token is required"
        );
    }

    #[test]
    fn a_line_with_nothing_to_hide_is_not_copied() {
        assert!(matches!(
            redact("serving addr=127.0.0.1:8080 node=a"),
            Cow::Borrowed(_)
        ));
    }
}
