//! Static shapes: the bucket grid of an ahead-of-time compiled backend and the one planner
//! function, [`plan_shape`], that decides which compiled shape runs a step and how much of it is
//! padding.
//!
//! Accelerators such as AWS Trainium run graphs compiled for fixed tensor shapes. A prefill
//! ("context encoding") graph is compiled per `(tokens, batch)` bucket, a decode ("token
//! generation") graph per `(batch, kv_len)` bucket; a step runs on the first bucket that fits and
//! is padded to it. The scheduler calls [`plan_shape`] when it admits requests (so it never plans a
//! step no bucket can run) and the executor calls it again to pad (so the two cannot disagree).
//! Dynamic backends (CPU, CUDA) accept every step within their limits; `plan_shape` reports
//! their steps unpadded.

use crate::backend::{BackendCaps, KvLayout};
use crate::step::StepPlan;

/// Which shapes a backend can run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShapePolicy {
    /// Any step within the backend's limits.
    Dynamic,
    /// Only the shapes of a closed grid of compiled buckets.
    Bucketed(BucketGrid),
}

/// A compiled prefill shape: `batch` rows of `tokens` tokens, each row one sequence's whole prompt
/// starting at position 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrefillBucket {
    pub tokens: usize,
    pub batch: usize,
}

/// A compiled decode shape: `batch` rows of one token each, attending over at most `kv_len`
/// positions (the new token's included).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecodeBucket {
    pub batch: usize,
    pub kv_len: usize,
}

/// A compiled shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    Prefill(PrefillBucket),
    Decode(DecodeBucket),
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bucket::Prefill(b) => write!(f, "prefill(tokens={}, batch={})", b.tokens, b.batch),
            Bucket::Decode(b) => write!(f, "decode(batch={}, kv_len={})", b.batch, b.kv_len),
        }
    }
}

/// How a length picks its bucket. Batch sizes always take the smallest bucket `>=` the rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FitRule {
    /// The smallest bucket `>=` the length (vllm-neuron's rule).
    AtLeast,
    /// The smallest bucket `>` the length, equality allowed only at the largest bucket (NxD
    /// Inference's `first_fit`).
    StrictlyAbove,
}

impl FitRule {
    fn fits(self, need: usize, bucket: usize, largest: usize) -> bool {
        match self {
            FitRule::AtLeast => need <= bucket,
            FitRule::StrictlyAbove => need < bucket || (need == bucket && bucket == largest),
        }
    }
}

