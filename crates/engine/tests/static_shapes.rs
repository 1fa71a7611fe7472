//! `static-cpu` (compiled bucket shapes, slot KV, split prefill/decode scheduling) against the
//! dynamic CPU backend on the same tiny seeded weights: identical logits for a step, identical
//! greedy token streams for random arrival traces served through the engine.

use std::time::Duration;

use hearth_backends::{CpuBackend, CpuOptions, StaticCpuBackend, StaticCpuOptions};
use hearth_core::{Backend, BackendError, FitRule, LogitsWanted, ShapeError, StepPlan};
use hearth_engine::{Engine, EngineConfig, EngineHandle, GenerateRequest, SamplingParams, SubmitError};
use hearth_models::GgufFile;
use hearth_models::candle_core::quantized::GgmlDType;
use hearth_models::testing::{TinySpec, tiny_gemma3_weights, write_tiny_gguf};
use rand::{Rng, SeedableRng};

const SLOTS: usize = 3;
const MAX_LEN: usize = 64;

fn with_gguf<T>(f: impl FnOnce(&GgufFile) -> T) -> T {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spec = TinySpec::default();
    let path = std::env::temp_dir().join(format!("hearth-static-tiny-{}-{n}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 9), GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let out = f(&g);
    std::fs::remove_file(&path).unwrap();
    out
}

fn dynamic() -> CpuBackend {
    with_gguf(|g| {
        CpuBackend::load(
            g,
            &CpuOptions { block_size: 4, kv_cache_bytes: 1 << 20, max_batch_tokens: 256, exact_matmul: false },
        )
        .unwrap()
    })
}

/// Many buckets: prompt lengths 8..64, one or two prompts per prefill, decode batches 1, 2, 4.
fn many_buckets() -> StaticCpuOptions {
    StaticCpuOptions {
        prefill_tokens: vec![8, 16, 32, 64],
        prefill_batches: vec![1, 2],
        decode_batches: vec![1, 2, 4],
        kv_lens: vec![16, 32, 64],
        ..StaticCpuOptions::nxd_default(SLOTS, MAX_LEN)
    }
}

/// One bucket per kind: every prompt padded to 64, every decode at the full 3 rows.
fn one_bucket() -> StaticCpuOptions {
    StaticCpuOptions {
        prefill_tokens: vec![64],
        kv_lens: vec![64],
        fit: FitRule::StrictlyAbove,
        ..StaticCpuOptions::nxd_default(SLOTS, MAX_LEN)
    }
}

fn static_cpu(opts: &StaticCpuOptions) -> StaticCpuBackend {
    let mut b = with_gguf(|g| StaticCpuBackend::load(g, opts).unwrap());
    let w = b.warmup().unwrap();
    assert_eq!(w.steps, b.graph_runs().len(), "warmup runs every graph");
    assert!(b.graph_runs().iter().all(|(_, n)| *n == 1), "{:?}", b.graph_runs());
    b
}

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + salt * 13) % 90 + 1).collect()
}

#[test]
fn a_padded_step_gives_the_dynamic_backends_logits_bit_for_bit() {
    let mut d = dynamic();
    let mut s = static_cpu(&many_buckets());
    let p = prompt(11, 1);
    let dl = d.execute(&StepPlan::single(p.clone(), 0, vec![0, 1, 2], LogitsWanted::Last)).unwrap();
    let sl = s.execute(&StepPlan::single(p, 0, vec![1], LogitsWanted::Last)).unwrap();
    assert_eq!(dl.logits, sl.logits, "prompt of 11 padded to the 16-token bucket");
    let dl = d.execute(&StepPlan::single(vec![5], 11, vec![0, 1, 2], LogitsWanted::Last)).unwrap();
    let sl = s.execute(&StepPlan::single(vec![5], 11, vec![1], LogitsWanted::Last)).unwrap();
    assert_eq!(dl.logits, sl.logits, "decode padded to its bucket");
    assert_eq!(s.padding().real_tokens, 12);
    assert_eq!(s.padding().padded_tokens, 17);
}

/// A step with padding rows (two-row prefill bucket, one prompt; four-row decode bucket, three
/// sequences) leaves every live slot as it was: the next decode of a sequence gives the logits of a
/// run that never saw the padded step.
#[test]
fn padding_never_touches_a_live_slot() {
    let opts = StaticCpuOptions { prefill_batches: vec![2], decode_batches: vec![4], ..many_buckets() };
    let a = prompt(9, 2);
    let b = prompt(5, 3);
    let decode_a = |s: &mut StaticCpuBackend| {
        s.execute(&StepPlan::single(vec![7], 9, vec![0], LogitsWanted::Last)).unwrap().logits
    };
    let mut clean = static_cpu(&opts);
    clean.execute(&StepPlan::single(a.clone(), 0, vec![0], LogitsWanted::Last)).unwrap();
    let want = decode_a(&mut clean);

    let mut s = static_cpu(&opts);
    s.execute(&StepPlan::single(a, 0, vec![0], LogitsWanted::Last)).unwrap();
    // Slot 1: a one-prompt prefill in a two-row bucket (one pad row, 11 pad tokens per row).
    s.execute(&StepPlan::single(b, 0, vec![1], LogitsWanted::Last)).unwrap();
    // Slot 2 decodes alone in a four-row bucket (three pad rows).
    s.execute(&StepPlan::single(vec![3], 4, vec![2], LogitsWanted::Last)).unwrap();
    assert_eq!(decode_a(&mut s), want);
}

