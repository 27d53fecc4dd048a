//! What a command answers ([`CommandResult`]: data, or a [`Failure`]) and its encoding as a
//! response frame, counted on the metrics when it is an error.

use serde_json::Value;
use switchboard_protocol::frame;
use switchboard_protocol::{ApiError, ErrorCode};

use crate::metrics::METRICS;

/// What a command answers.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A Switchboard error.
    Api(ApiError),
    /// An error `data` object forwarded unchanged (a `session cmd` target's answer).
    Forwarded(Value),
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

/// `session_not_found`, for a session that does not exist (or is not logged in yet).
pub(crate) fn session_not_found() -> ApiError {
    ApiError::new(ErrorCode::SessionNotFound, "session not found")
}

/// The result of a command.
pub(crate) type CommandResult = Result<Value, Failure>;

/// Encodes a command's result as the response frame for `tid`.
pub(crate) fn encode(tid: &Value, result: CommandResult) -> String {
    match result {
        Ok(data) => frame::ok_response(tid, data),
        Err(Failure::Api(error)) => {
            METRICS.count_error(error.code);
            frame::error_response(Some(tid), &error)
        }
        Err(Failure::Forwarded(data)) => frame::error_response_with_data(Some(tid), data),
    }
}
