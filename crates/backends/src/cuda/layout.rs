//! Host-side layout of one step for the kernels: per row its position, its KV slot and the offset
//! of its sequence's block table in one flat table array. Built once per step (and compared, so a
//! layer reuses what the first layer uploaded).

use hearth_core::StepPlan;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    /// Position of each row in its sequence.
    pub row_pos: Vec<u32>,
    /// Offset of each row's block table in `tables`.
    pub row_table: Vec<u32>,
    /// Every sequence's block table, concatenated in plan order.
    pub tables: Vec<u32>,
    /// Cache slot each row's K and V are written to: `table[p / bs] * bs + p % bs`.
    pub slots: Vec<u32>,
}

impl StepLayout {
    /// Most keys any row attends to (its position + 1, or the window).
    pub fn max_keys(&self, window: Option<usize>) -> usize {
        let longest = self.row_pos.iter().copied().max().map_or(0, |p| p as usize + 1);
        window.map_or(longest, |w| longest.min(w))
    }
}

impl StepLayout {
    /// Refills `self` for `step` (a validated plan) with blocks of `block_size` tokens.
    pub fn build(&mut self, step: &StepPlan, block_size: usize) {
        let rows = step.tokens.len();
        self.row_pos.clear();
        self.row_table.clear();
        self.tables.clear();
        self.slots.clear();
        self.row_pos.reserve(rows);
        self.row_table.reserve(rows);
        self.slots.reserve(rows);
        for seq in &step.seqs {
            let off = self.tables.len() as u32;
            self.tables.extend_from_slice(&seq.block_table);
            for p in seq.first_position()..seq.context_len {
                self.row_pos.push(p as u32);
                self.row_table.push(off);
                self.slots.push(seq.slot(p, block_size) as u32);
            }
        }
        if self.tables.is_empty() {
            // Kernels take a pointer to the table array even when no row reads it.
            self.tables.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_core::LogitsWanted;

    #[test]
    fn rows_slots_and_tables() {
        let mut step = StepPlan::default();
        // Sequence 0: 3 cached tokens, 2 new (positions 3, 4) in blocks [7, 2] of 4 tokens.
        step.push(&[10, 11], 3, vec![7, 2], LogitsWanted::Last);
        // Sequence 1: a 5-token prefill in blocks [0, 5].
        step.push(&[1, 2, 3, 4, 5], 0, vec![0, 5], LogitsWanted::All);
        let mut l = StepLayout::default();
        l.build(&step, 4);
        assert_eq!(l.row_pos, [3, 4, 0, 1, 2, 3, 4]);
        assert_eq!(l.tables, [7, 2, 0, 5]);
        assert_eq!(l.row_table, [0, 0, 2, 2, 2, 2, 2]);
        assert_eq!(l.slots, [7 * 4 + 3, 2 * 4, 0, 1, 2, 3, 5 * 4]);
        assert_eq!(l.max_keys(None), 5);
        assert_eq!(l.max_keys(Some(2)), 2);
        let before = l.clone();
        l.build(&step, 4);
        assert_eq!(l, before, "rebuilding the same step gives the same layout");
    }
}
