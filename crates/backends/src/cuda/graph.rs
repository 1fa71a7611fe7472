//! CUDA graphs for decode steps: the host-side plan (which steps qualify, the graph key, the
//! static inputs a graph reads) and the device buffers those inputs live in.
//!
//! A captured graph replays a whole decode step with one launch, removing the per-kernel launch
//! and allocation cost that dominates small batches. Replays read their inputs from fixed device
//! buffers refilled before each launch, so a graph is keyed by what its kernels bake in: the padded
//! batch (powers of two) and the width of the per-row block tables (powers of two, in blocks).
//! Padding rows decode token 0 at position 0 into a scratch KV block that no sequence owns.

use cudarc::driver::CudaSlice;
use hearth_core::{LogitsWanted, StepPlan};

/// What a captured graph bakes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphKey {
    /// Padded batch: rows the graph runs.
    pub rows: usize,
    /// Entries per row in the block-table array.
    pub width: usize,
}

/// The graph key of a step, or `None` when the step is not a plain decode step of at most
/// `max_rows` sequences (each one new token, logits `Last` or `Greedy`).
pub fn graph_key(step: &StepPlan, max_rows: usize) -> Option<GraphKey> {
    let n = step.seqs.len();
    if n == 0 || n > max_rows {
        return None;
    }
    let mut width = 1;
    for s in &step.seqs {
        if s.len != 1 || !matches!(s.logits, LogitsWanted::Last | LogitsWanted::Greedy) {
            return None;
        }
        width = width.max(s.block_table.len());
    }
    Some(GraphKey { rows: n.next_power_of_two(), width: width.next_power_of_two() })
}

/// Host values of a graph's inputs for one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostInputs {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    pub slots: Vec<u32>,
    /// Offset of each row's table in `tables` (`row * width`).
    pub row_table: Vec<u32>,
    /// `rows × width` block ids; unused entries hold the scratch block.
    pub tables: Vec<u32>,
}

impl HostInputs {
    /// Inputs for `step` (a validated decode step fitting `key`); rows past the step's sequences
    /// are padding that decodes token 0 at position 0 in `scratch_block`.
    pub fn fill(&mut self, step: &StepPlan, key: GraphKey, block_size: usize, scratch_block: u32) {
        let (rows, w) = (key.rows, key.width);
        self.tokens.clear();
        self.positions.clear();
        self.slots.clear();
        self.row_table.clear();
        self.tables.clear();
        self.tables.resize(rows * w, scratch_block);
        for r in 0..rows {
            self.row_table.push((r * w) as u32);
            match step.seqs.get(r) {
                Some(s) => {
                    let p = s.context_len - 1;
                    self.tokens.push(step.tokens[s.start]);
                    self.positions.push(p as u32);
                    self.slots.push(s.slot(p, block_size) as u32);
                    self.tables[r * w..r * w + s.block_table.len()].copy_from_slice(&s.block_table);
                }
                None => {
                    self.tokens.push(0);
                    self.positions.push(0);
                    self.slots.push(scratch_block * block_size as u32);
                }
            }
        }
    }

    /// A padded plan with the shape of `key` (every row padding), for capturing.
    pub fn capture_plan(key: GraphKey, scratch_block: u32) -> StepPlan {
        let mut plan = StepPlan::default();
        for _ in 0..key.rows {
            plan.push(&[0], 0, vec![scratch_block], LogitsWanted::Last);
        }
        plan
    }
}

/// Device buffers holding a graph's inputs (filled before each replay).
pub struct GraphInputs {
    pub key: GraphKey,
    /// Most keys a row can attend to (`width × block_size`): fixes the attention split count.
    pub max_keys: usize,
    pub tokens: CudaSlice<u32>,
    pub positions: CudaSlice<u32>,
    pub slots: CudaSlice<u32>,
    pub row_table: CudaSlice<u32>,
    pub tables: CudaSlice<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decode_steps_get_a_key() {
        let mut d = StepPlan::default();
        d.push(&[5], 10, vec![3], LogitsWanted::Greedy);
        d.push(&[6], 40, vec![1, 2, 7], LogitsWanted::Last);
        d.push(&[7], 3, vec![4], LogitsWanted::Greedy);
        assert_eq!(graph_key(&d, 64), Some(GraphKey { rows: 4, width: 4 }));
        assert_eq!(graph_key(&d, 2), None, "too many rows");
        let mut prefill = d.clone();
        prefill.push(&[1, 2], 0, vec![9], LogitsWanted::Last);
        assert_eq!(graph_key(&prefill, 64), None);
        let mut all = StepPlan::default();
        all.push(&[5], 10, vec![3], LogitsWanted::All);
        assert_eq!(graph_key(&all, 64), None);
        let mut none = StepPlan::default();
        none.push(&[5], 10, vec![3], LogitsWanted::None);
        assert_eq!(graph_key(&none, 64), None);
        assert_eq!(graph_key(&StepPlan::default(), 64), None);
    }

    #[test]
    fn inputs_pad_with_the_scratch_block() {
        let mut d = StepPlan::default();
        d.push(&[5], 10, vec![3], LogitsWanted::Greedy); // 10 cached: position 10 in block 3
        d.push(&[6], 40, vec![1, 2, 7], LogitsWanted::Last); // position 40: block 7, offset 8
        let key = graph_key(&d, 64).unwrap();
        assert_eq!(key, GraphKey { rows: 2, width: 4 });
        let key = GraphKey { rows: 4, width: 4 };
        let mut h = HostInputs::default();
        h.fill(&d, key, 16, 99);
        assert_eq!(h.tokens, [5, 6, 0, 0]);
        assert_eq!(h.positions, [10, 40, 0, 0]);
        assert_eq!(h.slots, [3 * 16 + 10, 7 * 16 + 8, 99 * 16, 99 * 16]);
        assert_eq!(h.row_table, [0, 4, 8, 12]);
        assert_eq!(&h.tables[..8], &[3, 99, 99, 99, 1, 2, 7, 99]);
        assert!(h.tables[8..].iter().all(|&b| b == 99));
        let plan = HostInputs::capture_plan(key, 99);
        assert_eq!(plan.seqs.len(), 4);
        assert!(plan.validate(16, 100, 1 << 20, 1 << 20).is_ok());
    }
}
