//! Where one decode step's time goes: per-op wall time (matmuls per weight, the output head,
//! attention, the rest) of Gemma 3 270M on the CPU backend at batch 1 and 16, each sequence with
//! 128 cached tokens, and of a 512-token prefill. Needs the default model.
//!
//!     cargo bench -p hearth-benches --bench profile
//!     HEARTH_PROFILE_PREFILL=2000 cargo bench -p hearth-benches --bench profile
//!     HEARTH_PROFILE_BATCHES=16,32 HEARTH_PROFILE_PREFILL=0 cargo bench -p hearth-benches --bench profile

use std::time::{Duration, Instant};

use hearth_benches::{cpu_backend, decode_plan, prefill_sequences, synthetic_tokens};
use hearth_core::{Backend, LogitsWanted, StepPlan};

const CONTEXT: usize = 128;

fn report(title: &str, b: &mut hearth_backends::CpuBackend, plan: &StepPlan, steps: u32) {
    for _ in 0..2 {
        b.execute(plan).expect("warm-up step");
    }
    b.ops_mut().set_profiling(true);
    let t0 = Instant::now();
    for _ in 0..steps {
        b.execute(plan).expect("step");
    }
    let wall = t0.elapsed() / steps;
    let mut prof = b.ops_mut().take_profile();
    b.ops_mut().set_profiling(false);
    prof.sort_by_key(|p| std::cmp::Reverse(p.1));
    let counted: Duration = prof.iter().map(|p| p.1).sum::<Duration>() / steps;
    println!("\n{title}: {:.2} ms per step ({} tokens, ISA {:?})", ms(wall), plan.tokens.len(), b.ops_mut().isa());
    println!("| op | ms/step | share | calls/step |\n|---|---|---|---|");
    for (op, d, n) in &prof {
        let per = *d / steps;
        println!(
            "| {op} | {:.2} | {:.1}% | {} |",
            ms(per),
            100.0 * per.as_secs_f64() / wall.as_secs_f64(),
            n / steps as u64
        );
    }
    let rest = wall.saturating_sub(counted);
    println!(
        "| (outside ops: plan checks, glue) | {:.2} | {:.1}% | |",
        ms(rest),
        100.0 * rest.as_secs_f64() / wall.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // HEARTH_PROFILE_BATCHES=16,32: other decode batches.
    let batches: Vec<usize> = std::env::var("HEARTH_PROFILE_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16]);
    for batch in batches {
        let mut b = cpu_backend(batch * (CONTEXT + 16));
        let tables = prefill_sequences(&mut b, batch, CONTEXT);
        let plan = decode_plan(&tables, CONTEXT);
        report(&format!("decode, batch {batch}"), &mut b, &plan, 20);
    }
    // HEARTH_PROFILE_PREFILL=2000: a longer prompt (attention grows with its square); 0: none.
    let len = std::env::var("HEARTH_PROFILE_PREFILL").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    if len == 0 {
        return;
    }
    let mut b = cpu_backend(len + 16);
    let table: Vec<u32> = (0..len.div_ceil(b.block_size()) as u32).collect();
    let plan = StepPlan::single(synthetic_tokens(len, 0), 0, table, LogitsWanted::Last);
    report(&format!("prefill, {len} tokens"), &mut b, &plan, 3);
}
