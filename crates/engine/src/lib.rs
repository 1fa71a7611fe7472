//! hearth-engine: the step loop and the sampler.
//!
//! For now this holds the sampler used by `hearth generate`; the continuous-batching engine thread
//! (scheduler, KV manager, per-request streams) grows here.

pub mod sampler;

pub use sampler::{Sampled, Sampler, SamplerError, SamplingParams};
