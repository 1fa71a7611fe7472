//! Queues, the step function and its bookkeeping. See the crate docs for the policy.

use std::collections::{BTreeMap, HashMap};

use hearth_core::{BackendCaps, LogitsWanted, RequestId, StepPlan, plan_shape};
use hearth_kv::{CacheScope, KvCache, KvStats, SeqBlocks};

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    /// Most sequences in one step.
    pub max_num_seqs: usize,
    /// Most requests waiting; beyond it [`Scheduler::add`] refuses at once.
    pub max_waiting: usize,
    /// Whether a prompt may be split over several steps (else it must fit the budget whole).
    pub chunked_prefill: bool,
    /// The backend's shape rules when it cannot mix prefill and decode in one step (a static-shape
    /// backend): steps are then planned by [`Scheduler::schedule`]'s split policy and every step is
    /// checked with [`plan_shape`]. `None` for dynamic backends.
    pub split: Option<BackendCaps>,
}

/// A request as the scheduler sees it: token ids and limits, no sampling details.
#[derive(Clone, Debug)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    /// Most tokens to generate (the KV reservation bound).
    pub max_tokens: usize,
    /// Lower is served first.
    pub priority: i32,
    pub scope: CacheScope,
    /// Logits at every prompt position (prompt logprobs): the prompt is computed in full, without
    /// prefix-cache hits, with [`LogitsWanted::All`] until it is done.
    pub prompt_logits: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddError {
    #[error("the waiting queue is full ({0} requests)")]
    QueueFull(usize),
    #[error("request needs {needed} KV blocks but the pool has {total}")]
    TooLarge { needed: usize, total: usize },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("duplicate request id {0}")]
    Duplicate(RequestId),
    #[error("prompt of {prompt} tokens exceeds the longest prompt one step can take ({max})")]
    PromptTooLong { prompt: usize, max: usize },
}

/// One request's part of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    /// Tokens computed this step.
    pub tokens: usize,
    /// Whether this step reaches the end of the request's tokens, so its logits row must be sampled.
    pub sample: bool,
    /// Position of the chunk's first token.
    pub start: usize,
}

/// What to run: the backend plan and which request each sequence of it belongs to.
#[derive(Clone, Debug, Default)]
pub struct ScheduledStep {
    pub plan: StepPlan,
    pub seqs: Vec<ScheduledSeq>,
    /// Requests preempted (sent back to waiting) while planning this step.
    pub preempted: Vec<RequestId>,
    /// Requests removed because no step the backend can run could ever hold them (a static-shape
    /// backend whose grid cannot take them), with the reason; their blocks are already freed.
    pub refused: Vec<(RequestId, String)>,
}

impl ScheduledStep {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub waiting: usize,
    pub running: usize,
    pub preemptions: u64,
    pub kv: KvStats,
}

struct Seq {
    /// The request, with its prompt moved into `tokens`.
    req: NewRequest,
    prompt_len: usize,
    /// Prompt followed by generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose KV is in the cache.
    computed: usize,
    blocks: Option<SeqBlocks>,
    /// Prompt tokens that were served from the prefix cache at first admission.
    cached_prompt: Option<usize>,
    /// Prompt logits still to produce (see [`NewRequest::prompt_logits`]).
    prompt_logits_pending: bool,
}

/// Most prompt tokens per step of a request that wants logits at every prompt position: bounds
/// the step's logits (rows × vocabulary) and the host's scoring work.
pub const PROMPT_LOGITS_CHUNK: usize = 128;

