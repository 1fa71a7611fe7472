//! Errors of the serving layer: classified once ([`ApiError`]: a transport-neutral kind, the field
//! at fault, a message), mapped once to gRPC ([`tonic::Status`]) and once to HTTP.
//!
//! DESIGN.md's table: bad field → `INVALID_ARGUMENT` (named); prompt past the context →
//! `OUT_OF_RANGE`; queue full → `RESOURCE_EXHAUSTED`; not ready / shutting down → `UNAVAILABLE`;
//! deadline → `DEADLINE_EXCEEDED`; backend fault → `INTERNAL`.

use hearth_engine::SubmitError;
use tonic::{Code, Status};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    OutOfRange,
    NotFound,
    Exhausted,
    Unavailable,
    Deadline,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ApiError {
    pub kind: ErrorKind,
    /// The request field at fault, as named in the .proto (`sampling.top_p`).
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError { kind, field: None, message: message.into() }
    }

    pub fn field(kind: ErrorKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { kind, field: Some(field.into()), message: message.into() }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::field(ErrorKind::Invalid, field, message)
    }

    /// The `outcome` label of `hearth_requests_total` for a request that ended with this error.
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            ErrorKind::Invalid | ErrorKind::OutOfRange | ErrorKind::NotFound => "invalid",
            ErrorKind::Exhausted | ErrorKind::Unavailable => "rejected",
            ErrorKind::Deadline => "deadline",
            ErrorKind::Internal => "error",
        }
    }

    pub fn code(&self) -> Code {
        match self.kind {
            ErrorKind::Invalid => Code::InvalidArgument,
            ErrorKind::OutOfRange => Code::OutOfRange,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Exhausted => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Deadline => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Engine refusals, with the engine's field names mapped to the API's.
impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid { field, reason } => ApiError::invalid(api_field(field), reason),
            SubmitError::TooLong { .. } => ApiError::field(ErrorKind::OutOfRange, "stopping.max_tokens", e.to_string()),
            SubmitError::QueueFull(_) => ApiError::new(ErrorKind::Exhausted, format!("{e}; retry later")),
            SubmitError::Stopped => ApiError::new(ErrorKind::Unavailable, "the engine has stopped"),
        }
    }
}

/// The .proto path of an engine-side field name.
pub fn api_field(engine_field: &str) -> String {
    match engine_field {
        "prompt" => "prompt".into(),
        "max_tokens" | "min_tokens" => format!("stopping.{engine_field}"),
        "logprobs" | "prompt_logprobs" => engine_field.into(),
        other => format!("sampling.{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_codes_follow_the_table() {
        let e = ApiError::invalid("sampling.top_p", "must be in (0, 1], got 2");
        assert_eq!(e.to_string(), "sampling.top_p: must be in (0, 1], got 2");
        let s = Status::from(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        let full: ApiError = SubmitError::QueueFull(3).into();
        assert_eq!(full.code(), Code::ResourceExhausted);
        let long: ApiError = SubmitError::TooLong { prompt: 10, max_tokens: 5, max_context: 12 }.into();
        assert_eq!(long.code(), Code::OutOfRange);
        let t: ApiError = SubmitError::Invalid { field: "temperature", reason: "bad".into() }.into();
        assert_eq!(t.field.as_deref(), Some("sampling.temperature"));
    }
}
