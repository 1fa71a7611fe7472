//! The operation set every backend implements; architectures are written once over it.
//!
//! Activations are `[rows, cols]` row-major, one row per token of the flattened step. A backend
//! decides how to store them (`Act`) and its weights (`Matrix`, `Vector`), and it owns the KV
//! storage that [`Ops::attention`] writes and reads: the model never holds KV state. Ops are coarse
//! enough that an accelerator can run each as one kernel, and fine enough that an architecture is
//! only a composition of them (principle 3 of `shared/DESIGN.md`).
//!
//! Row independence is part of the contract: every op computes a row from that row alone (and, for
//! attention, from its own sequence's KV), so a sequence's results do not depend on what else shares
//! the step.

use candle_core::quantized::QTensor;
use hearth_core::{BackendError, StepPlan};

/// Geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier applied to q·k.
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window. `None`: global.
    pub window: Option<usize>,
    /// `softcap * tanh(score / softcap)` before the softmax, where an architecture needs it.
    pub softcap: Option<f32>,
}

/// Rotary embedding of one layer (NeoX layout: the two halves of each head rotate together).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams<'a> {
    pub head_dim: usize,
    pub base: f32,
    /// Positions are divided by this factor (linear RoPE scaling); 1.0 for none.
    pub position_scale: f32,
    /// Per-pair frequency divisors (`head_dim / 2` of them): pair `i` rotates at
    /// `base^(-2i/head_dim) / factors[i]`. llama.cpp's `rope_freqs.weight`, which is how Llama 3.1's
    /// long-context scaling reaches a GGUF file; `None` for plain RoPE.
    pub freq_factors: Option<&'a [f32]>,
    /// `false`: NeoX layout, dims `i` and `i + head_dim/2` rotate together (Gemma, Qwen2).
    /// `true`: adjacent pairs `2i, 2i+1` rotate together (llama.cpp's "normal" RoPE, which Llama
    /// GGUF files expect: the converter permutes q and k rows for it).
    pub interleaved: bool,
}

/// KV storage a model needs from its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl KvSpec {
    /// Bytes of K and V for one token over all layers, at `elem_bytes` per element.
    pub fn bytes_per_token(&self, elem_bytes: usize) -> usize {
        2 * self.layers * self.kv_heads * self.head_dim * elem_bytes
    }
}

pub type OpResult<T> = Result<T, BackendError>;

pub trait Ops {
    type Act;
    type Matrix;
    type Vector;

    /// Takes a weight matrix `[out, in]` in its GGUF format; the backend keeps or converts it.
    fn load_matrix(&mut self, name: &str, t: QTensor) -> OpResult<Self::Matrix>;
    fn load_vector(&mut self, name: &str, v: Vec<f32>) -> OpResult<Self::Vector>;

