//! `static-cpu`: the CPU operation set run only at compiled shapes, the way an ahead-of-time
//! compiled accelerator (AWS Trainium / Inferentia through the Neuron SDK) runs a model. It is a
//! reference executor for hearth's static-shape path, not Neuron support.
//!
//! - **Buckets.** A closed [`BucketGrid`] of prefill `(tokens, batch)` and decode `(batch, kv_len)`
//!   shapes. Each bucket gets a [`Graph`]: nothing is compiled — it is the CPU forward behind an
//!   exact-size contract (inputs — ids, positions, slot ids, real lengths — must have exactly the
//!   bucket's sizes; the output is always `batch` rows), with its plan buffers kept between runs. The registry is built at load; warmup runs every graph once;
//!   a step whose shape has no graph is an error (never a fallback to a dynamic shape).
//! - **Slot KV.** Persistent per layer, one slot of `max_len` positions per running sequence plus
//!   one padding slot (NxD Inference's `kv_cache_padding_size = 1`): `[num_slots + 1, max_len,
//!   kv_heads, head_dim]` f16 (slot-major, each slot token-major as the CPU attention kernel reads
//!   it; a Neuron graph would use `[slots, kv_heads, max_len, head_dim]`). A sequence's slot is its
//!   sequence id, carried in the plan as its one-entry block table.
//! - **Padding.** [`PaddedBatch`] lays the step out at the bucket: rows sorted by slot id, pad
//!   tokens after each prompt, pad rows at the end. Every padded token goes through every layer
//!   and every row through the LM head (the cost a static shape pays), but pad tokens and pad rows
//!   write only the padding slot, so they can never touch a live sequence's KV. Outputs are
//!   permuted back to plan order.
//!
//! Each row is computed exactly as the dynamic CPU backend computes it (row-independent matmuls
//! and attention, keys beyond a row's position masked by not being read), so both backends give
//! the same logits, bit for bit, for the same sequence.

use std::collections::BTreeMap;

use hearth_core::{
    Backend, BackendCaps, BackendError, Bucket, BucketGrid, FitRule, KvLayout, LogitsWanted, PaddedBatch,
    SamplingSupport, ShapePolicy, StepOutput, StepPlan, WarmupReport, argmax, plan_shape,
};
use hearth_models::{ArchConfig, GgufFile, Model, ModelError};

use crate::cpu::CpuOps;

/// Slots, lengths and the bucket grid of a `static-cpu` backend.
#[derive(Clone, Debug)]
pub struct StaticCpuOptions {
    /// Running sequences at most (KV slots).
    pub num_slots: usize,
    /// Positions per slot: the longest sequence (prompt + generated).
    pub max_len: usize,
    pub prefill_tokens: Vec<usize>,
    pub prefill_batches: Vec<usize>,
    pub decode_batches: Vec<usize>,
    pub kv_lens: Vec<usize>,
    pub fit: FitRule,
    /// Graphs return each row's argmax instead of logits (on-device greedy sampling): requests that
    /// need other sampling are refused.
    pub device_greedy: bool,
}

impl StaticCpuOptions {
    /// NxD Inference's defaults for continuous batching: prompt and KV-length buckets at powers
    /// of two from 128 up to `max_len`, one prompt per prefill, decode always at the full batch
    /// of `num_slots` rows.
    pub fn nxd_default(num_slots: usize, max_len: usize) -> Self {
        StaticCpuOptions {
            num_slots,
            max_len,
            prefill_tokens: BucketGrid::powers_of_two(128, max_len),
            prefill_batches: vec![1],
            decode_batches: vec![num_slots],
            kv_lens: BucketGrid::powers_of_two(128, max_len),
            fit: FitRule::AtLeast,
            device_greedy: false,
        }
    }

    /// A finer grid: decode batches at powers of two up to `num_slots` (a half-empty server runs
    /// half the rows), and lengths from 32.
    pub fn tuned(num_slots: usize, max_len: usize) -> Self {
        StaticCpuOptions {
            prefill_tokens: BucketGrid::powers_of_two(32, max_len),
            decode_batches: BucketGrid::powers_of_two(1, num_slots),
            kv_lens: BucketGrid::powers_of_two(32, max_len),
            ..Self::nxd_default(num_slots, max_len)
        }
    }

