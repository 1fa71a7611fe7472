//! The engine thread.
//!
//! Ownership and channels:
//! - `EngineHandle` (cloneable) holds the sending end of a bounded `std::sync::mpsc` command channel;
//!   the engine thread holds the receiver. When every handle is dropped the thread finishes the
//!   requests it has and exits.
//! - Each request gets a bounded `tokio::sync::mpsc` event channel; the engine holds the sender,
//!   the caller's [`RequestStream`] the receiver (usable from async code or with `blocking_recv`).
//!   The engine never blocks on it: when it is full, new tokens wait in the engine and go out
//!   coalesced into one event later; when the receiver is dropped, the request is aborted and its
//!   KV blocks are freed before the next step is planned.
//! - Admission is refused at once (in `submit`, on the caller's thread) when `max_waiting`
//!   requests are already queued: a shared counter of not-yet-admitted requests decides.
//!
//! Loop: drain commands → drop requests whose receivers are gone → schedule → execute → sample →
//! update → deliver events. A backend error fails the requests of that step (their blocks are
//! freed) and the engine keeps serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth_core::{
    Backend, BackendCaps, FinishReason, LogitsWanted, RequestId, SamplingSupport, ShapePolicy, plan_shape,
};
use hearth_kv::{CacheScope, KvCache, KvStats};
use hearth_scheduler::{NewRequest, ScheduledStep, Scheduler, SchedulerConfig};
use tokio::sync::mpsc::error::TrySendError;

use crate::sampler::{Sampled, Sampler, SamplerError, SamplingParams};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub max_batch_tokens: usize,
    pub max_num_seqs: usize,
    pub max_waiting: usize,
    /// Capacity of each request's event channel.
    pub event_capacity: usize,
    /// Tokens that end generation unless `ignore_eos` (the tokenizer's EOS / end-of-turn).
    pub eog_tokens: Vec<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch_tokens: 2048,
            max_num_seqs: 64,
            max_waiting: 1024,
            event_capacity: 64,
            eog_tokens: vec![],
        }
    }
}

/// A generation request in token ids.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    /// End-of-generation and stop tokens are suppressed until this many tokens are generated.
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Lower is served first.
    pub priority: i32,
    /// Prefix-cache sharing domain (the authenticated tenant).
    pub scope: CacheScope,
    /// Report the logprob of every prompt token after the first, with this many most likely
    /// alternatives at each position (vLLM's `prompt_logprobs`). The prompt is then computed in
    /// full, without prefix-cache hits.
    pub prompt_logprobs: Option<usize>,
}

impl GenerateRequest {
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            sampling: SamplingParams::default(),
            max_tokens,
            min_tokens: 0,
            stop_token_ids: vec![],
            ignore_eos: false,
            priority: 0,
            scope: CacheScope::default(),
            prompt_logprobs: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Present when the request asked for logprobs.
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FinishInfo {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Arrival to first scheduling.
    pub queue_time: Duration,
    /// Arrival to first generated token.
    pub time_to_first_token: Option<Duration>,
    pub total_time: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// Logprobs of prompt tokens 1, 2, … in order (requests with `prompt_logprobs`), before any
    /// generated token; several events when the prompt is computed in chunks.
    PromptLogprobs(Vec<TokenOut>),
    /// One or more new tokens (several when the receiver fell behind).
    Tokens(Vec<TokenOut>),
    /// The last event of every request.
    Finished(FinishInfo),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SubmitError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {max_context}")]
    TooLong { prompt: usize, max_tokens: usize, max_context: usize },
    #[error("the waiting queue is full ({0} requests)")]
    QueueFull(usize),
    #[error("the engine has stopped")]
    Stopped,
}

impl From<SamplerError> for SubmitError {
    fn from(e: SamplerError) -> Self {
        SubmitError::Invalid { field: e.field, reason: e.reason }
    }
}

/// Most alternatives a request may ask for per position (`logprobs`, `prompt_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Called on the engine thread after every step (metrics); must be quick.
pub type StepObserver = Box<dyn FnMut(&StepRecord) + Send>;

/// One step, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRecord {
    pub seqs: usize,
    pub prefill_tokens: usize,
    pub decode_tokens: usize,
    /// Tokens the backend computed: the compiled bucket's size on a static-shape backend (the
    /// difference to prefill + decode tokens is padding), the real tokens otherwise.
    pub padded_tokens: usize,
    pub duration: Duration,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub preemptions: u64,
    pub kv: KvStats,
    pub steps: u64,
    pub last_step: StepRecord,
}