impl Seq {
    fn chunk_cap(&self) -> usize {
        if self.prompt_logits_pending { PROMPT_LOGITS_CHUNK } else { usize::MAX }
    }
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvCache,
    waiting: BTreeMap<(i32, u64), Seq>,
    /// Running requests in priority order (lowest key first). Keys are `(priority, arrival)` and
    /// survive preemption, so a resumed request keeps its place.
    running: BTreeMap<(i32, u64), Seq>,
    /// Where each live request is: its key, and whether it runs.
    index: HashMap<RequestId, ((i32, u64), bool)>,
    next_arrival: u64,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, kv: KvCache) -> Self {
        assert!(cfg.max_batch_tokens > 0 && cfg.max_num_seqs > 0, "scheduler limits must be positive");
        Scheduler {
            cfg,
            kv,
            waiting: BTreeMap::new(),
            running: BTreeMap::new(),
            index: HashMap::new(),
            next_arrival: 0,
            preemptions: 0,
        }
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            preemptions: self.preemptions,
            kv: self.kv.stats(),
        }
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Queues a request, or refuses it at once.
    pub fn add(&mut self, mut req: NewRequest) -> Result<(), AddError> {
        if req.prompt.is_empty() {
            return Err(AddError::EmptyPrompt);
        }
        if self.index.contains_key(&req.id) {
            return Err(AddError::Duplicate(req.id));
        }
        let needed = (req.prompt.len() + req.max_tokens).div_ceil(self.kv.block_size());
        if needed > self.kv.num_blocks() {
            return Err(AddError::TooLarge { needed, total: self.kv.num_blocks() });
        }
        if let Some(caps) = &self.cfg.split
            && !caps.chunked_prefill
            && req.prompt.len() > caps.max_prompt_per_step()
        {
            return Err(AddError::PromptTooLong { prompt: req.prompt.len(), max: caps.max_prompt_per_step() });
        }
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AddError::QueueFull(self.cfg.max_waiting));
        }
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let key = (req.priority, arrival);
        self.index.insert(req.id, (key, false));
        let tokens = std::mem::take(&mut req.prompt);
        let prompt_len = tokens.len();
        let prompt_logits_pending = req.prompt_logits;
        let seq =
            Seq { req, prompt_len, tokens, computed: 0, blocks: None, cached_prompt: None, prompt_logits_pending };
        self.waiting.insert(key, seq);
        Ok(())
    }

    /// Removes a request wherever it is and frees its blocks. False if it was not there.
    pub fn remove(&mut self, id: RequestId) -> bool {
        let Some((key, running)) = self.index.remove(&id) else { return false };
        let q = if running { &mut self.running } else { &mut self.waiting };
        q.remove(&key).expect("index and queues agree. This is a bug.");
        true
    }

    /// Prompt tokens served from the prefix cache when the request was first admitted.
    pub fn cached_prompt_tokens(&self, id: RequestId) -> Option<usize> {
        let (key, running) = *self.index.get(&id)?;
        let q = if running { &self.running } else { &self.waiting };
        q.get(&key)?.cached_prompt
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> ScheduledStep {
        if let Some(caps) = self.cfg.split.take() {
            let step = self.schedule_split(&caps);
            self.cfg.split = Some(caps);
            return step;
        }
        let mut budget = self.cfg.max_batch_tokens;
        let mut step = ScheduledStep::default();
        let mut planned: Vec<((i32, u64), usize)> = Vec::new();

        // 1. Running requests, best first; preempt from the back when blocks run out.
        let mut keys: Vec<(i32, u64)> = self.running.keys().copied().collect();
        let mut i = 0;
        while i < keys.len() && budget > 0 {
            let key = keys[i];
            let seq = self.running.get_mut(&key).expect("running key. This is a bug.");
            let want = (seq.tokens.len() - seq.computed).min(budget).min(seq.chunk_cap());
            let target = seq.computed + want;
            let blocks = seq.blocks.as_mut().expect("running requests hold blocks. This is a bug.");
            if blocks.reserve(target).is_ok() {
                planned.push((key, want));
                budget -= want;
                i += 1;
                continue;
            }
            // Out of blocks: preempt the lowest-priority, newest running request (maybe this one).
            let victim = *keys.last().expect("non-empty. This is a bug.");
            self.preempt(victim);
            step.preempted.push(self.waiting[&victim].req.id);
            keys.pop();
            if victim == key {
                break;
            }
        }

        // 2. Waiting requests, unless this step preempted.
        if step.preempted.is_empty() {
            while budget > 0 && planned.len() < self.cfg.max_num_seqs {
                let Some((&key, seq)) = self.waiting.iter().next() else { break };
                let whole = seq.tokens.len();
                if !self.cfg.chunked_prefill && whole > budget {
                    break;
                }
                // Reserve for the whole current token list; generation grows it block by block.
                let reuse = !seq.prompt_logits_pending;
                let Ok(blocks) = self.kv.allocate_with(seq.req.scope, &seq.tokens, reuse) else { break };
                let mut seq = self.waiting.remove(&key).expect("key just seen. This is a bug.");
                seq.computed = blocks.cached_tokens();
                seq.cached_prompt.get_or_insert(blocks.cached_tokens());
                seq.blocks = Some(blocks);
                let want = (whole - seq.computed).min(budget).min(seq.chunk_cap());
                budget -= want;
                planned.push((key, want));
                self.index.insert(seq.req.id, (key, true));
                self.running.insert(key, seq);
            }
        }
        debug_assert!(planned.len() <= self.cfg.max_num_seqs, "admission respects the sequence cap");
        self.plan_into(&mut step, planned);
        step
    }

    /// The split policy of backends that cannot mix prefill and decode (vLLM-on-Neuron's): a step
    /// is either prefill — waiting requests, best first, each whole from position 0 (no chunking,
    /// no prefix-cache hits unless the backend has them), while a KV slot is free and the grown
    /// step still fits a compiled shape — or, when no request can be admitted, decode — every
    /// running request one token, best first, as many as a compiled shape holds. Prefill goes
    /// first, so a new request waits at most one step for its prompt; slots are sized for the whole
    /// request at admission, so nothing is ever preempted.
    fn schedule_split(&mut self, caps: &BackendCaps) -> ScheduledStep {
        let mut step = ScheduledStep::default();
        let mut planned: Vec<((i32, u64), usize)> = Vec::new();
        let mut trial = StepPlan::default();
        let max_running = match &caps.shapes {
            hearth_core::ShapePolicy::Bucketed(g) => g.max_decode_batch(),
            hearth_core::ShapePolicy::Dynamic => usize::MAX,
        };
        while planned.len() < self.cfg.max_num_seqs && self.running.len() < max_running {
            let Some((&key, seq)) = self.waiting.iter().next() else { break };
            trial.push(&seq.tokens, 0, vec![0], LogitsWanted::Last);
            let fits = match plan_shape(caps, &trial) {
                Ok(_) if trial.tokens.len() <= self.cfg.max_batch_tokens => Ok(()),
                Ok(_) => Err(format!("{} tokens exceed the step budget", trial.tokens.len())),
                Err(e) => Err(e.to_string()),
            };
            if let Err(why) = fits {
                trial.pop();
                if trial.seqs.is_empty() {
                    // Alone it fits no shape: it never will. Refuse it rather than block the queue.
                    let id = seq.req.id;
                    self.remove(id);
                    step.refused.push((id, format!("the backend cannot run this prompt: {why}")));
                    continue;
                }
                break;
            }
            // No prefix-cache hits: a hit would make a chunk from a later position.
            let Ok(blocks) = self.kv.allocate_with(seq.req.scope, &seq.tokens, false) else {
                trial.pop();
                break;
            };
            let mut seq = self.waiting.remove(&key).expect("key just seen. This is a bug.");
            seq.computed = 0;
            seq.cached_prompt.get_or_insert(0);
            seq.blocks = Some(blocks);
            planned.push((key, seq.tokens.len()));
            self.index.insert(seq.req.id, (key, true));
            self.running.insert(key, seq);
        }
        if planned.is_empty() && step.refused.is_empty() {
            let mut lone = Vec::new();
            for (&key, seq) in &mut self.running {
                if planned.len() >= self.cfg.max_num_seqs {
                    break;
                }
                let want = seq.tokens.len() - seq.computed;
                debug_assert_eq!(want, 1, "a running request of a split backend decodes. This is a bug.");
                trial.push(&seq.tokens[seq.computed..], seq.computed, vec![0], LogitsWanted::Last);
                if let Err(e) = plan_shape(caps, &trial) {
                    if trial.seqs.len() == 1 {
                        lone.push((seq.req.id, format!("the backend cannot decode this sequence: {e}")));
                    }
                    break;
                }
                let blocks = seq.blocks.as_mut().expect("running requests hold blocks. This is a bug.");
                if blocks.reserve(seq.tokens.len()).is_err() {
                    break; // cannot happen with slots (reserved whole at admission)
                }
                planned.push((key, want));
            }
            for (id, why) in lone {
                self.remove(id);
                step.refused.push((id, why));
            }
        }
        self.plan_into(&mut step, planned);
        step
    }

    fn plan_into(&self, step: &mut ScheduledStep, planned: Vec<((i32, u64), usize)>) {
        for (key, n) in planned {
            let seq = &self.running[&key];
            let start = seq.computed;
            let sample = start + n == seq.tokens.len();
            let table = seq.blocks.as_ref().expect("planned requests hold blocks. This is a bug.").blocks().to_vec();
            let logits = match (seq.prompt_logits_pending && start < seq.prompt_len, sample) {
                (true, _) => LogitsWanted::All,
                (false, true) => LogitsWanted::Last,
                (false, false) => LogitsWanted::None,
            };
            step.plan.push(&seq.tokens[start..start + n], start, table, logits);
            step.seqs.push(ScheduledSeq { id: seq.req.id, tokens: n, sample, start });
        }
    }

    fn preempt(&mut self, key: (i32, u64)) {
        let mut seq = self.running.remove(&key).expect("victim is running. This is a bug.");
        seq.blocks = None;
        seq.computed = 0;
        self.preemptions += 1;
        self.index.insert(seq.req.id, (key, false));
        self.waiting.insert(key, seq);
    }

    /// Records a step's results: every scheduled sequence computed its tokens; `sampled` holds the
    /// new token of each sequence that sampled (in `step.seqs` order, `None` where it did not).
    pub fn update(&mut self, step: &ScheduledStep, sampled: &[Option<u32>]) {
        assert_eq!(sampled.len(), step.seqs.len(), "one result per scheduled sequence. This is a bug.");
        for (s, tok) in step.seqs.iter().zip(sampled) {
            let Some(&(key, true)) = self.index.get(&s.id) else { continue }; // removed meanwhile
            let seq = self.running.get_mut(&key).expect("indexed as running. This is a bug.");
            seq.computed += s.tokens;
            let computed = seq.computed;
            if computed >= seq.prompt_len {
                seq.prompt_logits_pending = false;
            }
            if let Some(b) = seq.blocks.as_mut() {
                b.commit(&seq.tokens[..computed]);
            }
            if let Some(t) = tok {
                seq.tokens.push(*t);
            }
        }
    }

    /// Tokens generated so far by a request.
    pub fn generated(&self, id: RequestId) -> Option<&[u32]> {
        let (key, running) = *self.index.get(&id)?;
        let q = if running { &self.running } else { &self.waiting };
        let seq = q.get(&key)?;
        Some(&seq.tokens[seq.prompt_len..])
    }
}
