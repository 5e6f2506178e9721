//! The nine error codes of PROTOCOL §3.2 and the rejection a client gets for its request.

use serde::Serialize;

/// What went wrong, in the protocol's closed set of codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or breaks a rule of its kind.
    BadRequest,
    /// The token is missing, bad or expired.
    Unauthorized,
    /// The caller may not do this.
    Forbidden,
    /// The conversation, message or business does not exist.
    NotFound,
    /// The change clashes with what is stored (a taken `mid`, a full group).
    Conflict,
    /// A body over the size limit.
    TooLarge,
    /// Over the per-user rate.
    RateLimited,
    /// A dependency (database, Redis) did not answer in time.
    Unavailable,
    /// A bug on our side; the cause is logged, not sent.
    Internal,
}

impl ErrorCode {
    /// The HTTP status of PROTOCOL §6 for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A request refused, with a message meant for the client's developer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{code:?}: {message}")]
pub struct Rejection {
    /// The protocol code.
    pub code: ErrorCode,
    /// A human-readable reason; never an internal cause.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
    /// `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    /// `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    /// `unavailable`: the database or the bus did not answer.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the service is temporarily unavailable",
        )
    }
    /// `internal`: the cause is in the log.
    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }
}