/// The receiving side of one request.
#[derive(Debug)]
pub struct RequestStream {
    pub id: RequestId,
    pub events: tokio::sync::mpsc::Receiver<EngineEvent>,
}

impl RequestStream {
    /// Blocks until the request finishes (not from async code); returns its tokens and finish info.
    pub fn collect_blocking(mut self) -> (Vec<TokenOut>, FinishInfo) {
        let mut tokens = Vec::new();
        while let Some(ev) = self.events.blocking_recv() {
            match ev {
                EngineEvent::PromptLogprobs(_) => {}
                EngineEvent::Tokens(t) => tokens.extend(t),
                EngineEvent::Finished(f) => return (tokens, f),
            }
        }
        panic!("engine stream closed without a Finished event. This is a bug.");
    }
}

enum Command {
    Add(Box<Pending>),
    Abort(RequestId),
    Stats(mpsc::Sender<EngineStats>),
}

struct Pending {
    id: RequestId,
    req: GenerateRequest,
    sampler: Sampler,
    sink: tokio::sync::mpsc::Sender<EngineEvent>,
    arrival: Instant,
}

#[derive(Clone)]
pub struct EngineHandle {
    tx: SyncSender<Command>,
    not_admitted: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
    caps: Arc<BackendCaps>,
    cfg: Arc<EngineConfig>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("backend", &self.caps.name).finish_non_exhaustive()
    }
}

impl EngineHandle {
    pub fn caps(&self) -> &BackendCaps {
        &self.caps
    }

    /// Validates and queues a request. Refuses at once when the queue is full.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestStream, SubmitError> {
        let invalid = |field, reason: String| Err(SubmitError::Invalid { field, reason });
        if req.prompt.is_empty() {
            return invalid("prompt", "must not be empty".into());
        }
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= self.caps.vocab_size) {
            return invalid("prompt", format!("token id {t} is outside the vocabulary of {}", self.caps.vocab_size));
        }
        if req.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1".into());
        }
        if req.min_tokens > req.max_tokens {
            return invalid("min_tokens", format!("{} exceeds max_tokens {}", req.min_tokens, req.max_tokens));
        }
        if let Some(n) = req.prompt_logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return invalid("prompt_logprobs", format!("at most {MAX_TOP_LOGPROBS} alternatives, got {n}"));
        }
        if req.sampling.top_logprobs > MAX_TOP_LOGPROBS {
            return invalid(
                "logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives, got {}", req.sampling.top_logprobs),
            );
        }
        let max_context = self.caps.max_sequence();
        if req.prompt.len() + req.max_tokens > max_context {
            return Err(SubmitError::TooLong { prompt: req.prompt.len(), max_tokens: req.max_tokens, max_context });
        }
        let caps = &self.caps;
        if !caps.chunked_prefill && req.prompt.len() > caps.max_prompt_per_step() {
            let (n, max, name) = (req.prompt.len(), caps.max_prompt_per_step(), caps.name);
            return invalid("prompt", format!("{n} tokens, but the {name} backend takes prompts of at most {max}"));
        }
        if req.prompt_logprobs.is_some() && !caps.prompt_logits {
            let name = caps.name;
            return invalid("prompt_logprobs", format!("the {name} backend returns no logits for prompt positions"));
        }
        let sampler = Sampler::new(req.sampling.clone(), &req.prompt)?;
        if caps.sampling == SamplingSupport::GreedyOnly {
            let name = caps.name;
            if !sampler.is_plain_greedy() {
                let why = "samples greedily on the device only: temperature must be 0, with no penalties or logprobs";
                return invalid("temperature", format!("the {name} backend {why}"));
            }
            if req.min_tokens > 0 {
                return invalid(
                    "min_tokens",
                    format!("the {name} backend samples on the device and cannot hold back EOS"),
                );
            }
        }
        let max_waiting = self.cfg.max_waiting;
        self.not_admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max_waiting).then_some(n + 1))
            .map_err(|_| SubmitError::QueueFull(max_waiting))?;
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (sink, events) = tokio::sync::mpsc::channel(self.cfg.event_capacity.max(1));
        let pending = Box::new(Pending { id, req, sampler, sink, arrival: Instant::now() });
        // Never blocks: the channel has room for every request the counter lets through.
        if let Err(e) = self.tx.try_send(Command::Add(pending)) {
            self.not_admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(match e {
                mpsc::TrySendError::Full(_) => SubmitError::QueueFull(max_waiting),
                mpsc::TrySendError::Disconnected(_) => SubmitError::Stopped,
            });
        }
        Ok(RequestStream { id, events })
    }

    /// Stops a request; its stream ends with `Finished(Aborted)`. Unknown ids are ignored.
    pub fn abort(&self, id: RequestId) {
        let _ = self.tx.send(Command::Abort(id));
    }

    pub fn stats(&self) -> Result<EngineStats, SubmitError> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Command::Stats(tx)).map_err(|_| SubmitError::Stopped)?;
        rx.recv().map_err(|_| SubmitError::Stopped)
    }
}

