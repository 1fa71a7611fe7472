//! The backend contract: what the engine may ask of an accelerator.
//!
//! A backend owns device weights and device KV storage and runs one [`StepPlan`] at a time. It
//! declares what it can do in [`BackendCaps`]; the engine never plans a step outside them.

use crate::step::{PlanError, StepOutput, StepPlan};

/// How the backend stores KV state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Fixed-size blocks addressed through per-sequence block tables.
    Paged { block_size: usize, num_blocks: usize },
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
