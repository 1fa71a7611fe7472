//! The CPU backend: quantized weights repacked for our batched integer matmul ([`qgemm`]),
//! activations f32 (quantized to 8 bits per matmul), the paged KV cache f16 in host memory.
//!
//! One instance serves one model and is driven from one thread (the engine's); the matmuls and
//! attention spread a step over the cores with rayon's pool (one pool, sized to the cores).

mod attention;
mod fastmath;
mod ops;
pub mod qgemm;

use std::time::Instant;

use hearth_core::{Backend, BackendCaps, BackendError, KvLayout, LogitsWanted, StepOutput, StepPlan, WarmupReport};
use hearth_models::{ArchConfig, GgufFile, Model, ModelError};

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
}

impl Default for CpuOptions {
    fn default() -> Self {
        CpuOptions { block_size: 16, kv_cache_bytes: 256 << 20, max_batch_tokens: 2048 }
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
        let spec = config.kv_spec();
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
        let model = Model::load(g, &config, &mut ops)?;
        let caps = BackendCaps {
            name: "cpu",
            kv: KvLayout::Paged { block_size: opts.block_size, num_blocks },
            max_context: config.context_length().min(num_blocks * opts.block_size),
            max_batch_tokens: opts.max_batch_tokens,
            mixed_prefill_decode: true,
            vocab_size: config.vocab_size(),
        };
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
        // One short prefill and one decode touch every weight and every code path once.
        let start = Instant::now();
        let bs = self.ops.block_size();
        let prompt: Vec<u32> = (0..8).map(|i| 2 + i).collect();
        self.execute(&StepPlan::single(prompt, 0, vec![0], LogitsWanted::Last))?;
        self.execute(&StepPlan::single(vec![2], 8.min(bs - 1), vec![0], LogitsWanted::Last))?;
        Ok(WarmupReport { steps: 2, seconds: start.elapsed().as_secs_f64() })
    }

    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError> {
        let caps = &self.caps;
        if step.tokens.len() > caps.max_batch_tokens {
            return Err(BackendError::TooManyTokens { tokens: step.tokens.len(), max: caps.max_batch_tokens });
        }
        step.validate(self.ops.block_size(), self.ops.num_blocks(), caps.max_context, caps.vocab_size)?;
        let logits = self.model.forward(&mut self.ops, step)?;
        Ok(StepOutput { logits: logits.data, vocab: caps.vocab_size })
    }
}