struct Active {
    /// The request, with its prompt moved to the scheduler.
    req: GenerateRequest,
    prompt_len: usize,
    sampler: Sampler,
    sink: tokio::sync::mpsc::Sender<EngineEvent>,
    arrival: Instant,
    admitted_at: Option<Instant>,
    /// Prompt tokens served from the prefix cache at admission.
    cached_tokens: usize,
    first_token_at: Option<Instant>,
    generated: usize,
    /// Tokens not yet delivered (the receiver was full).
    undelivered: Vec<TokenOut>,
    /// The prompt, kept only for prompt logprobs (the scheduler owns the working copy).
    prompt: Vec<u32>,
    /// Prompt positions whose logprobs were computed (position p scores prompt token p + 1).
    prompt_scored: usize,
    /// Prompt logprobs not yet delivered.
    undelivered_prompt: Vec<TokenOut>,
    /// Set once the request has ended; the event is delivered before the request is dropped.
    finished: Option<FinishReason>,
}

pub struct Engine<B: Backend> {
    backend: B,
    sched: Scheduler,
    cfg: Arc<EngineConfig>,
    active: HashMap<RequestId, Active>,
    not_admitted: Arc<AtomicUsize>,
    on_step: Option<StepObserver>,
    steps: u64,
    last_step: StepRecord,
}

impl<B: Backend + 'static> Engine<B> {
    /// Starts the engine thread. `on_step` is called after every step (metrics).
    pub fn spawn(backend: B, cfg: EngineConfig, on_step: Option<StepObserver>) -> (EngineHandle, JoinHandle<()>) {
        let caps = Arc::new(backend.caps().clone());
        let cfg = Arc::new(cfg);
        let not_admitted = Arc::new(AtomicUsize::new(0));
        // Room for every admissible request plus control commands (abort, stats).
        let (tx, rx) = mpsc::sync_channel(cfg.max_waiting.max(16) + 64);
        let handle = EngineHandle {
            tx,
            not_admitted: not_admitted.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            caps: caps.clone(),
            cfg: cfg.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hearth-engine".into())
            .spawn(move || {
                let (block_size, num_blocks) = caps.kv.pool();
                let split = !caps.mixed_prefill_decode || caps.shapes != ShapePolicy::Dynamic;
                // A static-shape backend's grid bounds its steps; the engine's token budget does not
                // apply there (a smaller one could make admissible prompts unschedulable).
                let max_batch_tokens = if split {
                    caps.max_batch_tokens.max(caps.max_prompt_per_step())
                } else {
                    cfg.max_batch_tokens.min(caps.max_batch_tokens)
                };
                let sched_cfg = SchedulerConfig {
                    max_batch_tokens,
                    max_num_seqs: cfg.max_num_seqs,
                    max_waiting: usize::MAX, // the handle enforces the limit at submission
                    chunked_prefill: caps.chunked_prefill,
                    split: split.then(|| (*caps).clone()),
                };
                let sched = Scheduler::new(sched_cfg, KvCache::new(num_blocks, block_size));
                let mut engine = Engine {
                    backend,
                    sched,
                    cfg,
                    active: HashMap::new(),
                    not_admitted,
                    on_step,
                    steps: 0,
                    last_step: StepRecord::default(),
                };
                engine.run(rx);
            })
            .expect("spawning the engine thread");
        (handle, thread)
    }
}

