//! One engine step as a flattened, variable-length batch.
//!
//! Invariants checked by [`StepPlan::validate`]: every sequence's tokens are a contiguous range of
//! `tokens`, ranges are in order and cover `tokens` exactly, positions are consecutive and end at
//! `context_len - 1`, and the block table covers `context_len` tokens. Backends call `validate`
//! before touching device memory, so a malformed plan is an error, never an out-of-bounds write.

use crate::TokenId;

/// Which rows of a sequence need logits after this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last token of the sequence's chunk (the usual case: sample the next token).
    Last,
    /// Every token of the chunk (teacher forcing, prompt logprobs).
    All,
    /// Only the id of the last token's largest logit (greedy sampling; the first on ties): the
    /// backend returns that id in [`StepOutput::greedy`] instead of the row, sparing the copy of a
    /// vocabulary-sized row and the host's scan of it.
    Greedy,
}

/// One sequence's share of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqStep {
    /// Offset of this sequence's first token in [`StepPlan::tokens`].
    pub start: usize,
    /// Number of new tokens this step (prefill chunk length, or 1 for decode).
    pub len: usize,
    /// Tokens held in the KV cache for this sequence after the step (cached + new). The new tokens
    /// sit at positions `context_len - len .. context_len`.
    pub context_len: usize,
    /// Physical KV block of each logical block of the sequence, in order.
    pub block_table: Vec<u32>,
    /// Which rows need logits.
    pub logits: LogitsWanted,
}

impl SeqStep {
    /// Position of the first new token.
    pub fn first_position(&self) -> usize {
        self.context_len - self.len
    }

    /// KV cache slot of the token at `pos`: `block_table[pos / block_size] * block_size + pos % block_size`.
    pub fn slot(&self, pos: usize, block_size: usize) -> usize {
        self.block_table[pos / block_size] as usize * block_size + pos % block_size
    }

    /// Number of logits rows this sequence produces.
    pub fn logits_rows(&self) -> usize {
        match self.logits {
            LogitsWanted::None => 0,
            LogitsWanted::Last | LogitsWanted::Greedy => 1,
            LogitsWanted::All => self.len,
        }
    }
}

/// A flattened batch: the tokens of several sequences, each with its own context and block table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub tokens: Vec<TokenId>,
    pub seqs: Vec<SeqStep>,
}

/// Why a plan cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("step has no tokens")]
    Empty,
    #[error("sequence {seq}: token range {start}..{end} does not follow the previous one ({expected})")]
    Ranges { seq: usize, start: usize, end: usize, expected: usize },
    #[error("sequence {seq}: {len} new tokens but context_len {context_len}")]
    Context { seq: usize, len: usize, context_len: usize },
    #[error("sequence {seq}: block table of {blocks} blocks cannot hold {context_len} tokens")]
    BlockTable { seq: usize, blocks: usize, context_len: usize },
    #[error("sequence {seq}: block {block} is outside the pool of {num_blocks} blocks")]
    BlockOutOfRange { seq: usize, block: u32, num_blocks: usize },
    #[error("sequence {seq}: context {context_len} exceeds the model limit {max}")]
    TooLong { seq: usize, context_len: usize, max: usize },
    #[error("token {token} at row {row} is outside the vocabulary of {vocab}")]
    Token { row: usize, token: TokenId, vocab: usize },
}

impl StepPlan {
    /// Plan for a single sequence: `tokens` are new, `cached` tokens are already in the KV cache.
    pub fn single(tokens: Vec<TokenId>, cached: usize, block_table: Vec<u32>, logits: LogitsWanted) -> Self {
        let len = tokens.len();
        StepPlan { tokens, seqs: vec![SeqStep { start: 0, len, context_len: cached + len, block_table, logits }] }
    }

    /// Appends a sequence's chunk to the plan.
    pub fn push(&mut self, tokens: &[TokenId], cached: usize, block_table: Vec<u32>, logits: LogitsWanted) {
        let start = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.seqs.push(SeqStep { start, len: tokens.len(), context_len: cached + tokens.len(), block_table, logits });
    }

    /// Removes the last sequence's chunk (undoes [`StepPlan::push`]).
    pub fn pop(&mut self) -> Option<SeqStep> {
        let s = self.seqs.pop()?;
        self.tokens.truncate(s.start);
        Some(s)
    }

    /// Total logits rows the step produces, in sequence order.
    pub fn logits_rows(&self) -> usize {
        self.seqs.iter().map(SeqStep::logits_rows).sum()
    }

