//! The CPU backend: quantized weights repacked for our batched integer matmul ([`qgemm`]),
//! activations f32 (quantized to 8 bits per matmul), the paged KV cache f16 in host memory.
//!
//! One instance serves one model and is driven from one thread (the engine's); the matmuls and
//! attention spread a step over the cores with rayon's pool (one pool, sized to the cores).

mod attention;
mod fastmath;
mod ops;
pub mod qgemm;

use hearth_core::{Backend, BackendCaps, BackendError, KvLayout, StepOutput, StepPlan, WarmupReport, argmax};
use hearth_models::ops::split_greedy;
use hearth_models::{ArchConfig, GgufFile, Model, ModelError, SafetensorsDir};
use rayon::prelude::*;

pub use ops::{CpuAct, CpuMatrix, CpuOps, OpProfile};
pub use qgemm::Isa;

/// Sizing of the CPU backend.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes for the KV cache (K and V, all layers, f16); rounded down to whole blocks.
    pub kv_cache_bytes: usize,
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    /// Dequantize every matrix to f32 at load and multiply in f32 (no 8-bit activations): a slow,
    /// exact reference for checking other backends, not for serving.
    pub exact_matmul: bool,
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions { block_size: 16, kv_cache_bytes: 256 << 20, max_batch_tokens: 2048, exact_matmul: false }
    }
}

pub struct CpuBackend {
    ops: CpuOps,
    model: Model<CpuOps>,
    caps: BackendCaps,
    config: ArchConfig,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend").field("caps", &self.caps).finish_non_exhaustive()
    }
}

impl CpuBackend {
    pub fn load(g: &GgufFile, opts: &CpuOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_gguf(g)?;
        Self::build(config, opts, |ops, cfg| Model::load(g, cfg, ops))
    }

    /// A Hugging Face checkpoint (Llama family; weights kept in f32).
    pub fn load_safetensors(d: &SafetensorsDir, opts: &CpuOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_hf_dir(d.dir())?;
        Self::build(config, opts, |ops, cfg| Model::load_safetensors(d, cfg, ops))
    }

    /// Seeded random weights (Q8_0) at the configuration's shapes, for performance work.
    pub fn dummy(config: ArchConfig, opts: &CpuOptions, seed: u64) -> Result<Self, ModelError> {
        Self::build(config, opts, |ops, cfg| Model::dummy(cfg, ops, seed))
    }

    fn build(
        config: ArchConfig,
        opts: &CpuOptions,
        weights: impl FnOnce(&mut CpuOps, &ArchConfig) -> Result<Model<CpuOps>, ModelError>,
    ) -> Result<Self, ModelError> {
        let spec = config.kv_spec();
        if opts.block_size == 0 {
            return Err(BackendError::Unavailable("KV block size must be at least 1 token".into()).into());
        }
        let num_blocks = opts.kv_cache_bytes / (spec.bytes_per_token(2) * opts.block_size);
        if num_blocks == 0 {
            return Err(BackendError::Unavailable(format!(
                "KV cache budget of {} bytes holds no {}-token block ({} bytes per token)",
                opts.kv_cache_bytes,
                opts.block_size,
                spec.bytes_per_token(2)
            ))
            .into());
        }
        let mut ops = CpuOps::new(spec, opts.block_size, num_blocks);
        ops.set_exact_matmul(opts.exact_matmul);
        let model = weights(&mut ops, &config)?;
        let caps = BackendCaps::dynamic(
            "cpu",
            KvLayout::Paged { block_size: opts.block_size, num_blocks },
            config.context_length().min(num_blocks * opts.block_size),
            opts.max_batch_tokens,
            config.vocab_size(),
        );
        Ok(CpuBackend { ops, model, caps, config })
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn num_blocks(&self) -> usize {
        self.ops.num_blocks()
    }

    pub fn block_size(&self) -> usize {
        self.ops.block_size()
    }

    /// The CPU operation set (profiling, instruction-set selection).
    pub fn ops_mut(&mut self) -> &mut CpuOps {
        &mut self.ops
    }
}

impl Backend for CpuBackend {
    fn caps(&self) -> &BackendCaps {
        &self.caps
    }

    fn warmup(&mut self) -> Result<WarmupReport, BackendError> {
        let bs = self.ops.block_size();
        crate::warmup_steps(self, bs)
    }

    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError> {
        crate::check_step(step, &self.caps, self.ops.block_size(), self.ops.num_blocks())?;
        let caps = &self.caps;
        // The whole step runs on a worker of the pool, so the small elementwise ops between the
        // matmuls run inline there instead of being handed to the pool one by one.
        let (model, ops) = (&self.model, &mut self.ops);
        let logits = rayon::scope(|_| model.forward(ops, step))?;
        let vocab = caps.vocab_size;
        let (keep, greedy) = split_greedy(step);
        if greedy.is_empty() {
            return Ok(StepOutput { logits: logits.into_data(), vocab, greedy: Vec::new() });
        }
        let row = |r: usize| &logits.data[r * vocab..(r + 1) * vocab];
        // 262,144 columns a row: the rows' argmaxes go over the pool (each row's is sequential,
        // first maximum wins, as everywhere).
        let greedy = greedy.par_iter().map(|&r| argmax(row(r))).collect();
        let kept = keep.iter().flat_map(|&r| row(r).iter().copied()).collect();
        // The logits buffer goes back to the pool here (greedy rows never leave the backend).
        drop(logits);
        Ok(StepOutput { logits: kept, vocab, greedy })
    }
}