impl<B: Backend> Engine<B> {
    fn run(&mut self, rx: Receiver<Command>) {
        let mut connected = true;
        loop {
            // Idle: block for the next command (or exit when every handle is gone).
            if self.active.is_empty() {
                if !connected {
                    return;
                }
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        connected = false;
                        break;
                    }
                }
            }
            self.drop_abandoned();
            let step = self.sched.schedule();
            let ran = !step.is_empty() || !step.refused.is_empty();
            if ran {
                self.run_step(step);
            }
            let undelivered = self.deliver();
            if !ran && (undelivered || self.sched.has_work()) {
                // Nothing could run (only slow receivers, or nothing fits yet): do not spin.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(p) => {
                let mut p = *p;
                let prompt = std::mem::take(&mut p.req.prompt);
                let prompt_len = prompt.len();
                let kept = if p.req.prompt_logprobs.is_some() { prompt.clone() } else { Vec::new() };
                let new = NewRequest {
                    id: p.id,
                    prompt,
                    max_tokens: p.req.max_tokens,
                    priority: p.req.priority,
                    scope: p.req.scope,
                    prompt_logits: p.req.prompt_logprobs.is_some(),
                };
                let mut active = Active {
                    req: p.req,
                    prompt_len,
                    sampler: p.sampler,
                    sink: p.sink,
                    arrival: p.arrival,
                    admitted_at: None,
                    cached_tokens: 0,
                    first_token_at: None,
                    generated: 0,
                    undelivered: Vec::new(),
                    prompt: kept,
                    prompt_scored: 0,
                    undelivered_prompt: Vec::new(),
                    finished: None,
                };
                if let Err(e) = self.sched.add(new) {
                    self.not_admitted.fetch_sub(1, Ordering::AcqRel);
                    active.finished = Some(FinishReason::Error(e.to_string()));
                }
                self.active.insert(p.id, active);
            }
            Command::Abort(id) => self.finish(id, FinishReason::Aborted),
            Command::Stats(reply) => {
                let s = self.sched.stats();
                let _ = reply.send(EngineStats {
                    waiting: s.waiting,
                    running: s.running,
                    preemptions: s.preemptions,
                    kv: s.kv,
                    steps: self.steps,
                    last_step: self.last_step.clone(),
                });
            }
        }
    }

    /// Ends a request: frees its blocks now; its Finished event goes out with `deliver`.
    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        let Some(a) = self.active.get_mut(&id) else { return };
        if a.finished.is_some() {
            return;
        }
        if a.admitted_at.is_none() {
            self.not_admitted.fetch_sub(1, Ordering::AcqRel);
            a.admitted_at = Some(Instant::now());
        }
        self.sched.remove(id);
        a.finished = Some(reason);
    }

    /// Requests whose receiver is gone are aborted before the next step is planned.
    fn drop_abandoned(&mut self) {
        let gone: Vec<RequestId> = self.active.iter().filter(|(_, a)| a.sink.is_closed()).map(|(id, _)| *id).collect();
        for id in gone {
            self.finish(id, FinishReason::Aborted);
            self.active.remove(&id);
        }
    }

    fn run_step(&mut self, mut step: ScheduledStep) {
        let start = Instant::now();
        for (id, why) in std::mem::take(&mut step.refused) {
            self.finish(id, FinishReason::Error(why));
        }
        if step.is_empty() {
            return;
        }
        // Plain-greedy requests past their min_tokens need only the argmax: let the backend take it.
        for (s, plan) in step.seqs.iter().zip(step.plan.seqs.iter_mut()) {
            if s.sample
                && plan.logits == LogitsWanted::Last
                && self
                    .active
                    .get(&s.id)
                    .is_some_and(|a| a.sampler.is_plain_greedy() && a.generated >= a.req.min_tokens)
            {
                plan.logits = LogitsWanted::Greedy;
            }
        }
        for s in &step.seqs {
            if let Some(a) = self.active.get_mut(&s.id)
                && a.admitted_at.is_none()
            {
                a.admitted_at = Some(start);
                a.cached_tokens = self.sched.cached_prompt_tokens(s.id).unwrap_or(0);
                self.not_admitted.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let padded_tokens =
            plan_shape(self.backend.caps(), &step.plan).map_or(step.plan.tokens.len(), |c| c.padded_tokens);
        let output = match self.backend.execute(&step.plan) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, seqs = step.seqs.len(), "backend step failed");
                for s in &step.seqs {
                    self.finish(s.id, FinishReason::Error(e.to_string()));
                }
                return;
            }
        };
        let mut sampled = Vec::with_capacity(step.seqs.len());
        let mut ended = Vec::new();
        let (mut row, mut greedy) = (0, output.greedy.iter());
        for (s, plan) in step.seqs.iter().zip(&step.plan.seqs) {
            let first_row = row;
            // Greedy sequences' ids are in `output.greedy`, not among the rows.
            row += if plan.logits == LogitsWanted::Greedy { 0 } else { plan.logits_rows() };
            if plan.logits == LogitsWanted::All
                && let Some(a) = self.active.get_mut(&s.id)
            {
                let rows = s.tokens - usize::from(s.sample); // the sampling row is not a prompt score
                score_prompt(a, s.start, (0..rows).map(|r| output.row(first_row + r)));
            }
            if !s.sample {
                sampled.push(None);
                continue;
            }
            let a = self.active.get_mut(&s.id).expect("scheduled requests are active. This is a bug.");
            let choice = if plan.logits == LogitsWanted::Greedy {
                let t = *greedy.next().expect("the backend returns one id per greedy sequence. This is a bug.");
                Choice::Token(t)
            } else {
                Choice::Logits(output.row(row - 1))
            };
            let (token, reason) = sample_one(a, choice, &self.cfg.eog_tokens);
            sampled.push(Some(token));
            if let Some(r) = reason {
                ended.push((s.id, r));
            }
        }
        self.sched.update(&step, &sampled);
        for (id, reason) in ended {
            self.finish(id, reason);
        }
        let prefill: usize = step.seqs.iter().filter(|s| !(s.sample && s.tokens == 1)).map(|s| s.tokens).sum();
        self.last_step = StepRecord {
            seqs: step.seqs.len(),
            prefill_tokens: prefill,
            decode_tokens: step.plan.tokens.len() - prefill,
            padded_tokens,
            duration: start.elapsed(),
        };
        self.steps += 1;
        if let Some(cb) = self.on_step.as_mut() {
            cb(&self.last_step);
        }
    }

    /// Sends pending tokens and finish events; true if some could not be sent yet.
    fn deliver(&mut self) -> bool {
        let mut done = Vec::new();
        let mut gone = Vec::new();
        let mut blocked = false;
        for (&id, a) in self.active.iter_mut() {
            // Prompt logprobs first, then tokens; the next batch waits while one is held back.
            let sent = send_pending(&a.sink, &mut a.undelivered_prompt, EngineEvent::PromptLogprobs)
                .and_then(|()| send_pending(&a.sink, &mut a.undelivered, EngineEvent::Tokens));
            match sent {
                Ok(()) => {}
                Err(Held::Full) => {
                    blocked = true;
                    continue;
                }
                Err(Held::Gone) => {
                    gone.push(id); // receiver dropped
                    continue;
                }
            }
            if let Some(reason) = &a.finished {
                let now = Instant::now();
                let info = FinishInfo {
                    reason: reason.clone(),
                    prompt_tokens: a.prompt_len,
                    cached_tokens: a.cached_tokens,
                    generated_tokens: a.generated,
                    queue_time: a.admitted_at.unwrap_or(now) - a.arrival,
                    time_to_first_token: a.first_token_at.map(|t| t - a.arrival),
                    total_time: now - a.arrival,
                };
                match a.sink.try_send(EngineEvent::Finished(info)) {
                    Err(TrySendError::Full(_)) => blocked = true,
                    _ => done.push(id),
                }
            }
        }
        for id in gone {
            self.finish(id, FinishReason::Aborted);
            done.push(id);
        }
        for id in done {
            self.active.remove(&id);
        }
        blocked
    }
}