/// The closed set of compiled shapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketGrid {
    /// Sorted by `(batch, tokens)`.
    prefill: Vec<PrefillBucket>,
    /// Sorted by `(batch, kv_len)`.
    decode: Vec<DecodeBucket>,
    pub fit: FitRule,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GridError {
    #[error("{0} bucket list is empty")]
    Empty(&'static str),
    #[error("{what} bucket sizes must be positive, got {value}")]
    Zero { what: &'static str, value: usize },
}

impl BucketGrid {
    /// NxD Inference's default lengths: powers of two from `min` while below `max`, then `max`
    /// (`min = 128, max = 3000` gives `128, 256, 512, 1024, 2048, 3000`).
    pub fn powers_of_two(min: usize, max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut b = min.max(1);
        while b < max {
            out.push(b);
            b *= 2;
        }
        out.push(max);
        out
    }

    /// The grid of every combination: prefill `tokens × batches`, decode `batches × kv_lens`.
    pub fn cross(
        prefill_tokens: &[usize],
        prefill_batches: &[usize],
        decode_batches: &[usize],
        kv_lens: &[usize],
        fit: FitRule,
    ) -> Result<Self, GridError> {
        for (what, list) in [
            ("prefill token", prefill_tokens),
            ("prefill batch", prefill_batches),
            ("decode batch", decode_batches),
            ("decode kv_len", kv_lens),
        ] {
            if list.is_empty() {
                return Err(GridError::Empty(what));
            }
            if let Some(&value) = list.iter().find(|&&v| v == 0) {
                return Err(GridError::Zero { what, value });
            }
        }
        let prefill = prefill_batches
            .iter()
            .flat_map(|&batch| prefill_tokens.iter().map(move |&tokens| PrefillBucket { tokens, batch }))
            .collect();
        let decode =
            decode_batches.iter().flat_map(|&batch| kv_lens.iter().map(move |&kv_len| DecodeBucket { batch, kv_len }));
        Ok(Self::new(prefill, decode.collect(), fit))
    }

    fn new(mut prefill: Vec<PrefillBucket>, mut decode: Vec<DecodeBucket>, fit: FitRule) -> Self {
        prefill.sort_by_key(|b| (b.batch, b.tokens));
        prefill.dedup();
        decode.sort_by_key(|b| (b.batch, b.kv_len));
        decode.dedup();
        BucketGrid { prefill, decode, fit }
    }

    pub fn prefill(&self) -> &[PrefillBucket] {
        &self.prefill
    }

    pub fn decode(&self) -> &[DecodeBucket] {
        &self.decode
    }

    /// Every bucket, prefill first.
    pub fn buckets(&self) -> impl Iterator<Item = Bucket> + '_ {
        self.prefill.iter().map(|&b| Bucket::Prefill(b)).chain(self.decode.iter().map(|&b| Bucket::Decode(b)))
    }

    pub fn max_prefill_tokens(&self) -> usize {
        self.prefill.iter().map(|b| b.tokens).max().unwrap_or(0)
    }

    /// Most prefills in one step.
    pub fn max_prefill_batch(&self) -> usize {
        self.prefill.iter().map(|b| b.batch).max().unwrap_or(0)
    }

    pub fn max_decode_batch(&self) -> usize {
        self.decode.iter().map(|b| b.batch).max().unwrap_or(0)
    }

    pub fn max_kv_len(&self) -> usize {
        self.decode.iter().map(|b| b.kv_len).max().unwrap_or(0)
    }

    /// The prefill bucket for `rows` prompts of at most `tokens` tokens: the smallest batch that
    /// holds the rows, then the smallest length that fits.
    pub fn fit_prefill(&self, rows: usize, tokens: usize) -> Option<PrefillBucket> {
        let largest = self.max_prefill_tokens();
        self.prefill.iter().copied().find(|b| rows <= b.batch && self.fit.fits(tokens, b.tokens, largest))
    }

    /// The decode bucket for `rows` sequences whose longest context (new token included) is
    /// `kv_len`.
    pub fn fit_decode(&self, rows: usize, kv_len: usize) -> Option<DecodeBucket> {
        let largest = self.max_kv_len();
        self.decode.iter().copied().find(|b| rows <= b.batch && self.fit.fits(kv_len, b.kv_len, largest))
    }
}

/// What kind of work a step holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepKind {
    /// Only prompt work.
    Prefill,
    /// Only single-token decodes.
    Decode,
    /// Both (dynamic backends only).
    Mixed,
}

/// The shape a step runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeChoice {
    pub kind: StepKind,
    /// The compiled bucket (`None` on a dynamic backend).
    pub bucket: Option<Bucket>,
    /// Sequences in the step.
    pub rows: usize,
    /// Tokens the step really computes.
    pub real_tokens: usize,
    /// Tokens the backend computes: the bucket's `batch × tokens` (prefill) or `batch` (decode);
    /// the real tokens on a dynamic backend.
    pub padded_tokens: usize,
}

impl ShapeChoice {
    /// Padding tokens: computed, then thrown away.
    pub fn wasted_tokens(&self) -> usize {
        self.padded_tokens - self.real_tokens
    }
}

/// Why no compiled shape can run a step.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error("the step is empty")]
    Empty,
    #[error("the backend cannot mix prefill and decode in one step")]
    Mixed,
    #[error("sequence {seq}: a prompt chunk starting at position {start}, but the backend has no chunked prefill")]
    Chunked { seq: usize, start: usize },
    #[error("no compiled {kind} shape holds {rows} rows of {len} (largest: batch {max_batch}, length {max_len})")]
    NoBucket { kind: &'static str, rows: usize, len: usize, max_batch: usize, max_len: usize },
    #[error("sequence {seq}: context {context} does not fit a slot of {max_len} positions")]
    SlotTooShort { seq: usize, context: usize, max_len: usize },
}

