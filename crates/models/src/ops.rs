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
pub struct RopeParams {
    pub head_dim: usize,
    pub base: f32,
    /// Positions are divided by this factor (linear RoPE scaling); 1.0 for none.
    pub position_scale: f32,
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

    /// Rows of `table` for `ids`, times `scale`.
    fn embed(&mut self, table: &Self::Matrix, ids: &[u32], scale: f32) -> OpResult<Self::Act>;
    /// `x · wᵀ`: `[rows, in] → [rows, out]`.
    fn matmul(&mut self, x: &Self::Act, w: &Self::Matrix) -> OpResult<Self::Act>;
    /// RMS norm over each group of `w.len()` columns (a whole row, or one head for q/k norms), times `w`.
    fn rms_norm(&mut self, x: &Self::Act, w: &Self::Vector, eps: f32) -> OpResult<Self::Act>;
    /// `acc += rms_norm(x) * w`: the post-norm residual of Gemma-style blocks.
    fn add_rms_norm(&mut self, acc: &mut Self::Act, x: &Self::Act, w: &Self::Vector, eps: f32) -> OpResult<()>;
    /// Rotates every head of every row in place, each row at its position.
    fn rope(&mut self, x: &mut Self::Act, positions: &[u32], p: &RopeParams) -> OpResult<()>;
    /// `gelu_tanh(gate) * up`, elementwise.
    fn gelu_mul(&mut self, gate: &Self::Act, up: &Self::Act) -> OpResult<Self::Act>;
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

/// Rows of a step that need logits, in plan order.
pub fn logits_rows(step: &StepPlan) -> Vec<usize> {
    let mut rows = Vec::with_capacity(step.logits_rows());
    for s in &step.seqs {
        match s.logits {
            hearth_core::LogitsWanted::None => {}
            hearth_core::LogitsWanted::Last => rows.push(s.start + s.len - 1),
            hearth_core::LogitsWanted::All => rows.extend(s.start..s.start + s.len),
        }
    }
    rows
}