/// Why pending outputs stayed with the engine.
enum Held {
    /// The receiver is full: they wait for the next delivery.
    Full,
    /// The receiver is gone.
    Gone,
}

/// Sends `pending` (if any) as one event made by `event`; on a full receiver they stay pending.
fn send_pending(
    sink: &tokio::sync::mpsc::Sender<EngineEvent>,
    pending: &mut Vec<TokenOut>,
    event: fn(Vec<TokenOut>) -> EngineEvent,
) -> Result<(), Held> {
    if pending.is_empty() {
        return Ok(());
    }
    match sink.try_send(event(std::mem::take(pending))) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(EngineEvent::PromptLogprobs(t) | EngineEvent::Tokens(t))) => {
            *pending = t;
            Err(Held::Full)
        }
        Err(TrySendError::Full(EngineEvent::Finished(_))) => {
            unreachable!("only token events are pending. This is a bug.")
        }
        Err(TrySendError::Closed(_)) => Err(Held::Gone),
    }
}

/// Records prompt logprobs from the rows of prompt positions `start..`: the row at position p
/// scores prompt token p + 1. Positions scored before (a recomputed chunk after preemption) are
/// skipped.
fn score_prompt<'a>(a: &mut Active, start: usize, rows: impl Iterator<Item = &'a [f32]>) {
    let Some(n) = a.req.prompt_logprobs else { return };
    for (p, logits) in (start..).zip(rows) {
        if p < a.prompt_scored || p + 1 >= a.prompt.len() {
            continue;
        }
        let next = a.prompt[p + 1];
        let top = crate::sampler::top_n(logits, n);
        let mut ids = vec![next];
        ids.extend(&top);
        let lps = crate::sampler::logprobs_of(logits, &ids);
        a.undelivered_prompt.push(TokenOut {
            id: next,
            logprob: Some(lps[0]),
            top: top.into_iter().zip(lps[1..].iter().copied()).collect(),
        });
        a.prompt_scored = p + 1;
    }
}

