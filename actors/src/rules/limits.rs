//! Size, kind and paging limits of a request, checked before anything is ordered or stored.

use crate::protocol::Rejection;
use crate::protocol::error_code::ErrorCode;

/// The configured limits that rules need.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Members of a group, creator included.
    pub max_group_size: usize,
    /// UTF-8 bytes of a message body.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_group_size: 8,
            max_message_bytes: 4096,
        }
    }
}

/// The default page size of `history` and `conversations`.
pub const DEFAULT_PAGE: usize = 50;
/// The largest page served; a larger `limit` is served as this.
pub const MAX_PAGE: usize = 200;
/// At most this many users in one `presence` request.
pub const MAX_PRESENCE_USERS: usize = 100;
/// At most this many users in one `watch` list.
pub const MAX_WATCH_USERS: usize = 200;
/// The longest group name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The kind of the messages the server writes when membership changes; no client sends or
/// deletes one.
pub const SYSTEM_KIND: &str = "system";

/// The kind a message gets: `text` when absent; else 1 to 20 of `a-z 0-9 _ . -`, never `system`.
pub fn message_kind(kind: Option<&str>) -> Result<String, Rejection> {
    let Some(kind) = kind else {
        return Ok("text".to_owned());
    };
    let valid_chars = kind
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if kind.is_empty() || kind.len() > 20 || !valid_chars {
        return Err(Rejection::bad_request(
            "kind must be 1 to 20 characters of a-z 0-9 _ . -",
        ));
    }
    if kind == SYSTEM_KIND {
        return Err(Rejection::bad_request(
            "kind system is reserved for the server",
        ));
    }
    Ok(kind.to_owned())
}

/// A body within the size limit.
pub fn message_body(body: &str, limits: &Limits) -> Result<(), Rejection> {
    if body.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            ErrorCode::TooLarge,
            format!("body is over {} bytes", limits.max_message_bytes),
        ));
    }
    Ok(())
}

/// A page size: default when absent, capped at [`MAX_PAGE`], below 1 refused.
pub fn page_limit(limit: Option<i64>) -> Result<usize, Rejection> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if n < 1 => Err(Rejection::bad_request("limit must be at least 1")),
        Some(n) => Ok((n as u64).min(MAX_PAGE as u64) as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_text_by_default_and_system_is_reserved() {
        assert_eq!(message_kind(None).unwrap(), "text");
        assert_eq!(message_kind(Some("image.v2")).unwrap(), "image.v2");
        assert!(message_kind(Some("Bad Kind!")).is_err());
        assert!(message_kind(Some("")).is_err());
        assert!(message_kind(Some(&"a".repeat(21))).is_err());
        assert!(message_kind(Some("system")).is_err());
    }

    #[test]
    fn a_body_of_exactly_the_limit_passes_and_one_byte_more_is_too_large() {
        let limits = Limits::default();
        assert!(message_body(&"é".repeat(2048), &limits).is_ok());
        let err = message_body(&"x".repeat(4097), &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn page_limits_default_cap_and_refuse_zero() {
        assert_eq!(page_limit(None).unwrap(), 50);
        assert_eq!(page_limit(Some(1000)).unwrap(), 200);
        assert!(page_limit(Some(0)).is_err());
    }
}
