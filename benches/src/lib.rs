//! Helpers shared by the criterion benchmarks in `benches/benches/`.

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_models::{GgufFile, store};

/// The CPU backend on the default model (which must have been pulled) with a KV budget for
/// `tokens` tokens.
pub fn cpu_backend(tokens: usize) -> CpuBackend {
    let g = GgufFile::open(store::default_model_for_tests()).expect("open the default model");
    let per_token = 2 * 18 * 256 * 2; // Gemma 3 270M: 18 layers, 1 KV head of 256, f16 K and V
    let opts = CpuOptions { kv_cache_bytes: (tokens + 1024) * per_token, max_batch_tokens: 4096, ..Default::default() };
    CpuBackend::load(&g, &opts).expect("load the default model")
}

/// `batch` sequences of `context` cached tokens each, in disjoint blocks; returns their block tables.
pub fn prefill_sequences(b: &mut CpuBackend, batch: usize, context: usize) -> Vec<Vec<u32>> {
    let per_seq = (context + 1).div_ceil(b.block_size());
    let mut tables = Vec::with_capacity(batch);
    for s in 0..batch {
        let table: Vec<u32> = ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect();
        let tokens = synthetic_tokens(context, s as u32);
        b.execute(&StepPlan::single(tokens, 0, table.clone(), LogitsWanted::None)).expect("prefill");
        tables.push(table);
    }
    tables
}

/// Deterministic ordinary-text-range token ids (BOS first).
pub fn synthetic_tokens(n: usize, salt: u32) -> Vec<u32> {
    let mut out = vec![2];
    out.extend((1..n as u32).map(|i| 1000 + (i.wrapping_mul(2_654_435_761).wrapping_add(salt * 7919)) % 200_000));
    out
}

/// One decode step over `tables` (each sequence at position `context`).
pub fn decode_plan(tables: &[Vec<u32>], context: usize) -> StepPlan {
    let mut plan = StepPlan::default();
    for (i, t) in tables.iter().enumerate() {
        plan.push(&[1000 + i as u32], context, t.clone(), LogitsWanted::Last);
    }
    plan
}