    fn grid(&self) -> Result<BucketGrid, BackendError> {
        let bad = |m: String| Err(BackendError::Unavailable(m));
        if self.num_slots == 0 || self.max_len == 0 {
            return bad(format!("static-cpu needs slots and length, got {} x {}", self.num_slots, self.max_len));
        }
        let grid = BucketGrid::cross(
            &self.prefill_tokens,
            &self.prefill_batches,
            &self.decode_batches,
            &self.kv_lens,
            self.fit,
        )
        .map_err(|e| BackendError::Unavailable(format!("static-cpu buckets: {e}")))?;
        if grid.max_prefill_tokens() > self.max_len || grid.max_kv_len() > self.max_len {
            return bad(format!("static-cpu buckets exceed the slot length of {}", self.max_len));
        }
        if grid.max_kv_len() < self.max_len {
            return bad(format!(
                "static-cpu: the largest kv_len bucket ({}) must cover the slot length {}",
                grid.max_kv_len(),
                self.max_len
            ));
        }
        if grid.max_decode_batch() < self.num_slots {
            return bad(format!(
                "static-cpu: the largest decode batch ({}) must hold every slot ({})",
                grid.max_decode_batch(),
                self.num_slots
            ));
        }
        Ok(grid)
    }
}

/// The step function of one bucket: the CPU forward behind the bucket's exact sizes.
#[derive(Debug)]
struct Graph {
    bucket: Bucket,
    batch: usize,
    tokens_per_row: usize,
    /// The plan the graph hands the operation set, rebuilt in place for every run.
    plan: StepPlan,
    runs: u64,
}

impl Graph {
    fn new(bucket: Bucket) -> Self {
        let (batch, tokens_per_row) = match bucket {
            Bucket::Prefill(b) => (b.batch, b.tokens),
            Bucket::Decode(b) => (b.batch, 1),
        };
        let plan = StepPlan { tokens: Vec::with_capacity(batch * tokens_per_row), seqs: Vec::new() };
        Graph { bucket, batch, tokens_per_row, plan, runs: 0 }
    }

    /// Runs the shape: every one of `batch × tokens_per_row` tokens through the model, one output
    /// row per input row (its last real token; a pad row's last token). Inputs of any other size
    /// are refused.
    fn run(
        &mut self,
        model: &Model<CpuOps>,
        ops: &mut CpuOps,
        input: &PaddedBatch,
        pad_slot: u32,
    ) -> Result<Vec<f32>, BackendError> {
        let (b, t) = (self.batch, self.tokens_per_row);
        if input.bucket != self.bucket
            || input.input_ids.len() != b * t
            || input.positions.len() != b * t
            || input.seq_ids.len() != b
            || input.lens.len() != b
        {
            return Err(BackendError::Internal(format!(
                "graph {} called with {} ids, {} positions, {} slot ids. This is a bug.",
                self.bucket,
                input.input_ids.len(),
                input.positions.len(),
                input.seq_ids.len()
            )));
        }
        self.plan.tokens.clear();
        self.plan.seqs.clear();
        for r in 0..b {
            let ids = &input.input_ids[r * t..(r + 1) * t];
            let first = input.positions[r * t] as usize;
            let len = input.lens[r] as usize;
            let (slot, real) = if len == 0 { (pad_slot, t) } else { (input.seq_ids[r], len) };
            self.plan.push(&ids[..real], first, vec![slot], LogitsWanted::Last);
            if real < t {
                // The row's pad tokens: computed through every layer, KV kept in the padding slot.
                self.plan.push(&ids[real..], first + real, vec![pad_slot], LogitsWanted::None);
            }
        }
        self.runs += 1;
        // On a pool worker, as the dynamic backend runs its steps.
        let plan = &self.plan;
        let logits = rayon::scope(|_| model.forward(ops, plan))?;
        Ok(logits.into_data())
    }
}

/// Padding counters since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaddingStats {
    pub steps: u64,
    pub real_tokens: u64,
    pub padded_tokens: u64,
}

pub struct StaticCpuBackend {
    ops: CpuOps,
    model: Model<CpuOps>,
    caps: BackendCaps,
    graphs: BTreeMap<Bucket, Graph>,
    num_slots: usize,
    max_len: usize,
    stats: PaddingStats,
}

impl std::fmt::Debug for StaticCpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCpuBackend").field("caps", &self.caps).finish_non_exhaustive()
    }
}