    /// Position of every token, in `tokens` order.
    pub fn positions(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.tokens.len());
        for s in &self.seqs {
            out.extend((s.first_position()..s.context_len).map(|p| p as u32));
        }
        out
    }

    /// Checks the plan's internal consistency against a KV pool and model limits.
    pub fn validate(
        &self,
        block_size: usize,
        num_blocks: usize,
        max_context: usize,
        vocab: usize,
    ) -> Result<(), PlanError> {
        if self.tokens.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut expected = 0;
        for (seq, s) in self.seqs.iter().enumerate() {
            if s.start != expected || s.len == 0 {
                return Err(PlanError::Ranges { seq, start: s.start, end: s.start + s.len, expected });
            }
            expected = s.start + s.len;
            if s.len > s.context_len {
                return Err(PlanError::Context { seq, len: s.len, context_len: s.context_len });
            }
            if s.context_len > max_context {
                return Err(PlanError::TooLong { seq, context_len: s.context_len, max: max_context });
            }
            if s.block_table.len() * block_size < s.context_len {
                return Err(PlanError::BlockTable { seq, blocks: s.block_table.len(), context_len: s.context_len });
            }
            if let Some(&block) = s.block_table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(PlanError::BlockOutOfRange { seq, block, num_blocks });
            }
        }
        if expected != self.tokens.len() {
            return Err(PlanError::Ranges { seq: self.seqs.len(), start: expected, end: self.tokens.len(), expected });
        }
        if let Some((row, &token)) = self.tokens.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
            return Err(PlanError::Token { row, token, vocab });
        }
        Ok(())
    }
}

/// What a step returns: logits rows in plan order (sequence by sequence, token order within).
#[derive(Clone, Debug, Default)]
pub struct StepOutput {
    /// `rows × vocab` logits, row-major, f32: the rows of `Last` and `All` sequences, in plan order.
    pub logits: Vec<f32>,
    pub vocab: usize,
    /// The argmax of each `Greedy` sequence's last row, in plan order.
    pub greedy: Vec<u32>,
}

/// Index of the largest value (the first on ties; NaN never wins), as greedy sampling picks.
pub fn argmax(row: &[f32]) -> u32 {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            (best, best_v) = (i, v);
        }
    }
    best as u32
}

impl StepOutput {
    pub fn rows(&self) -> usize {
        self.logits.len().checked_div(self.vocab).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.vocab..(i + 1) * self.vocab]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum_and_never_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 2.0]), 2, "NaN in front never wins");
        assert_eq!(argmax(&[0.5, f32::NAN, 0.25]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    fn plan() -> StepPlan {
        let mut p = StepPlan::default();
        p.push(&[1, 2, 3], 0, vec![0], LogitsWanted::Last);
        p.push(&[4], 20, vec![1, 2], LogitsWanted::All);
        p
    }

    #[test]
    fn pop_undoes_push() {
        let mut p = plan();
        let last = p.pop().unwrap();
        assert_eq!((last.start, last.len, p.tokens.len(), p.seqs.len()), (3, 1, 3, 1));
        assert_eq!(p.validate(16, 4, 100, 10), Ok(()));
        p.pop();
        assert_eq!(p, StepPlan::default());
        assert_eq!(p.pop(), None);
    }

    #[test]
    fn positions_follow_context() {
        assert_eq!(plan().positions(), vec![0, 1, 2, 20]);
        assert_eq!(plan().logits_rows(), 2);
        assert_eq!(plan().validate(16, 4, 100, 10), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_plans() {
        let p = plan();
        assert!(matches!(p.validate(8, 4, 100, 10), Err(PlanError::BlockTable { seq: 1, .. })));
        assert!(matches!(p.validate(16, 2, 100, 10), Err(PlanError::BlockOutOfRange { block: 2, .. })));
        assert!(matches!(p.validate(16, 4, 20, 10), Err(PlanError::TooLong { seq: 1, .. })));
        assert!(matches!(p.validate(16, 4, 100, 4), Err(PlanError::Token { row: 3, .. })));
        let mut gap = plan();
        gap.seqs[1].start = 4;
        assert!(matches!(gap.validate(16, 4, 100, 10), Err(PlanError::Ranges { seq: 1, .. })));
        assert_eq!(StepPlan::default().validate(16, 4, 100, 10), Err(PlanError::Empty));
    }
}
