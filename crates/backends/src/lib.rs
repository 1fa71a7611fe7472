//! hearth-backends: accelerator backends, each implementing [`hearth_core::Backend`] by running an
//! architecture from `hearth-models` over its implementation of the op set.
//!
//! - [`cpu`]: the embedded default: our batched quantized matmul and paged attention.
//! - [`cuda`]: Nvidia GPUs through cudarc (loaded at run time), NVRTC-compiled kernels and cuBLAS.
//! - [`static_cpu`]: the CPU operation set run only at compiled bucket shapes with slot KV (the
//!   reference executor of the static-shape path; not an accelerator).

pub mod cpu;
pub mod cuda;
pub mod static_cpu;

pub use cpu::{CpuBackend, CpuOptions};
pub use cuda::{CudaBackend, CudaOptions};
pub use static_cpu::{PaddingStats, StaticCpuBackend, StaticCpuOptions};

use hearth_core::{Backend, BackendCaps, BackendError, LogitsWanted, StepPlan, WarmupReport};

/// One short prefill and one decode in block 0: touches every weight and code path once.
pub(crate) fn warmup_steps(b: &mut impl Backend, block_size: usize) -> Result<WarmupReport, BackendError> {
    let start = std::time::Instant::now();
    let prompt: Vec<u32> = (0..8).map(|i| 2 + i).collect();
    b.execute(&StepPlan::single(prompt, 0, vec![0], LogitsWanted::Last))?;
    b.execute(&StepPlan::single(vec![2], 8.min(block_size - 1), vec![0], LogitsWanted::Last))?;
    Ok(WarmupReport { steps: 2, seconds: start.elapsed().as_secs_f64() })
}

/// Checks a step against a backend's limits and its KV pool before anything touches memory.
pub(crate) fn check_step(
    step: &StepPlan,
    caps: &BackendCaps,
    block_size: usize,
    num_blocks: usize,
) -> Result<(), BackendError> {
    if step.tokens.len() > caps.max_batch_tokens {
        return Err(BackendError::TooManyTokens { tokens: step.tokens.len(), max: caps.max_batch_tokens });
    }
    step.validate(block_size, num_blocks, caps.max_context, caps.vocab_size)?;
    Ok(())
}
