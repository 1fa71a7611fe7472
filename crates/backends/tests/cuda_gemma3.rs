//! Greedy Gemma 3 270M on the CUDA backend against the CPU backend: 16 prompts, 32 new tokens each,
//! all sequences batched in every step on both backends. Needs a GPU (skips without one unless
//! `HEARTH_REQUIRE_GPU=1`) and the model.
//!
//! Every CUDA GEMM dtype (bf16, f16, f32) is compared with the CPU backend in both its modes: the
//! serving path (exact weights, activations quantized to 8 bits per block as llama.cpp does) and
//! the exact reference mode (f32 weights and activations). The table of identical continuations is
//! printed; divergences are reported with both sides' top-2 logit margins at the first differing
//! token. The assertion: the CUDA backend's default for GGUF files (f16) equals the exact CPU
//! reference on at least 90% of continuations. (Against the serving CPU path both sides carry
//! rounding noise of similar size — 8-bit activations there, half-precision GEMM inputs here — so
//! near-ties flip more often; that agreement is reported, not asserted.)

use hearth_backends::cuda::{GemmDtype, unavailable_reason};
use hearth_backends::{CpuBackend, CpuOptions, CudaBackend, CudaOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_models::{GgufFile, Tokenizer, store};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
    "Explain how a transistor works in simple terms.",
    "List three prime numbers greater than 100:",
    "Once upon a time, in a small village,",
    "The quick brown fox",
    "Translate to German: Good morning, how are you?",
    "What is 17 multiplied by 23?",
    "The main causes of the French Revolution were",
    "SELECT name, age FROM users WHERE",
    "Photosynthesis is the process by which",
    "My favourite recipe for pancakes:",
    "In 1969, Neil Armstrong",
    "Rust's borrow checker ensures that",
    "The three laws of thermodynamics are",
];
const NEW_TOKENS: usize = 32;

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |b, (j, v)| if *v > row[b] { j } else { b })
}

fn margin(row: &[f32]) -> f32 {
    let a = argmax(row);
    let second = row.iter().enumerate().filter(|(j, _)| *j != a).fold(f32::NEG_INFINITY, |m, (_, v)| m.max(*v));
    row[a] - second
}

/// Greedy continuations of every prompt, batched; also each step's logits rows.
type Run = (Vec<Vec<u32>>, Vec<Vec<Vec<f32>>>);

fn generate(b: &mut dyn Backend, prompts: &[Vec<u32>]) -> Run {
    let bs = 16;
    let per_seq = (64 + NEW_TOKENS).div_ceil(bs);
    let tables: Vec<Vec<u32>> =
        (0..prompts.len()).map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()).collect();
    let mut out = vec![Vec::new(); prompts.len()];
    let mut logits = vec![Vec::new(); prompts.len()];
    let mut plan = StepPlan::default();
    for (p, t) in prompts.iter().zip(&tables) {
        plan.push(p, 0, t.clone(), LogitsWanted::Last);
    }
    for _ in 0..NEW_TOKENS {
        let o = b.execute(&plan).unwrap();
        let mut next = StepPlan::default();
        for (i, row) in o.logits.chunks(o.vocab).enumerate() {
            let t = argmax(row) as u32;
            out[i].push(t);
            logits[i].push(row.to_vec());
            next.push(&[t], plan.seqs[i].context_len, tables[i].clone(), LogitsWanted::Last);
        }
        plan = next;
    }
    (out, logits)
}

/// Identical continuations; prints each divergence.
fn agreement(tok: &Tokenizer, what: &str, (want, want_logits): &Run, (got, got_logits): &Run) -> usize {
    let mut same = 0;
    let mut worst = 0f32;
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        let n = w.iter().zip(g).take_while(|(a, b)| a == b).count();
        for s in 0..(n + 1).min(NEW_TOKENS) {
            let (a, b) = (&want_logits[i][s], &got_logits[i][s]);
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            worst = worst.max(a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale);
        }
        if n == NEW_TOKENS {
            same += 1;
            continue;
        }
        eprintln!(
            "  {what}: prompt {i} ({:?}) diverges at token {n}: {} (top-2 margin {:.3}) vs {} (margin {:.3})\n    {:?}\n    {:?}",
            PROMPTS[i],
            w[n],
            margin(&want_logits[i][n]),
            g[n],
            margin(&got_logits[i][n]),
            tok.decode(w, false).unwrap_or_default(),
            tok.decode(g, false).unwrap_or_default(),
        );
    }
    eprintln!(
        "greedy: {what}: {same}/{} continuations of {NEW_TOKENS} tokens identical; worst logit difference {worst:.2e} of the largest logit",
        want.len()
    );
    same
}

#[test]
fn greedy_continuations_match_cpu() {
    if let Some(why) = unavailable_reason() {
        assert!(std::env::var_os("HEARTH_REQUIRE_GPU").is_none(), "HEARTH_REQUIRE_GPU is set but: {why}");
        eprintln!("skipping: no usable CUDA device ({why})");
        return;
    }
    let g = GgufFile::open(store::default_model_for_tests()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tok.encode(p, true).unwrap()).collect();
    assert!(prompts.iter().all(|p| p.len() <= 64));
    let kv = 256 << 20;
    let cpu = |exact_matmul| {
        let mut b =
            CpuBackend::load(&g, &CpuOptions { kv_cache_bytes: kv, exact_matmul, ..CpuOptions::default() }).unwrap();
        generate(&mut b, &prompts)
    };
    let (serving, exact) = (cpu(false), cpu(true));
    let mut table = Vec::new();
    let mut default_vs_exact = 0;
    for dtype in [GemmDtype::Bf16, GemmDtype::F16, GemmDtype::F32] {
        let opts = CudaOptions { kv_cache_bytes: kv, dtype: Some(dtype), ..CudaOptions::default() };
        let got = generate(&mut CudaBackend::load(&g, &opts).unwrap(), &prompts);
        let a = agreement(&tok, &format!("cuda {dtype:?} vs cpu (8-bit activations)"), &serving, &got);
        let b = agreement(&tok, &format!("cuda {dtype:?} vs cpu exact"), &exact, &got);
        if dtype == GemmDtype::F16 {
            default_vs_exact = b;
        }
        table.push(format!("{dtype:?}: {a}/{n} vs cpu, {b}/{n} vs cpu exact", n = prompts.len()));
    }
    let c = agreement(&tok, "cpu (8-bit activations) vs cpu exact", &exact, &serving);
    table.push(format!("cpu serving path vs cpu exact: {c}/{}", prompts.len()));
    eprintln!("greedy summary: {}", table.join("; "));
    assert!(
        default_vs_exact * 10 >= prompts.len() * 9,
        "CUDA f16 (the GGUF default) matches the exact CPU reference on only {default_vs_exact}/{} continuations",
        prompts.len()
    );
}
