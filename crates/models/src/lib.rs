//! hearth-models: model files, tokenizers, the model store, and architectures over the op set.
//!
//! `gguf` reads files; `store` finds and verifies them by name; `tokenizer` builds the model's
//! tokenizer from GGUF metadata; `ops` is the operation set backends implement; `gemma3` is an
//! architecture written once over it. [`LoadedModel`] ties them together for a backend.

pub mod dummy;
pub mod error;
pub mod gemma3;
pub mod gguf;
pub mod llama;
pub mod ops;
pub mod safetensors;
pub mod store;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;

pub use candle_core;
pub use error::{ModelError, Result};
pub use gemma3::{Gemma3, Gemma3Config};
pub use gguf::GgufFile;
pub use llama::{Llama, LlamaConfig, LlamaFlavor};
pub use ops::{AttnParams, KvSpec, Ops, RopeParams};
pub use safetensors::SafetensorsDir;
pub use tokenizer::Tokenizer;

/// Architectures this build can run, by GGUF `general.architecture`.
#[derive(Clone, Debug, PartialEq)]
pub enum ArchConfig {
    Gemma3(Gemma3Config),
    Llama(LlamaConfig),
}

impl ArchConfig {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        match g.architecture()? {
            "gemma3" => Ok(ArchConfig::Gemma3(Gemma3Config::from_gguf(g)?)),
            arch @ ("llama" | "qwen2") => Ok(ArchConfig::Llama(LlamaConfig::from_gguf(g, arch)?)),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// From a Hugging Face checkpoint folder's `config.json` (Llama-family), for real weights.
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Self> {
        Ok(ArchConfig::Llama(LlamaConfig::from_hf_json(&dir.join("config.json"))?))
    }

    /// From a Hugging Face `config.json`, for dummy weights (Llama-family shapes).
    pub fn for_dummy_weights(path: &std::path::Path) -> Result<Self> {
        Ok(ArchConfig::Llama(LlamaConfig::from_hf_json_for_dummy(path)?))
    }

    /// Short architecture name (`gemma3`, `llama`, `qwen2`).
    pub fn name(&self) -> &'static str {
        match self {
            ArchConfig::Gemma3(_) => "gemma3",
            ArchConfig::Llama(c) => match c.flavor {
                LlamaFlavor::Llama => "llama",
                LlamaFlavor::Qwen2 => "qwen2",
            },
        }
    }

    pub fn kv_spec(&self) -> KvSpec {
        match self {
            ArchConfig::Gemma3(c) => c.kv_spec(),
            ArchConfig::Llama(c) => c.kv_spec(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            ArchConfig::Gemma3(c) => c.vocab_size,
            ArchConfig::Llama(c) => c.vocab_size,
        }
    }

    /// Number of weights (for memory planning: bf16 on a GPU is twice this in bytes).
    pub fn parameters(&self) -> usize {
        match self {
            ArchConfig::Gemma3(c) => c.parameters(),
            ArchConfig::Llama(c) => c.parameters(),
        }
    }

    pub fn context_length(&self) -> usize {
        match self {
            ArchConfig::Gemma3(c) => c.context_length,
            ArchConfig::Llama(c) => c.context_length,
        }
    }
}

/// A model's weights over a backend's op set.
pub enum Model<O: Ops> {
    Gemma3(Gemma3<O>),
    Llama(Llama<O>),
}

impl<O: Ops> Model<O> {
    pub fn load(g: &GgufFile, cfg: &ArchConfig, ops: &mut O) -> Result<Self> {
        match cfg {
            ArchConfig::Gemma3(c) => Ok(Model::Gemma3(Gemma3::load(g, c.clone(), ops)?)),
            ArchConfig::Llama(c) => Ok(Model::Llama(Llama::load(g, c.clone(), ops)?)),
        }
    }

    /// From a Hugging Face checkpoint (Llama family).
    pub fn load_safetensors(d: &SafetensorsDir, cfg: &ArchConfig, ops: &mut O) -> Result<Self> {
        match cfg {
            ArchConfig::Llama(c) => Ok(Model::Llama(Llama::load_safetensors(d, c.clone(), ops)?)),
            ArchConfig::Gemma3(_) => {
                Err(ModelError::UnsupportedArchitecture("gemma3 from safetensors (use its GGUF file)".into()))
            }
        }
    }

    /// Seeded random weights at the configuration's shapes (`--dummy-weights`).
    pub fn dummy(cfg: &ArchConfig, ops: &mut O, seed: u64) -> Result<Self> {
        match cfg {
            ArchConfig::Llama(c) => Ok(Model::Llama(Llama::dummy(c.clone(), ops, seed)?)),
            ArchConfig::Gemma3(_) => Err(ModelError::UnsupportedArchitecture(
                "dummy weights for gemma3 (use a Llama or Qwen2 config.json)".into(),
            )),
        }
    }

    pub fn forward(&self, ops: &mut O, step: &hearth_core::StepPlan) -> ops::OpResult<O::Act> {
        match self {
            Model::Gemma3(m) => m.forward(ops, step),
            Model::Llama(m) => m.forward(ops, step),
        }
    }
}
