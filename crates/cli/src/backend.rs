//! Choosing and loading a backend: `--backend auto|cpu|cuda`, a named model or GGUF file, or a
//! Hugging Face `config.json` with seeded random weights (`--model-config … --dummy-weights`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hearth_backends::cuda::GemmDtype;
use hearth_backends::{CpuBackend, CudaBackend, CudaOptions, cuda};
use hearth_core::Backend;
use hearth_models::{ArchConfig, SafetensorsDir, Tokenizer};

use crate::engine_args::EngineArgs;
use crate::models::ModelArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CUDA when a usable GPU is present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Accelerator to run on.
    #[arg(long, env = "HEARTH_BACKEND", value_enum, default_value_t = BackendKind::Auto)]
    pub backend: BackendKind,
    /// CUDA device ordinal.
    #[arg(long, env = "HEARTH_CUDA_DEVICE", default_value_t = 0)]
    pub cuda_device: usize,
    /// CUDA weight and GEMM-input type: bf16, f16 or f32. Default: f16 for GGUF files (closest to
    /// their dequantized values), bf16 for dummy weights.
    #[arg(long, env = "HEARTH_CUDA_DTYPE")]
    pub cuda_dtype: Option<GemmDtype>,
    /// A Hugging Face `config.json` (Llama or Qwen2 family) to instantiate with seeded random
    /// weights instead of loading a model; needs `--dummy-weights`. For performance work at real
    /// shapes: the output is meaningless and there is no tokenizer.
    #[arg(long, requires = "dummy_weights")]
    pub model_config: Option<PathBuf>,
    /// Run CUDA decode steps kernel by kernel instead of replaying captured CUDA graphs.
    #[arg(long, env = "HEARTH_NO_CUDA_GRAPHS")]
    pub no_cuda_graphs: bool,
    /// Use seeded random weights (with `--model-config`).
    #[arg(long, requires = "model_config")]
    pub dummy_weights: bool,
    /// Seed of the dummy weights.
    #[arg(long, default_value_t = 0)]
    pub dummy_seed: u64,
}

/// A loaded backend with what the commands need beside it.
pub struct Loaded {
    pub backend: Box<dyn Backend>,
    /// `None` for dummy weights.
    pub tokenizer: Option<Tokenizer>,
    pub meta: ModelMeta,
}

/// What clients are told about the model (`hearth serve`'s ModelInfo).
#[derive(Clone, Debug)]
pub struct ModelMeta {
    pub name: String,
    pub architecture: &'static str,
    pub quantization: String,
    pub context_length: usize,
    /// sha256 verified at load, for named models.
    pub checksum_sha256: Option<String>,
}

fn resolve_kind(kind: BackendKind) -> anyhow::Result<BackendKind> {
    Ok(match kind {
        BackendKind::Auto => match cuda::unavailable_reason() {
            None => BackendKind::Cuda,
            Some(why) => {
                tracing::info!("using the CPU backend: {why}");
                BackendKind::Cpu
            }
        },
        BackendKind::Cuda => {
            if let Some(why) = cuda::unavailable_reason() {
                bail!("--backend cuda: {why}");
            }
            BackendKind::Cuda
        }
        BackendKind::Cpu => BackendKind::Cpu,
    })
}

/// Loads the model on the chosen backend.
pub fn load(b: &BackendArgs, model: &ModelArgs, engine: &EngineArgs) -> anyhow::Result<Loaded> {
    let kind = resolve_kind(b.backend)?;
    if let Some(config) = &b.model_config {
        let arch = ArchConfig::for_dummy_weights(config).with_context(|| format!("reading {}", config.display()))?;
        let backend: Box<dyn Backend> = match kind {
            BackendKind::Cuda => {
                Box::new(CudaBackend::dummy(arch.clone(), &cuda_options(b, engine, &arch), b.dummy_seed)?)
            }
            _ => Box::new(CpuBackend::dummy(arch.clone(), &engine.cpu_options(&arch), b.dummy_seed)?),
        };
        let meta = ModelMeta {
            name: file_stem(config),
            architecture: arch.name(),
            quantization: "dummy (seeded random weights)".into(),
            context_length: arch.context_length(),
            checksum_sha256: None,
        };
        return Ok(Loaded { backend, tokenizer: None, meta });
    }
    if let Some(dir) = model.model_path.as_ref().filter(|p| p.is_dir()) {
        // A Hugging Face checkpoint folder (Llama family), with its tokenizer.json when present.
        let st = SafetensorsDir::open(dir)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(Tokenizer::from_hf_files(&dir.join("tokenizer.json"), &dir.join("config.json"))?)
        } else {
            None
        };
        let arch = ArchConfig::from_hf_dir(dir)?;
        let backend: Box<dyn Backend> = match kind {
            BackendKind::Cuda => Box::new(CudaBackend::load_safetensors(&st, &cuda_options(b, engine, &arch))?),
            _ => Box::new(CpuBackend::load_safetensors(&st, &engine.cpu_options(&arch))?),
        };
        let meta = ModelMeta {
            name: file_stem(dir),
            architecture: arch.name(),
            quantization: "safetensors".into(),
            context_length: arch.context_length(),
            checksum_sha256: None,
        };
        return Ok(Loaded { backend, tokenizer, meta });
    }
    let (gguf, checksum) = model.open_verified()?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let arch = ArchConfig::from_gguf(&gguf)?;
    let backend: Box<dyn Backend> = match kind {
        BackendKind::Cuda => Box::new(CudaBackend::load(&gguf, &cuda_options(b, engine, &arch))?),
        _ => Box::new(CpuBackend::load(&gguf, &engine.cpu_options(&arch))?),
    };
    let meta = ModelMeta {
        name: match &model.model_path {
            Some(p) => file_stem(p),
            None => model.model.clone(),
        },
        architecture: arch.name(),
        quantization: format!("gguf ({})", gguf.tensor_types().join(", ").to_lowercase()),
        context_length: arch.context_length(),
        checksum_sha256: checksum,
    };
    Ok(Loaded { backend, tokenizer: Some(tokenizer), meta })
}

fn file_stem(p: &std::path::Path) -> String {
    p.file_stem().map_or_else(|| p.display().to_string(), |s| s.to_string_lossy().into_owned())
}

fn cuda_options(b: &BackendArgs, engine: &EngineArgs, arch: &ArchConfig) -> CudaOptions {
    let per_token = arch.kv_spec().bytes_per_token(2);
    let kv = engine.kv_cache_memory.unwrap_or_else(|| {
        let want = per_token * arch.context_length().max(65_536);
        let weights = b.cuda_dtype.map_or(2, |d| d.bytes()) * arch.parameters();
        let free = cuda::free_memory(b.cuda_device).unwrap_or(0);
        // 90% of what the weights leave, less 1 GiB for activations and cuBLAS workspaces.
        let room = (free.saturating_sub(weights).saturating_sub(1 << 30) as f64 * 0.9) as usize;
        want.min(room).max(per_token * 1024)
    });
    tracing::info!(bytes = kv, tokens = kv / per_token, "CUDA KV cache budget");
    CudaOptions {
        device: b.cuda_device,
        kv_cache_bytes: kv,
        max_batch_tokens: engine.max_batch_tokens,
        dtype: b.cuda_dtype,
        cuda_graphs: !b.no_cuda_graphs,
        ..CudaOptions::default()
    }
}