#[test]
fn shapes_outside_the_registry_are_errors() {
    let mut s = static_cpu(&StaticCpuOptions { prefill_batches: vec![1], ..many_buckets() });
    let mut two = StepPlan::default();
    two.push(&prompt(4, 1), 0, vec![0], LogitsWanted::Last);
    two.push(&prompt(4, 2), 0, vec![1], LogitsWanted::Last);
    let e = s.execute(&two).unwrap_err();
    assert!(matches!(e, BackendError::Shape(ShapeError::NoBucket { kind: "prefill", rows: 2, .. })), "{e}");
    let mut mixed = StepPlan::default();
    mixed.push(&prompt(4, 1), 0, vec![0], LogitsWanted::Last);
    mixed.push(&[3], 7, vec![1], LogitsWanted::Last);
    assert!(matches!(s.execute(&mixed), Err(BackendError::Shape(ShapeError::Mixed))));
    let chunk = StepPlan::single(prompt(4, 1), 8, vec![0], LogitsWanted::Last);
    assert!(matches!(s.execute(&chunk), Err(BackendError::Shape(ShapeError::Chunked { .. }))));
    let all = StepPlan::single(prompt(4, 1), 0, vec![0], LogitsWanted::All);
    assert!(s.execute(&all).is_err(), "a graph returns one row per sequence");
    let pad_slot = StepPlan::single(prompt(4, 1), 0, vec![SLOTS as u32], LogitsWanted::Last);
    assert!(s.execute(&pad_slot).is_err(), "the padding slot is not for live sequences");
}

fn ids(h: &EngineHandle, r: GenerateRequest) -> hearth_engine::RequestStream {
    h.submit(r).unwrap()
}

/// Random arrival traces (more requests than slots, so slots are reused; prompt lengths and
/// contexts crossing bucket boundaries) give the dynamic backend's greedy tokens, on a
/// many-bucket and a one-bucket grid.
#[test]
fn random_arrival_traces_match_the_dynamic_backend() {
    let (dyn_h, _t) = Engine::spawn(dynamic(), EngineConfig::default(), None);
    for (grid_name, opts) in [("many buckets", many_buckets()), ("one bucket", one_bucket())] {
        let (st_h, _t) = Engine::spawn(static_cpu(&opts), EngineConfig::default(), None);
        for seed in 0..3u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let reqs: Vec<GenerateRequest> = (0..8)
                .map(|i| {
                    let n = rng.random_range(1..48);
                    let max = rng.random_range(1..=(MAX_LEN - n).min(24));
                    GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(n, i + seed as u32 * 8), max) }
                })
                .collect();
            let mut streams = Vec::new();
            for r in &reqs {
                streams.push(ids(&st_h, r.clone()));
                std::thread::sleep(Duration::from_millis(rng.random_range(0..4)));
            }
            let got: Vec<Vec<u32>> =
                streams.into_iter().map(|s| s.collect_blocking().0.iter().map(|t| t.id).collect()).collect();
            let want: Vec<Vec<u32>> = reqs
                .iter()
                .map(|r| ids(&dyn_h, r.clone()).collect_blocking().0.iter().map(|t| t.id).collect())
                .collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{grid_name}, seed {seed}, request {i} (prompt {})", reqs[i].prompt.len());
                assert_eq!(g.len(), reqs[i].max_tokens);
            }
        }
        let stats = st_h.stats().unwrap();
        assert_eq!((stats.kv.used, stats.preemptions), (0, 0), "{grid_name}: slots freed, nothing preempted");
    }
}

#[test]
fn requests_the_backend_cannot_serve_are_refused_by_field() {
    let greedy_only = StaticCpuOptions { device_greedy: true, prefill_tokens: vec![8, 16, 32], ..many_buckets() };
    let (h, _t) = Engine::spawn(static_cpu(&greedy_only), EngineConfig::default(), None);
    let field = |r: GenerateRequest| match h.submit(r) {
        Err(SubmitError::Invalid { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let base = GenerateRequest::greedy(prompt(5, 1), 4);
    let sampled =
        GenerateRequest { sampling: SamplingParams { temperature: 0.7, ..SamplingParams::default() }, ..base.clone() };
    assert_eq!(field(sampled), "temperature");
    assert_eq!(field(GenerateRequest { prompt_logprobs: Some(1), ..base.clone() }), "prompt_logprobs");
    assert_eq!(field(GenerateRequest { min_tokens: 2, ..base.clone() }), "min_tokens");
    assert_eq!(field(GenerateRequest::greedy(prompt(33, 1), 4)), "prompt", "longer than the largest prefill bucket");
    let (tokens, _) = h.submit(GenerateRequest { ignore_eos: true, ..base }).unwrap().collect_blocking();
    assert_eq!(tokens.len(), 4, "plain greedy runs on the device's argmax");
    assert!(matches!(
        h.submit(GenerateRequest::greedy(prompt(60, 1), 10)),
        Err(SubmitError::TooLong { max_context: MAX_LEN, .. })
    ));
}
