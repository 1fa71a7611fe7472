//! hearth-backends: accelerator backends, each implementing [`hearth_core::Backend`] by running an
//! architecture from `hearth-models` over its implementation of the op set.
//!
//! - [`cpu`]: the embedded default: our batched quantized matmul and paged attention.

pub mod cpu;

pub use cpu::{CpuBackend, CpuOptions};
