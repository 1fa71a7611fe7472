//! hearth-scheduler: continuous batching as a synchronous, deterministic step function.
//!
//! Design after vLLM v1's scheduler: there is no separate prefill or decode phase, only "how many
//! of its not-yet-computed tokens does each request get this step". Every step has a token budget
//! (`max_batch_tokens`) and a sequence cap (`max_num_seqs`):
//! 1. running requests first, in priority order: a decoding request needs 1 token, a request in
//!    the middle of a chunked prefill gets what the budget leaves (so a long prompt never stalls
//!    decodes for a whole long step);
//! 2. when a running request cannot get a KV block, the lowest-priority, newest running request is
//!    preempted by recompute: its blocks are released and it goes back to the waiting queue with
//!    its tokens, to be prefilled again later (greedy output is unchanged by this);
//! 3. then waiting requests, best priority first (FCFS within a priority), reusing their longest
//!    cached prefix, while budget, sequence cap and blocks allow; none are admitted in a step that
//!    preempted.
//!
//! Priority: a lower value is served first (as in vLLM). The scheduler owns the KV bookkeeping
//! ([`hearth_kv::KvCache`]) but never touches the model: [`Scheduler::schedule`] returns a
//! [`ScheduledStep`], the engine runs it and reports sampled tokens back through
//! [`Scheduler::update`].

mod queue;

pub use queue::{AddError, NewRequest, ScheduledSeq, ScheduledStep, Scheduler, SchedulerConfig, SchedulerStats};