    /// A matrix `[out, k]` given in f32 (Hugging Face checkpoints). The default goes through an F32
    /// `QTensor`; accelerators override it to convert straight to their format.
    fn load_matrix_f32(&mut self, name: &str, w: Vec<f32>, out: usize, k: usize) -> OpResult<Self::Matrix> {
        use candle_core::{Device, Tensor};
        let t = Tensor::from_vec(w, (out, k), &Device::Cpu)
            .and_then(|t| QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32))
            .map_err(|e| BackendError::Internal(format!("{name}: {e}")))?;
        self.load_matrix(name, t)
    }

    /// A seeded random matrix `[out, k]` for performance work at real shapes (`--dummy-weights`):
    /// values uniform in `±1/√k`, so activations keep their scale through the layers. The default
    /// quantizes to Q8_0 (the CPU backend's fast path); accelerators override it to build their own
    /// format directly.
    fn dummy_matrix(&mut self, name: &str, out: usize, k: usize, seed: u64) -> OpResult<Self::Matrix> {
        use candle_core::{Device, Tensor};
        let mut rng = crate::dummy::SeededRng::new(seed);
        let a = 1.0 / (k as f32).sqrt();
        let w: Vec<f32> = (0..out * k).map(|_| a * rng.next_f32()).collect();
        let dtype = if k.is_multiple_of(32) {
            candle_core::quantized::GgmlDType::Q8_0
        } else {
            candle_core::quantized::GgmlDType::F32
        };
        let t = Tensor::from_vec(w, (out, k), &Device::Cpu)
            .and_then(|t| QTensor::quantize(&t, dtype))
            .map_err(|e| BackendError::Internal(format!("dummy {name}: {e}")))?;
        self.load_matrix(name, t)
    }

    /// Rows of `table` for `ids`, times `scale`.
    fn embed(&mut self, table: &Self::Matrix, ids: &[u32], scale: f32) -> OpResult<Self::Act>;
    /// `x · wᵀ`: `[rows, in] → [rows, out]`.
    fn matmul(&mut self, x: &Self::Act, w: &Self::Matrix) -> OpResult<Self::Act>;
    /// RMS norm over each group of `w.len()` columns (a whole row, or one head for q/k norms), times `w`.
    fn rms_norm(&mut self, x: &Self::Act, w: &Self::Vector, eps: f32) -> OpResult<Self::Act>;
    /// `acc += rms_norm(x) * w`: the post-norm residual of Gemma-style blocks.
    fn add_rms_norm(&mut self, acc: &mut Self::Act, x: &Self::Act, w: &Self::Vector, eps: f32) -> OpResult<()>;
    /// Rotates every head of every row in place, each row at its position.
    fn rope(&mut self, x: &mut Self::Act, positions: &[u32], p: &RopeParams<'_>) -> OpResult<()>;
    /// `gelu_tanh(gate) * up`, elementwise.
    fn gelu_mul(&mut self, gate: &Self::Act, up: &Self::Act) -> OpResult<Self::Act>;
    /// `silu(gate) * up`, elementwise (SwiGLU).
    fn silu_mul(&mut self, gate: &Self::Act, up: &Self::Act) -> OpResult<Self::Act>;
    /// `acc += x`, elementwise (the pre-norm residual).
    fn add(&mut self, acc: &mut Self::Act, x: &Self::Act) -> OpResult<()>;
    /// Adds `b` to every row of `x` (projection biases).
    fn add_bias(&mut self, x: &mut Self::Act, b: &Self::Vector) -> OpResult<()>;
    /// Writes this step's K and V into the layer's paged cache at each token's slot, then attends
    /// every query row over its own sequence (causal, optional window). Returns `[rows, heads*dim]`.
    fn attention(
        &mut self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        step: &StepPlan,
        p: &AttnParams,
    ) -> OpResult<Self::Act>;
    /// Keeps only the given rows, in the given order.
    fn select_rows(&mut self, x: &Self::Act, rows: &[usize]) -> OpResult<Self::Act>;
    /// Copies an activation back to host memory, row-major.
    fn to_host(&mut self, x: &Self::Act) -> OpResult<Vec<f32>>;
}

/// A matrix's name without its layer number, for profiles: `blk.3.attn_q.weight` → `attn_q`.
pub fn op_label(name: &str) -> String {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    match base.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, op)| op).to_string(),
        None => base.to_string(),
    }
}

/// Rows of a step that need logits, in plan order (a `Greedy` sequence's last row included: the
/// backend reduces it to its argmax).
pub fn logits_rows(step: &StepPlan) -> Vec<usize> {
    let mut rows = Vec::with_capacity(step.logits_rows());
    for s in &step.seqs {
        match s.logits {
            hearth_core::LogitsWanted::None => {}
            hearth_core::LogitsWanted::Last | hearth_core::LogitsWanted::Greedy => rows.push(s.start + s.len - 1),
            hearth_core::LogitsWanted::All => rows.extend(s.start..s.start + s.len),
        }
    }
    rows
}

/// Splits a step's logits rows (from [`logits_rows`]) into the rows to return and the `Greedy` rows,
/// as indices into those logits rows.
pub fn split_greedy(step: &StepPlan) -> (Vec<usize>, Vec<usize>) {
    let (mut keep, mut greedy) = (Vec::new(), Vec::new());
    let mut i = 0;
    for s in &step.seqs {
        let n = s.logits_rows();
        if s.logits == hearth_core::LogitsWanted::Greedy {
            greedy.push(i);
        } else {
            keep.extend(i..i + n);
        }
        i += n;
    }
    (keep, greedy)
}
