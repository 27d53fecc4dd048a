//! Error codes (PROTOCOL.md §3).

use std::fmt;

/// A stable, snake_case error identifier sent to clients as `data.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    InvalidJson,
    /// A binary frame, or a frame that is neither request, response nor ack.
    InvalidFrame,
    /// A mandatory field is absent.
    MissingField,
    /// A field has the wrong type or value.
    SyntaxError,
    /// No such class/subclass/cmd.
    UnknownCommand,
    /// A command other than login before login.
    NotAuthenticated,
    /// Login on a logged-in connection.
    AlreadyAuthenticated,
    /// Login refused.
    InvalidCredentials,
    /// Too many login attempts from one address.
    TooManyAttempts,
    /// The requested session id is in use.
    DuplicatedSessionId,
    /// The policy forbids this.
    Unauthorized,
    /// `user get` for a user with no session.
    UserNotFound,
    /// The target session does not exist.
    SessionNotFound,
    /// The target session ended before it answered.
    SessionStopped,
    /// The target session did not answer in time.
    Timeout,
    /// A configured limit was hit.
    LimitExceeded,
    /// An internal service is unreachable; safe to retry.
    Unavailable,
    /// A bug; logged on the server.
    InternalError,
}

impl ErrorCode {
    /// Returns the wire identifier of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidFrame => "invalid_frame",
            Self::MissingField => "missing_field",
            Self::SyntaxError => "syntax_error",
            Self::UnknownCommand => "unknown_command",
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::InvalidCredentials => "invalid_credentials",
            Self::TooManyAttempts => "too_many_attempts",
            Self::DuplicatedSessionId => "duplicated_session_id",
            Self::Unauthorized => "unauthorized",
            Self::UserNotFound => "user_not_found",
            Self::SessionNotFound => "session_not_found",
            Self::SessionStopped => "session_stopped",
            Self::Timeout => "timeout",
            Self::LimitExceeded => "limit_exceeded",
            Self::Unavailable => "unavailable",
            Self::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: a code and a human-readable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The stable identifier.
    pub code: ErrorCode,
    /// Text for humans.
    pub message: String,
}

impl ApiError {
    /// Creates an error with a code and a text.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Creates a `missing_field` error naming the field.
    pub fn missing_field(field: &str) -> Self {
        Self::new(ErrorCode::MissingField, format!("missing field: {field}"))
    }

    /// Creates a `syntax_error` naming the field and what it must be.
    pub fn syntax(field: &str, expected: &str) -> Self {
        Self::new(
            ErrorCode::SyntaxError,
            format!("field {field} must be {expected}"),
        )
    }

    /// Creates an `unauthorized` error.
    pub fn unauthorized() -> Self {
        Self::new(ErrorCode::Unauthorized, "not allowed by the policy")
    }

    /// Creates an `unavailable` error.
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{what} is unavailable, retry later"),
        )
    }

    /// Returns the `data` object of an error response: `{"code": .., "error": ..}`.
    pub fn to_data(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "error": self.message})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
