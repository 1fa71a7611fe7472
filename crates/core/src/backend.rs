//! The backend contract: what the engine may ask of an accelerator.
//!
//! A backend owns device weights and device KV storage and runs one [`StepPlan`] at a time. It
//! declares what it can do in [`BackendCaps`]; the engine never plans a step outside them.

use crate::shape::ShapePolicy;
use crate::step::{PlanError, StepOutput, StepPlan};

/// How the backend stores KV state.
///
/// Both pools are fixed when the backend loads (a block count fixed at compile time, as Neuron's
/// block KV has, is `Paged` with that count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Fixed-size blocks addressed through per-sequence block tables; a sequence grows block by
    /// block, blocks are shared through the prefix cache.
    Paged { block_size: usize, num_blocks: usize },
    /// One fixed slot of `max_len` positions per running sequence, chosen by its sequence id (the
    /// KV row of a continuous-batching Neuron model). In a [`crate::StepPlan`] a sequence's block
    /// table is `[slot]` and the block size is `max_len`.
    Slots { num_slots: usize, max_len: usize },
}

impl KvLayout {
    /// `(block_size, num_blocks)` of the bookkeeping pool: a slot is one block of `max_len`.
    pub fn pool(&self) -> (usize, usize) {
        match *self {
            KvLayout::Paged { block_size, num_blocks } => (block_size, num_blocks),
            KvLayout::Slots { num_slots, max_len } => (max_len, num_slots),
        }
    }
}

/// Which sampling a backend's outputs allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplingSupport {
    /// The backend returns logits rows: the host samples anything.
    Logits,
    /// The backend returns only each row's argmax (on-device greedy sampling): requests that need
    /// anything else (temperature, penalties, logprobs) are refused, never approximated.
    GreedyOnly,
}

/// What a backend can run.
#[derive(Clone, Debug)]
pub struct BackendCaps {
    /// Short name for logs and metrics (`cpu`, `cuda`, `static-cpu`).
    pub name: &'static str,
    pub kv: KvLayout,
    /// Longest context (cached + new tokens) of one sequence.
    pub max_context: usize,
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    /// Whether one step may mix prefill chunks and decode tokens.
    pub mixed_prefill_decode: bool,
    pub vocab_size: usize,
    /// Which step shapes run; see [`crate::plan_shape`].
    pub shapes: ShapePolicy,
    /// Whether a prompt may be computed over several steps.
    pub chunked_prefill: bool,
    /// Whether sequences may share KV through the prefix cache.
    pub prefix_cache: bool,
    /// Whether a running sequence may lose its KV and be recomputed later (paged pools grow; a
    /// slot is sized for the whole sequence at admission and is never taken back).
    pub preemption: bool,
    pub sampling: SamplingSupport,
    /// Whether a step may return logits for every token of a chunk ([`crate::LogitsWanted::All`]).
    pub prompt_logits: bool,
}

impl BackendCaps {
    /// A dynamic-shape backend that can do everything (CPU, CUDA).
    pub fn dynamic(
        name: &'static str,
        kv: KvLayout,
        max_context: usize,
        max_batch_tokens: usize,
        vocab_size: usize,
    ) -> Self {
        BackendCaps {
            name,
            kv,
            max_context,
            max_batch_tokens,
            mixed_prefill_decode: true,
            vocab_size,
            shapes: ShapePolicy::Dynamic,
            chunked_prefill: true,
            prefix_cache: true,
            preemption: true,
            sampling: SamplingSupport::Logits,
            prompt_logits: true,
        }
    }

    /// The longest sequence (prompt + generated) the backend can run: its context, and on a
    /// bucketed backend also the largest decode KV length.
    pub fn max_sequence(&self) -> usize {
        match &self.shapes {
            ShapePolicy::Dynamic => self.max_context,
            ShapePolicy::Bucketed(g) => self.max_context.min(g.max_kv_len()),
        }
    }

    /// The longest prompt one step can take when prompts cannot be chunked.
    pub fn max_prompt_per_step(&self) -> usize {
        match &self.shapes {
            ShapePolicy::Dynamic => self.max_batch_tokens,
            ShapePolicy::Bucketed(g) => g.max_prefill_tokens(),
        }
    }
}

/// What warmup did.
#[derive(Clone, Debug, Default)]
pub struct WarmupReport {
    pub steps: usize,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid step: {0}")]
    Plan(#[from] PlanError),
    #[error("no compiled shape: {0}")]
    Shape(#[from] crate::shape::ShapeError),
    #[error("step of {tokens} tokens exceeds the backend limit of {max}")]
    TooManyTokens { tokens: usize, max: usize },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend failure: {0}")]
    Internal(String),
}

/// An accelerator that runs steps. Driven from one thread (the engine's); `Send` so it can move there.
pub trait Backend: Send {
    fn caps(&self) -> &BackendCaps;
    fn warmup(&mut self) -> Result<WarmupReport, BackendError>;
    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError>;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn caps(&self) -> &BackendCaps {
        (**self).caps()
    }

    fn warmup(&mut self) -> Result<WarmupReport, BackendError> {
        (**self).warmup()
    }

    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError> {
        (**self).execute(step)
    }
}
