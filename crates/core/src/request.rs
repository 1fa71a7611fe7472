//! Request-level types shared by the scheduler, the engine and the serving layer.

/// Engine-assigned identity of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// Why a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// Reached `max_tokens`.
    Length,
    /// Produced an end-of-generation or stop token (which is reported but not part of the text).
    Stop { token: u32 },
    /// The client went away or asked to stop.
    Aborted,
    /// The backend failed on a step that included this request.
    Error(String),
}
