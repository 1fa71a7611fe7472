//! Choosing and loading a backend: `--backend auto|cpu|cuda|static-cpu`, a named model or GGUF file, or a
//! Hugging Face `config.json` with seeded random weights (`--model-config … --dummy-weights`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hearth_backends::cuda::GemmDtype;
use hearth_backends::{CpuBackend, CudaBackend, CudaOptions, StaticCpuBackend, cuda};
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
    /// The CPU operation set run only at compiled bucket shapes with slot KV: the reference
    /// executor of the static-shape (Neuron-style) path. GGUF models only.
    #[value(name = "static-cpu")]
    StaticCpu,
    /// AWS Neuron's runtime (libnrt) running operator-compiled NEFFs named by `--neuron-manifest`;
    /// the tokenizer comes from the model named by `--model`/`--model-path`. Written from the
    /// documented libnrt API and checked only against a mock library: never run on Neuron hardware.
    Neuron,
}

/// The fit rule of `--static-fit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fit {
    /// The smallest bucket at least as long (vllm-neuron).
    AtLeast,
    /// The smallest bucket strictly longer, equal only at the largest (NxD Inference `first_fit`).
    StrictlyAbove,
}

/// `--static-grid`: where the bucket lists start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GridPreset {
    /// NxD Inference's defaults: lengths at powers of two from 128 to the slot length, one prompt
    /// per prefill, decode always at the full batch of `--static-slots` rows.
    Nxd,
    /// Decode batches at powers of two up to the slots, lengths at powers of two from 32.
    Tuned,
}

/// Shapes and slots of `--backend static-cpu`.
#[derive(Args, Debug, Clone)]
pub struct StaticArgs {
    /// KV slots: most running sequences.
    #[arg(long, env = "HEARTH_STATIC_SLOTS", default_value_t = 8)]
    pub static_slots: usize,
    /// Positions per slot (prompt + generated); at most the model's context.
    #[arg(long, env = "HEARTH_STATIC_MAX_LEN", default_value_t = 2048)]
    pub static_max_len: usize,
    /// Bucket preset; the lists below override parts of it.
    #[arg(long, env = "HEARTH_STATIC_GRID", value_enum, default_value_t = GridPreset::Nxd)]
    pub static_grid: GridPreset,
    /// Prefill (prompt length) buckets, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub static_prefill_buckets: Option<Vec<usize>>,
    /// Prompts per prefill step, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub static_prefill_batches: Option<Vec<usize>>,
    /// Decode batch buckets, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub static_decode_batches: Option<Vec<usize>>,
    /// Decode KV-length buckets, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub static_kv_buckets: Option<Vec<usize>>,
    #[arg(long, value_enum, default_value_t = Fit::AtLeast)]
    pub static_fit: Fit,
    /// Graphs return token ids (greedy on the device) instead of logits: requests that need other
    /// sampling are refused.
    #[arg(long)]
    pub static_device_greedy: bool,
}

impl StaticArgs {
    pub fn options(&self, context: usize) -> hearth_backends::StaticCpuOptions {
        let max_len = self.static_max_len.min(context);
        let base = match self.static_grid {
            GridPreset::Nxd => hearth_backends::StaticCpuOptions::nxd_default(self.static_slots, max_len),
            GridPreset::Tuned => hearth_backends::StaticCpuOptions::tuned(self.static_slots, max_len),
        };
        let or = |o: &Option<Vec<usize>>, d: Vec<usize>| o.clone().unwrap_or(d);
        hearth_backends::StaticCpuOptions {
            prefill_tokens: or(&self.static_prefill_buckets, base.prefill_tokens.clone()),
            prefill_batches: or(&self.static_prefill_batches, base.prefill_batches.clone()),
            decode_batches: or(&self.static_decode_batches, base.decode_batches.clone()),
            kv_lens: or(&self.static_kv_buckets, base.kv_lens.clone()),
            fit: match self.static_fit {
                Fit::AtLeast => hearth_core::FitRule::AtLeast,
                Fit::StrictlyAbove => hearth_core::FitRule::StrictlyAbove,
            },
            device_greedy: self.static_device_greedy,
            ..base
        }
    }
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
    #[command(flatten)]
    pub static_shapes: StaticArgs,
    /// The `manifest.json` of operator-compiled NEFFs (`--backend neuron`; see docs/NEURON.md).
    /// NeuronCores are chosen the Neuron way, with `NEURON_RT_VISIBLE_CORES` in the environment.
    #[arg(long, env = "HEARTH_NEURON_MANIFEST")]
    pub neuron_manifest: Option<PathBuf>,
    /// The libnrt shared library (default: `libnrt.so.1`, then `libnrt.so`, from the loader path).
    #[arg(long, env = "HEARTH_NEURON_LIBRARY")]
    pub neuron_library: Option<PathBuf>,
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
        other => other,
    })
}

/// Loads the model on the chosen backend.
pub fn load(b: &BackendArgs, model: &ModelArgs, engine: &EngineArgs) -> anyhow::Result<Loaded> {
    let kind = resolve_kind(b.backend)?;
    if kind == BackendKind::StaticCpu
        && (b.model_config.is_some() || model.model_path.as_ref().is_some_and(|p| p.is_dir()))
    {
        bail!("--backend static-cpu loads GGUF models only");
    }
    if kind == BackendKind::Neuron {
        return load_neuron(b, model);
    }
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
        BackendKind::StaticCpu => {
            let opts = b.static_shapes.options(arch.context_length());
            tracing::info!(
                slots = opts.num_slots,
                max_len = opts.max_len,
                prefill = ?opts.prefill_tokens,
                prefill_batches = ?opts.prefill_batches,
                decode_batches = ?opts.decode_batches,
                kv_lens = ?opts.kv_lens,
                "static-cpu bucket grid"
            );
            Box::new(StaticCpuBackend::load(&gguf, &opts)?)
        }
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

/// `--backend neuron`: the compiled graphs from the manifest, the tokenizer from the named model.
fn load_neuron(b: &BackendArgs, model: &ModelArgs) -> anyhow::Result<Loaded> {
    let Some(manifest) = &b.neuron_manifest else { bail!("--backend neuron needs --neuron-manifest") };
    if let Ok(cores) = std::env::var("NEURON_RT_VISIBLE_CORES") {
        hearth_neuron::parse_visible_cores(&cores).context("NEURON_RT_VISIBLE_CORES")?;
    }
    let (gguf, _) = model.open_verified()?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let arch = ArchConfig::from_gguf(&gguf)?;
    let opts = hearth_neuron::NeuronOptions {
        library: b.neuron_library.clone(),
        ..hearth_neuron::NeuronOptions::new(manifest)
    };
    let backend = hearth_neuron::NeuronBackend::load(&opts)
        .map_err(hearth_core::BackendError::from)
        .with_context(|| format!("loading the Neuron artifacts of {}", manifest.display()))?;
    if backend.caps().vocab_size != arch.vocab_size() {
        bail!(
            "the manifest's vocabulary ({}) is not the tokenizer's ({}): compile the model named by --model",
            backend.caps().vocab_size,
            arch.vocab_size()
        );
    }
    let meta = ModelMeta {
        name: backend.manifest().model.clone(),
        architecture: arch.name(),
        quantization: "neuron (operator-compiled NEFFs)".into(),
        context_length: backend.caps().max_context,
        checksum_sha256: None,
    };
    Ok(Loaded { backend: Box::new(backend), tokenizer: Some(tokenizer), meta })
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
