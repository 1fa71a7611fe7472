//! The models crate's one error enum.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid GGUF file: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: metadata key `{key}`: {reason}")]
    Metadata { path: PathBuf, key: String, reason: String },
    #[error("{path}: tensor `{name}`: {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("unsupported architecture `{0}` (supported: gemma3, llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unknown model `{name}` (known: {known})")]
    UnknownModel { name: String, known: String },
    #[error("model `{name}` is not in {dir}; fetch it with `hearth models pull {name}`")]
    Missing { name: String, dir: PathBuf },
    #[error(
        "model file {path} is corrupt: expected {expected_size} bytes with sha256 {expected}, found {actual_size} bytes with sha256 {actual}; run `hearth models pull {name}` again"
    )]
    Checksum { name: String, path: PathBuf, expected: String, actual: String, expected_size: u64, actual_size: u64 },
    #[error("pulling model `{name}`: {reason}")]
    Pull { name: String, reason: String },
    #[error("invalid manifest {file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error(transparent)]
    Backend(#[from] hearth_core::BackendError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
