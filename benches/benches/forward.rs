//! One forward step of Gemma 3 270M on the CPU backend: decode at batch 1, 8, 16, 32 (each sequence
//! with 128 cached tokens) and prefill of 128 and 512 tokens. Throughput is tokens per second of the
//! step. Needs the default model (`hearth models pull gemma3-270m`).
//!
//!     cargo bench -p hearth-benches --bench forward

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth_benches::{cpu_backend, decode_plan, prefill_sequences, synthetic_tokens};
use hearth_core::{Backend, LogitsWanted, StepPlan};

const CONTEXT: usize = 128;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_step");
    g.sample_size(20);
    for batch in [1usize, 8, 16, 32] {
        let mut b = cpu_backend(batch * (CONTEXT + 16));
        let tables = prefill_sequences(&mut b, batch, CONTEXT);
        let plan = decode_plan(&tables, CONTEXT);
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("batch_{batch}"), |bench| bench.iter(|| b.execute(&plan).expect("decode")));
    }
    g.finish();
}

fn prefill(c: &mut Criterion) {
    let mut g = c.benchmark_group("prefill_step");
    g.sample_size(10);
    for len in [128usize, 512] {
        let mut b = cpu_backend(len + 16);
        let table: Vec<u32> = (0..len.div_ceil(b.block_size()) as u32).collect();
        let plan = StepPlan::single(synthetic_tokens(len, 0), 0, table, LogitsWanted::Last);
        g.throughput(Throughput::Elements(len as u64));
        g.bench_function(format!("tokens_{len}"), |bench| bench.iter(|| b.execute(&plan).expect("prefill")));
    }
    g.finish();
}

criterion_group!(benches, decode, prefill);
criterion_main!(benches);