/// Chooses the shape that runs `plan` on a backend with `caps`: the single source of truth for
/// admission (scheduler) and padding (executor). Pure.
///
/// On a bucketed backend a step is either all prefill (every sequence a whole prompt from
/// position 0, so no chunking and no prefix-cache hits) or all decode (one token each), never
/// both; it runs on the first bucket that fits by [`BucketGrid::fit_prefill`] /
/// [`BucketGrid::fit_decode`].
pub fn plan_shape(caps: &BackendCaps, plan: &StepPlan) -> Result<ShapeChoice, ShapeError> {
    if plan.seqs.is_empty() || plan.tokens.is_empty() {
        return Err(ShapeError::Empty);
    }
    let rows = plan.seqs.len();
    let real_tokens = plan.tokens.len();
    let decodes = plan.seqs.iter().filter(|s| s.len == 1 && s.first_position() > 0).count();
    let kind = match decodes {
        0 => StepKind::Prefill,
        d if d == rows => StepKind::Decode,
        _ => StepKind::Mixed,
    };
    let grid = match &caps.shapes {
        ShapePolicy::Dynamic => {
            return Ok(ShapeChoice { kind, bucket: None, rows, real_tokens, padded_tokens: real_tokens });
        }
        ShapePolicy::Bucketed(grid) => grid,
    };
    if let KvLayout::Slots { max_len, .. } = caps.kv
        && let Some((seq, s)) = plan.seqs.iter().enumerate().find(|(_, s)| s.context_len > max_len)
    {
        return Err(ShapeError::SlotTooShort { seq, context: s.context_len, max_len });
    }
    match kind {
        StepKind::Mixed => Err(ShapeError::Mixed),
        StepKind::Prefill => {
            if !caps.chunked_prefill
                && let Some((seq, s)) = plan.seqs.iter().enumerate().find(|(_, s)| s.first_position() > 0)
            {
                return Err(ShapeError::Chunked { seq, start: s.first_position() });
            }
            let len = plan.seqs.iter().map(|s| s.len).max().expect("non-empty. This is a bug.");
            let b = grid.fit_prefill(rows, len).ok_or(ShapeError::NoBucket {
                kind: "prefill",
                rows,
                len,
                max_batch: grid.max_prefill_batch(),
                max_len: grid.max_prefill_tokens(),
            })?;
            let padded_tokens = b.batch * b.tokens;
            Ok(ShapeChoice { kind, bucket: Some(Bucket::Prefill(b)), rows, real_tokens, padded_tokens })
        }
        StepKind::Decode => {
            let len = plan.seqs.iter().map(|s| s.context_len).max().expect("non-empty. This is a bug.");
            let b = grid.fit_decode(rows, len).ok_or(ShapeError::NoBucket {
                kind: "decode",
                rows,
                len,
                max_batch: grid.max_decode_batch(),
                max_len: grid.max_kv_len(),
            })?;
            Ok(ShapeChoice { kind, bucket: Some(Bucket::Decode(b)), rows, real_tokens, padded_tokens: b.batch })
        }
    }
}

/// A step laid out at its compiled shape, as a static-shape executor feeds it to the graph.
///
/// Rows are the step's sequences sorted by slot id, then padding rows. Each row holds
/// `tokens_per_row` tokens: a prefill row is its prompt followed by pad tokens (copies of the
/// prompt's first token), a decode row its one new token. Padding rows (copies of the first row's
/// tokens, as NxD Inference's "repeat first batch line" does, so no row can produce NaN) carry the
/// padding slot id: a slot kept outside the live ones, so their KV writes never touch a sequence's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedBatch {
    pub bucket: Bucket,
    pub batch: usize,
    pub tokens_per_row: usize,
    /// `batch × tokens_per_row`, row-major.
    pub input_ids: Vec<u32>,
    /// Position of each input token.
    pub positions: Vec<u32>,
    /// The KV slot of each row.
    pub seq_ids: Vec<u32>,
    /// Real tokens of each row (0 for padding rows): the logits row of a sequence is that of its
    /// token `lens[row] - 1`.
    pub lens: Vec<u32>,
    /// The plan sequence of each row (`None` for padding rows).
    pub source: Vec<Option<usize>>,
}

impl PaddedBatch {
    /// Lays out `plan` at `choice`'s bucket. `pad_slot` is the slot padding rows write to.
    pub fn new(plan: &StepPlan, choice: &ShapeChoice, pad_slot: u32) -> Result<Self, ShapeError> {
        let bucket = choice.bucket.ok_or(ShapeError::Empty)?;
        let (batch, tokens_per_row) = match bucket {
            Bucket::Prefill(b) => (b.batch, b.tokens),
            Bucket::Decode(b) => (b.batch, 1),
        };
        let mut order: Vec<usize> = (0..plan.seqs.len()).collect();
        order.sort_by_key(|&i| plan.seqs[i].block_table.first().copied().unwrap_or(u32::MAX));
        let mut out = PaddedBatch {
            bucket,
            batch,
            tokens_per_row,
            input_ids: Vec::with_capacity(batch * tokens_per_row),
            positions: Vec::with_capacity(batch * tokens_per_row),
            seq_ids: Vec::with_capacity(batch),
            lens: Vec::with_capacity(batch),
            source: Vec::with_capacity(batch),
        };
        for &i in &order {
            let s = &plan.seqs[i];
            if s.len > tokens_per_row {
                return Err(ShapeError::NoBucket {
                    kind: "row",
                    rows: plan.seqs.len(),
                    len: s.len,
                    max_batch: batch,
                    max_len: tokens_per_row,
                });
            }
            let ids = &plan.tokens[s.start..s.start + s.len];
            out.input_ids.extend_from_slice(ids);
            out.input_ids.extend(std::iter::repeat_n(ids[0], tokens_per_row - s.len));
            let first = s.first_position() as u32;
            out.positions.extend((0..tokens_per_row as u32).map(|k| first + k));
            out.seq_ids.push(*s.block_table.first().ok_or(ShapeError::Empty)?);
            out.lens.push(s.len as u32);
            out.source.push(Some(i));
        }
        let first_line = out.input_ids[..tokens_per_row].to_vec();
        for _ in plan.seqs.len()..batch {
            out.input_ids.extend_from_slice(&first_line);
            out.positions.extend(0..tokens_per_row as u32);
            out.seq_ids.push(pad_slot);
            out.lens.push(0);
            out.source.push(None);
        }
        Ok(out)
    }