impl StaticCpuBackend {
    pub fn load(g: &GgufFile, opts: &StaticCpuOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_gguf(g)?;
        let grid = opts.grid()?;
        let max_len = opts.max_len.min(config.context_length());
        if max_len < opts.max_len {
            return Err(BackendError::Unavailable(format!(
                "static-cpu slot length {} exceeds the model's context of {}",
                opts.max_len,
                config.context_length()
            ))
            .into());
        }
        // One block of `max_len` positions per slot, plus the padding slot.
        let mut ops = CpuOps::new(config.kv_spec(), max_len, opts.num_slots + 1);
        let model = Model::load(g, &config, &mut ops)?;
        let graphs = grid.buckets().map(|b| (b, Graph::new(b))).collect();
        let max_batch_tokens = grid.prefill().iter().map(|b| b.tokens * b.batch).max().unwrap_or(0);
        let caps = BackendCaps {
            kv: KvLayout::Slots { num_slots: opts.num_slots, max_len },
            mixed_prefill_decode: false,
            shapes: ShapePolicy::Bucketed(grid),
            chunked_prefill: false,
            prefix_cache: false,
            preemption: false,
            sampling: if opts.device_greedy { SamplingSupport::GreedyOnly } else { SamplingSupport::Logits },
            prompt_logits: false,
            ..BackendCaps::dynamic(
                "static-cpu",
                KvLayout::Slots { num_slots: opts.num_slots, max_len },
                max_len,
                max_batch_tokens.max(opts.num_slots),
                config.vocab_size(),
            )
        };
        Ok(StaticCpuBackend { ops, model, caps, graphs, num_slots: opts.num_slots, max_len, stats: Default::default() })
    }

    /// The compiled shapes and how often each ran.
    pub fn graph_runs(&self) -> Vec<(Bucket, u64)> {
        self.graphs.values().map(|g| (g.bucket, g.runs)).collect()
    }

    pub fn padding(&self) -> PaddingStats {
        self.stats
    }

    fn pad_slot(&self) -> u32 {
        self.num_slots as u32
    }

    /// The padding slot's KV, for tests: the rest of the cache must not change when only padding
    /// is written.
    pub fn ops(&self) -> &CpuOps {
        &self.ops
    }
}

impl Backend for StaticCpuBackend {
    fn caps(&self) -> &BackendCaps {
        &self.caps
    }

    /// Runs every graph once, on padding rows only (so no live slot is written).
    fn warmup(&mut self) -> Result<WarmupReport, BackendError> {
        let start = std::time::Instant::now();
        let pad = self.pad_slot();
        let buckets: Vec<Bucket> = self.graphs.keys().copied().collect();
        for bucket in &buckets {
            let g = self.graphs.get_mut(bucket).expect("bucket from the registry. This is a bug.");
            let (b, t) = (g.batch, g.tokens_per_row);
            let input = PaddedBatch {
                bucket: *bucket,
                batch: b,
                tokens_per_row: t,
                input_ids: vec![2; b * t],
                positions: (0..b).flat_map(|_| 0..t as u32).collect(),
                seq_ids: vec![pad; b],
                lens: vec![0; b],
                source: vec![None; b],
            };
            g.run(&self.model, &mut self.ops, &input, pad)?;
        }
        Ok(WarmupReport { steps: buckets.len(), seconds: start.elapsed().as_secs_f64() })
    }

    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError> {
        let caps = &self.caps;
        // Live sequences may use slots 0..num_slots only; the padding slot is the executor's.
        step.validate(self.max_len, self.num_slots, self.max_len, caps.vocab_size)?;
        if let Some(s) = step.seqs.iter().find(|s| s.block_table.len() != 1) {
            return Err(BackendError::Internal(format!(
                "static-cpu: a sequence holds {} slots, not 1. This is a bug.",
                s.block_table.len()
            )));
        }
        let choice = plan_shape(caps, step)?;
        let input = PaddedBatch::new(step, &choice, self.pad_slot())?;
        let pad = self.pad_slot();
        let graph = self
            .graphs
            .get_mut(&input.bucket)
            .ok_or_else(|| BackendError::Internal(format!("static-cpu has no graph for {}", input.bucket)))?;
        let rows = graph.run(&self.model, &mut self.ops, &input, pad)?;
        self.stats.steps += 1;
        self.stats.real_tokens += choice.real_tokens as u64;
        self.stats.padded_tokens += choice.padded_tokens as u64;

        let vocab = self.caps.vocab_size;
        let device_greedy = self.caps.sampling == SamplingSupport::GreedyOnly;
        let row = |r: usize| &rows[r * vocab..(r + 1) * vocab];
        let mut out = StepOutput { logits: Vec::new(), vocab, greedy: Vec::new() };
        for (seq, r) in step.seqs.iter().zip(input.row_of_seq()) {
            match seq.logits {
                LogitsWanted::None => {}
                LogitsWanted::Greedy => out.greedy.push(argmax(row(r))),
                LogitsWanted::Last if !device_greedy => out.logits.extend_from_slice(row(r)),
                LogitsWanted::Last | LogitsWanted::All => {
                    return Err(BackendError::Internal(format!(
                        "static-cpu returns {}; the step asked for {:?} logits",
                        if device_greedy { "token ids only" } else { "one logits row per sequence" },
                        seq.logits
                    )));
                }
            }
        }
        Ok(out)
    }
}
