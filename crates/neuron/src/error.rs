//! The crate's one error type and its single mapping to [`hearth_core::BackendError`].

use std::path::PathBuf;

use hearth_core::BackendError;

use crate::manifest::ManifestError;
use crate::neff::NeffError;
use crate::status::NrtError;
use crate::sys::OpenError;

#[derive(Debug, thiserror::Error)]
pub enum NeuronError {
    /// libnrt could not be opened or lacks a symbol.
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("NEFF {path}: {source}")]
    NeffIo { path: PathBuf, source: std::io::Error },
    #[error("NEFF {path}: {source}")]
    Neff { path: PathBuf, source: NeffError },
    /// A libnrt call failed.
    #[error(transparent)]
    Nrt(#[from] NrtError),
    /// A graph's inputs or outputs do not match what the manifest says.
    #[error("{0}")]
    Artifact(String),
    #[error("invalid option: {0}")]
    Options(String),
}

impl From<NeuronError> for BackendError {
    /// libnrt failures map by their class (see [`crate::status`]); a missing runtime library is
    /// `Unavailable` (this host cannot run the backend); everything else (bad manifest, bad
    /// artifact, bad option) is `Internal`.
    fn from(e: NeuronError) -> Self {
        match e {
            NeuronError::Nrt(e) => e.into(),
            e @ NeuronError::Open(_) => BackendError::Unavailable(e.to_string()),
            e => BackendError::Internal(e.to_string()),
        }
    }
}
