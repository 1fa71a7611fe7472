//! hearth-engine: the step loop and the sampler.
//!
//! [`Engine::spawn`] starts one OS thread that owns the backend, the scheduler (and through it the
//! KV bookkeeping) and every request's sampler. Everything else talks to it through an
//! [`EngineHandle`]: a bounded command channel in, and one bounded event stream out per request.

mod engine;
pub mod sampler;

pub use engine::{
    Engine, EngineConfig, EngineEvent, EngineHandle, EngineStats, FinishInfo, GenerateRequest, MAX_TOP_LOGPROBS,
    RequestStream, StepObserver, StepRecord, SubmitError, TokenOut,
};
pub use sampler::{Sampled, Sampler, SamplerError, SamplingParams};
