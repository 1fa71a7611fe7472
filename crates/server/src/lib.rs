//! hearth-server: the serving layer between clients and the engine.
//!
//! - [`grpc`]: `hearth.v1.Generation` and `hearth.v1.Models`, `grpc.health.v1`, reflection.
//! - [`validate`]: requests checked against the model and [`Limits`], tokenized off the runtime.
//! - [`generate`]: one generation: engine events → text deltas (never splitting a character),
//!   stop strings, logprobs, usage, metrics.
//! - [`metrics`] and [`http`]: Prometheus `/metrics`, `/health`, `/ready`; [`openai`]: the
//!   OpenAI-compatible `/v1/completions` and `/v1/models` on the same HTTP port.
//! - [`serve`]: listeners, and the shutdown sequence (drain, grace, abort).
//!
//! Token ids inside, text at the edge (DESIGN.md): the engine never sees text. Prompts and outputs
//! are never logged unless [`ServerOptions::log_requests`] is set.

pub mod error;
pub mod generate;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod serve;
pub mod state;
pub mod text;
pub mod validate;

pub use error::{ApiError, ErrorKind};
pub use grpc::build;
pub use serve::{serve, signal};
pub use state::{AppState, Limits, ModelDesc, Served, ServerOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server task failed: {0}")]
    Task(String),
}