    /// The padded row of each plan sequence (to put outputs back in plan order).
    pub fn row_of_seq(&self) -> Vec<usize> {
        let mut rows = vec![0; self.source.iter().flatten().count()];
        for (row, s) in self.source.iter().enumerate() {
            if let Some(i) = s {
                rows[*i] = row;
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SamplingSupport;
    use crate::step::LogitsWanted;

    fn caps(grid: BucketGrid) -> BackendCaps {
        BackendCaps {
            shapes: ShapePolicy::Bucketed(grid),
            kv: KvLayout::Slots { num_slots: 4, max_len: 512 },
            chunked_prefill: false,
            prefix_cache: false,
            preemption: false,
            mixed_prefill_decode: false,
            sampling: SamplingSupport::Logits,
            prompt_logits: false,
            ..BackendCaps::dynamic("test", KvLayout::Paged { block_size: 16, num_blocks: 8 }, 512, 512, 100)
        }
    }

    fn grid(fit: FitRule) -> BucketGrid {
        BucketGrid::cross(&[128, 256, 512], &[1], &[1, 2, 4], &[128, 256, 512], fit).unwrap()
    }

    fn prefill(lens: &[usize]) -> StepPlan {
        let mut p = StepPlan::default();
        for (i, &n) in lens.iter().enumerate() {
            p.push(&vec![1; n], 0, vec![i as u32], LogitsWanted::Last);
        }
        p
    }

    fn decode(contexts: &[usize]) -> StepPlan {
        let mut p = StepPlan::default();
        for (i, &c) in contexts.iter().enumerate() {
            p.push(&[1], c - 1, vec![i as u32], LogitsWanted::Last);
        }
        p
    }

    #[test]
    fn powers_of_two_end_at_the_max() {
        assert_eq!(BucketGrid::powers_of_two(128, 3000), vec![128, 256, 512, 1024, 2048, 3000]);
        assert_eq!(BucketGrid::powers_of_two(128, 1024), vec![128, 256, 512, 1024]);
        assert_eq!(BucketGrid::powers_of_two(128, 100), vec![100]);
        assert_eq!(BucketGrid::powers_of_two(1, 8), vec![1, 2, 4, 8]);
    }

    #[test]
    fn at_least_takes_the_smallest_bucket_that_holds_the_length() {
        let c = caps(grid(FitRule::AtLeast));
        let s = plan_shape(&c, &prefill(&[128])).unwrap();
        assert_eq!(s.bucket, Some(Bucket::Prefill(PrefillBucket { tokens: 128, batch: 1 })));
        assert_eq!((s.real_tokens, s.padded_tokens, s.wasted_tokens()), (128, 128, 0));
        let s = plan_shape(&c, &prefill(&[129])).unwrap();
        assert_eq!((s.padded_tokens, s.wasted_tokens()), (256, 127));
        let s = plan_shape(&c, &decode(&[10, 300, 5])).unwrap();
        assert_eq!(s.kind, StepKind::Decode);
        assert_eq!(s.bucket, Some(Bucket::Decode(DecodeBucket { batch: 4, kv_len: 512 })));
        assert_eq!((s.real_tokens, s.padded_tokens), (3, 4));
    }

    #[test]
    fn strictly_above_allows_equality_only_at_the_largest_bucket() {
        let c = caps(grid(FitRule::StrictlyAbove));
        let b = |p: &StepPlan| plan_shape(&c, p).unwrap().bucket.unwrap();
        assert_eq!(b(&prefill(&[127])), Bucket::Prefill(PrefillBucket { tokens: 128, batch: 1 }));
        assert_eq!(b(&prefill(&[128])), Bucket::Prefill(PrefillBucket { tokens: 256, batch: 1 }));
        assert_eq!(b(&prefill(&[512])), Bucket::Prefill(PrefillBucket { tokens: 512, batch: 1 }));
        assert_eq!(b(&decode(&[256])), Bucket::Decode(DecodeBucket { batch: 1, kv_len: 512 }));
    }

    #[test]
    fn refuses_what_no_bucket_holds() {
        let c = caps(grid(FitRule::AtLeast));
        assert!(matches!(plan_shape(&c, &prefill(&[10, 10])), Err(ShapeError::NoBucket { kind: "prefill", .. })));
        assert!(matches!(plan_shape(&c, &decode(&[2; 5])), Err(ShapeError::NoBucket { kind: "decode", rows: 5, .. })));
        assert!(matches!(plan_shape(&c, &decode(&[513])), Err(ShapeError::SlotTooShort { context: 513, .. })));
        let mut mixed = prefill(&[10]);
        mixed.push(&[1], 4, vec![1], LogitsWanted::Last);
        assert_eq!(plan_shape(&c, &mixed), Err(ShapeError::Mixed));
        let mut chunk = StepPlan::default();
        chunk.push(&[1; 8], 16, vec![0], LogitsWanted::Last);
        assert_eq!(plan_shape(&c, &chunk), Err(ShapeError::Chunked { seq: 0, start: 16 }));
        assert_eq!(plan_shape(&c, &StepPlan::default()), Err(ShapeError::Empty));
    }

    #[test]
    fn a_one_token_prompt_is_a_prefill() {
        let c = caps(grid(FitRule::AtLeast));
        assert_eq!(plan_shape(&c, &prefill(&[1])).unwrap().kind, StepKind::Prefill);
    }

    #[test]
    fn dynamic_backends_run_steps_unpadded() {
        let c = BackendCaps::dynamic("cpu", KvLayout::Paged { block_size: 16, num_blocks: 8 }, 128, 128, 100);
        let mut p = prefill(&[7]);
        p.push(&[1], 4, vec![1], LogitsWanted::Last);
        let s = plan_shape(&c, &p).unwrap();
        assert_eq!((s.kind, s.bucket, s.padded_tokens, s.wasted_tokens()), (StepKind::Mixed, None, 8, 0));
    }

    #[test]
    fn padding_sorts_by_slot_and_keeps_pad_rows_in_the_pad_slot() {
        let c = caps(grid(FitRule::AtLeast));
        let mut p = StepPlan::default();
        p.push(&[7], 9, vec![3], LogitsWanted::Last);
        p.push(&[8], 4, vec![1], LogitsWanted::Last);
        p.push(&[9], 2, vec![2], LogitsWanted::Last);
        let choice = plan_shape(&c, &p).unwrap();
        let b = PaddedBatch::new(&p, &choice, 4).unwrap();
        assert_eq!((b.batch, b.tokens_per_row), (4, 1));
        assert_eq!(b.seq_ids, vec![1, 2, 3, 4]);
        assert_eq!(b.input_ids, vec![8, 9, 7, 8]);
        assert_eq!(b.positions, vec![4, 2, 9, 0]);
        assert_eq!(b.lens, vec![1, 1, 1, 0]);
        assert_eq!(b.source, vec![Some(1), Some(2), Some(0), None]);
        assert_eq!(b.row_of_seq(), vec![2, 0, 1]);

        let p = prefill(&[3]);
        let choice = plan_shape(&c, &p).unwrap();
        let b = PaddedBatch::new(&p, &choice, 4).unwrap();
        assert_eq!((b.batch, b.tokens_per_row, b.input_ids.len()), (1, 128, 128));
        assert_eq!(&b.positions[..4], &[0, 1, 2, 3]);
        assert_eq!(b.lens, vec![3]);
    }

    #[test]
    fn the_grid_is_checked_and_sorted() {
        assert_eq!(BucketGrid::cross(&[], &[1], &[1], &[1], FitRule::AtLeast), Err(GridError::Empty("prefill token")));
        assert!(matches!(
            BucketGrid::cross(&[1], &[1], &[0], &[1], FitRule::AtLeast),
            Err(GridError::Zero { what: "decode batch", .. })
        ));
        let g = BucketGrid::cross(&[256, 128], &[1], &[4, 1], &[64], FitRule::AtLeast).unwrap();
        assert_eq!(g.prefill()[0].tokens, 128);
        assert_eq!(g.decode()[0].batch, 1);
        assert_eq!(g.buckets().count(), 4);
        assert_eq!((g.max_prefill_tokens(), g.max_decode_batch(), g.max_kv_len()), (256, 4, 64));
    }
}
