//! hearth-models: model files, tokenizers, the model store, and architectures over the op set.
//!
//! `gguf` reads files; `store` finds and verifies them by name; `tokenizer` builds the model's
//! tokenizer from GGUF metadata; `ops` is the operation set backends implement; `gemma3` is an
//! architecture written once over it. [`LoadedModel`] ties them together for a backend.

pub mod error;
pub mod gemma3;
pub mod gguf;
pub mod ops;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

pub use candle_core;
pub use error::{ModelError, Result};
pub use gemma3::{Gemma3, Gemma3Config};
pub use gguf::GgufFile;
pub use ops::{AttnParams, KvSpec, Ops, RopeParams};
pub use tokenizer::Tokenizer;

/// Architectures this build can run, by GGUF `general.architecture`.
#[derive(Clone, Debug, PartialEq)]
pub enum ArchConfig {
    Gemma3(Gemma3Config),
}

impl ArchConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        match g.architecture()? {
            "gemma3" => Ok(ArchConfig::Gemma3(Gemma3Config::from_gguf(g)?)),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }

    pub fn kv_spec(&self) -> KvSpec {
        match self {
            ArchConfig::Gemma3(c) => c.kv_spec(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gemma3(c) => c.vocab_size,
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            ArchConfig::Gemma3(c) => c.context_length,
        }
    }
}

/// A model's weights over a backend's op set.
pub enum Model<O: Ops> {
    Gemma3(Gemma3<O>),
}

impl<O: Ops> Model<O> {
    pub fn load(g: &GgufFile, cfg: &ArchConfig, ops: &mut O) -> Result<Self> {
        match cfg {
            ArchConfig::Gemma3(c) => Ok(Model::Gemma3(Gemma3::load(g, c.clone(), ops)?)),
        }
    }

    pub fn forward(&self, ops: &mut O, step: &hearth_core::StepPlan) -> ops::OpResult<O::Act> {
        match self {
            Model::Gemma3(m) => m.forward(ops, step),
        }
    }
}