/// What the backend returned for a sampled sequence.
enum Choice<'a> {
    Logits(&'a [f32]),
    /// The device's argmax (plain greedy).
    Token(u32),
}

/// Samples a request's next token and decides whether it ends the request.
fn sample_one(a: &mut Active, choice: Choice<'_>, eog: &[u32]) -> (u32, Option<FinishReason>) {
    let req = &a.req;
    let is_stop = |t: u32| req.stop_token_ids.contains(&t) || (!req.ignore_eos && eog.contains(&t));
    let logits = match choice {
        Choice::Logits(l) => l,
        Choice::Token(t) => {
            let s = a.sampler.accept(t);
            return finish_one(a, s, is_stop(t));
        }
    };
    let sampled = if a.generated < req.min_tokens {
        let mut l = logits.to_vec();
        for &t in req.stop_token_ids.iter().chain(if req.ignore_eos { &[][..] } else { eog }) {
            if let Some(v) = l.get_mut(t as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
        a.sampler.sample(&l)
    } else {
        a.sampler.sample(logits)
    };
    let stop = is_stop(sampled.token);
    finish_one(a, sampled, stop)
}

/// Counts a sampled token and decides whether it ends the request.
fn finish_one(a: &mut Active, sampled: Sampled, stop: bool) -> (u32, Option<FinishReason>) {
    let req = &a.req;
    a.generated += 1;
    a.first_token_at.get_or_insert_with(Instant::now);
    let token = sampled.token;
    if stop {
        return (token, Some(FinishReason::Stop { token }));
    }
    a.undelivered.push(TokenOut { id: token, logprob: sampled.logprob, top: sampled.top });
    let reason = (a.generated >= req.max_tokens).then_some(FinishReason::Length);
    (token, reason)
}
