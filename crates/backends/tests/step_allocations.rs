//! The CPU backend's hot path reuses its buffers: once a step shape has run, a decode step
//! allocates only a handful of small bookkeeping vectors and the logits it hands back, however
//! many layers the model has (no allocation per op, per layer or per attention row).
//!
//! Counts every heap allocation of the process (the pool's workers included) with a counting
//! global allocator; this file holds one test so that nothing else allocates meanwhile.

#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_models::GgufFile;
use hearth_models::candle_core::quantized::GgmlDType;
use hearth_models::testing::{TinySpec, tiny_gemma3_weights, write_tiny_gguf};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn backend(layers: usize) -> CpuBackend {
    // head_dim 64 with 2 query heads per KV head: the grouped attention path; Q8_0: the
    // quantized matmuls.
    let spec = TinySpec { layers, head_dim: 64, ..TinySpec::default() };
    let w = tiny_gemma3_weights(&spec, 7);
    let path = std::env::temp_dir().join(format!("hearth-alloc-{}-{layers}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &w, GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let b = CpuBackend::load(
        &g,
        &CpuOptions { block_size: 4, kv_cache_bytes: 4 << 20, max_batch_tokens: 512, exact_matmul: false },
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    b
}

/// Allocations of the median of several decode steps over 4 sequences (half of them greedy),
/// after two warm-up steps.
fn decode_allocations(layers: usize) -> usize {
    let mut b = backend(layers);
    let seqs = 4;
    let tables: Vec<Vec<u32>> = (0..seqs as u32).map(|s| (s * 8..(s + 1) * 8).collect()).collect();
    for (s, t) in tables.iter().enumerate() {
        let prompt: Vec<u32> = (0..10).map(|i| (i * 7 + s as u32) % 96).collect();
        b.execute(&StepPlan::single(prompt, 0, t.clone(), LogitsWanted::None)).unwrap();
    }
    let mut counts = Vec::new();
    for step in 0..9 {
        let mut plan = StepPlan::default();
        for (s, t) in tables.iter().enumerate() {
            let want = if s % 2 == 0 { LogitsWanted::Greedy } else { LogitsWanted::Last };
            plan.push(&[(step * 5 + s as u32) % 96], 10 + step as usize, t.clone(), want);
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        let out = b.execute(&plan).unwrap();
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!((out.rows(), out.greedy.len()), (2, 2));
        if step >= 2 {
            counts.push(after - before);
        }
    }
    counts.sort_unstable();
    counts[counts.len() / 2]
}

#[test]
fn a_decode_step_allocates_nothing_per_layer() {
    let (three, nine) = (decode_allocations(3), decode_allocations(9));
    eprintln!("allocations per decode step: {three} with 3 layers, {nine} with 9");
    assert_eq!(three, nine, "allocations grow with the layers");
    assert!(three <= 12, "{three} allocations per decode step");
}
