//! hearth-core: the types that cross crate boundaries.
//!
//! Everything here is plain data or a trait: no async runtime, no transport, no accelerator. The
//! engine speaks token ids; a step is a flattened variable-length batch ([`StepPlan`]); a backend
//! ([`Backend`]) runs steps and owns device weights and device KV storage, while KV bookkeeping
//! (which block holds which tokens) lives outside the backend. Design after vLLM v1 and
//! text-embeddings-inference's `backends/core` (see `shared/STYLE.md`).

mod backend;
mod request;
mod shape;
mod step;

pub use backend::{Backend, BackendCaps, BackendError, KvLayout, SamplingSupport, WarmupReport};
pub use request::{FinishReason, RequestId};
pub use shape::{
    Bucket, BucketGrid, DecodeBucket, FitRule, GridError, PaddedBatch, PrefillBucket, ShapeChoice, ShapeError,
    ShapePolicy, StepKind, plan_shape,
};
pub use step::{LogitsWanted, PlanError, SeqStep, StepOutput, StepPlan, argmax};

/// A token id in the model's vocabulary.
pub type TokenId = u32;
