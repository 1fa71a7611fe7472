//! The engine thread on a tiny seeded model: lifecycle, limits, cancellation, coalescing.

use std::time::{Duration, Instant};

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::FinishReason;
use hearth_engine::{Engine, EngineConfig, EngineEvent, EngineHandle, GenerateRequest, SamplingParams, SubmitError};
use hearth_models::GgufFile;
use hearth_models::candle_core::quantized::GgmlDType;
use hearth_models::testing::{TinySpec, tiny_gemma3_weights, write_tiny_gguf};

fn engine(cfg: EngineConfig, kv_bytes: usize) -> EngineHandle {
    Engine::spawn(backend(kv_bytes), cfg, None).0
}

fn backend(kv_bytes: usize) -> CpuBackend {
    let spec = TinySpec::default();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("hearth-engine-tiny-{}-{n}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 9), GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let b = CpuBackend::load(
        &g,
        &CpuOptions { block_size: 4, kv_cache_bytes: kv_bytes, max_batch_tokens: 256, exact_matmul: false },
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    b
}

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + salt * 13) % 90 + 1).collect()
}

/// Per-token KV bytes of the tiny model: 3 layers × 2 KV heads × 32 × (K+V) × f16.
const TOK: usize = 3 * 2 * 32 * 2 * 2;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn batched_requests_equal_alone_and_blocks_are_freed() {
    let h = engine(EngineConfig::default(), 4096 * TOK);
    let reqs: Vec<GenerateRequest> = (0..12)
        .map(|i| GenerateRequest {
            ignore_eos: true,
            ..GenerateRequest::greedy(prompt(3 + i * 5, i as u32), 4 + i % 5)
        })
        .collect();
    let alone: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap().collect_blocking()).collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    let together: Vec<_> = streams.into_iter().map(|s| s.collect_blocking()).collect();
    for (i, ((ta, fa), (tb, fb))) in alone.iter().zip(&together).enumerate() {
        let ids = |t: &Vec<hearth_engine::TokenOut>| t.iter().map(|x| x.id).collect::<Vec<_>>();
        assert_eq!(ids(ta), ids(tb), "request {i}");
        assert_eq!(fa.reason, FinishReason::Length);
        assert_eq!(fb.generated_tokens, reqs[i].max_tokens);
    }
    wait_until("blocks to be released", || h.stats().unwrap().kv.used == 0);
}

#[test]
fn invalid_requests_are_refused_with_the_field() {
    let h = engine(EngineConfig::default(), 256 * TOK);
    let bad = |r: GenerateRequest| h.submit(r).unwrap_err();
    assert!(matches!(bad(GenerateRequest::greedy(vec![], 4)), SubmitError::Invalid { field: "prompt", .. }));
    assert!(matches!(bad(GenerateRequest::greedy(vec![1000], 4)), SubmitError::Invalid { field: "prompt", .. }));
    assert!(matches!(bad(GenerateRequest::greedy(vec![1], 0)), SubmitError::Invalid { field: "max_tokens", .. }));
    let hot = GenerateRequest {
        sampling: SamplingParams { top_p: 2.0, ..Default::default() },
        ..GenerateRequest::greedy(vec![1], 4)
    };
    assert!(matches!(bad(hot), SubmitError::Invalid { field: "top_p", .. }));
    assert!(matches!(bad(GenerateRequest::greedy(vec![1; 200], 100)), SubmitError::TooLong { .. }));
    // Still serving.
    let (t, f) = h.submit(GenerateRequest::greedy(vec![1, 2, 3], 2)).unwrap().collect_blocking();
    assert!(!t.is_empty() || matches!(f.reason, FinishReason::Stop { .. }));
}

#[test]
fn full_queue_is_refused_at_once() {
    let cfg = EngineConfig { max_waiting: 3, max_num_seqs: 1, ..Default::default() };
    let h = engine(cfg, 4096 * TOK);
    let long = GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(8, 1), 200) };
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let t = Instant::now();
        match h.submit(long.clone()) {
            Ok(s) => streams.push(s),
            Err(SubmitError::QueueFull(3)) => {
                refused += 1;
                assert!(t.elapsed() < Duration::from_millis(50), "refusal is immediate");
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 5, "only {refused} refused");
    for s in streams {
        h.abort(s.id);
        let (_, f) = s.collect_blocking();
        assert_eq!(f.reason, FinishReason::Aborted);
    }
    wait_until("queue to drain", || {
        let s = h.stats().unwrap();
        s.kv.used == 0 && s.waiting == 0 && s.running == 0
    });
}

#[test]
fn dropped_stream_aborts_and_frees_blocks_while_others_continue() {
    let h = engine(EngineConfig { event_capacity: 1, ..Default::default() }, 4096 * TOK);
    let long = GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(30, 2), 200) };
    let mut gone = h.submit(long.clone()).unwrap();
    let other = h.submit(GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(10, 3), 40) }).unwrap();
    assert!(matches!(gone.events.blocking_recv(), Some(EngineEvent::Tokens(_))));
    drop(gone);
    let (tokens, f) = other.collect_blocking(); // capacity 1: tokens arrive coalesced
    assert_eq!(tokens.len(), 40);
    assert_eq!(f.reason, FinishReason::Length);
    wait_until("blocks of the dropped request to be freed", || h.stats().unwrap().kv.used == 0);
}

/// A backend that fails one chosen step.
struct Flaky {
    inner: CpuBackend,
    steps: usize,
    fail_at: usize,
}

impl hearth_core::Backend for Flaky {
    fn caps(&self) -> &hearth_core::BackendCaps {
        self.inner.caps()
    }
    fn warmup(&mut self) -> Result<hearth_core::WarmupReport, hearth_core::BackendError> {
        self.inner.warmup()
    }
    fn execute(&mut self, step: &hearth_core::StepPlan) -> Result<hearth_core::StepOutput, hearth_core::BackendError> {
        self.steps += 1;
        if self.steps == self.fail_at {
            return Err(hearth_core::BackendError::Internal("injected fault".into()));
        }
        self.inner.execute(step)
    }
}

#[test]
fn backend_fault_fails_that_step_only_and_frees_blocks() {
    let spec = TinySpec::default();
    let path = std::env::temp_dir().join(format!("hearth-engine-flaky-{}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 9), GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let inner = CpuBackend::load(
        &g,
        &CpuOptions { block_size: 4, kv_cache_bytes: 1024 * TOK, max_batch_tokens: 256, exact_matmul: false },
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let (h, _t) = Engine::spawn(Flaky { inner, steps: 0, fail_at: 3 }, EngineConfig::default(), None);
    let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(6, 4), 10) };
    let (_, f) = h.submit(req.clone()).unwrap().collect_blocking();
    assert!(matches!(f.reason, FinishReason::Error(ref e) if e.contains("injected fault")), "{:?}", f.reason);
    wait_until("blocks of the failed request to be freed", || h.stats().unwrap().kv.used == 0);
    let (tokens, f) = h.submit(req).unwrap().collect_blocking();
    assert_eq!((tokens.len(), f.reason), (10, FinishReason::Length), "the engine keeps serving");
}

/// A backend that records what each sampled sequence asked for.
struct Recording {
    inner: CpuBackend,
    wanted: std::sync::Arc<std::sync::Mutex<Vec<hearth_core::LogitsWanted>>>,
}

impl hearth_core::Backend for Recording {
    fn caps(&self) -> &hearth_core::BackendCaps {
        self.inner.caps()
    }
    fn warmup(&mut self) -> Result<hearth_core::WarmupReport, hearth_core::BackendError> {
        self.inner.warmup()
    }
    fn execute(&mut self, step: &hearth_core::StepPlan) -> Result<hearth_core::StepOutput, hearth_core::BackendError> {
        let mut w = self.wanted.lock().unwrap();
        w.extend(step.seqs.iter().map(|s| s.logits).filter(|l| *l != hearth_core::LogitsWanted::None));
        drop(w);
        self.inner.execute(step)
    }
}

/// The engine asks the backend for the argmax only (`Greedy`) for plain-greedy requests past their
/// min_tokens, and for the logits row otherwise (sampling, logprobs, penalties, min_tokens); the
/// tokens are those of an all-logits run.
#[test]
fn plain_greedy_requests_take_the_argmax_from_the_backend() {
    let spec = TinySpec::default();
    let path = std::env::temp_dir().join(format!("hearth-engine-greedy-{}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 9), GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let opts = CpuOptions { block_size: 4, kv_cache_bytes: 1024 * TOK, max_batch_tokens: 256, exact_matmul: false };
    let inner = CpuBackend::load(&g, &opts).unwrap();
    let reference = CpuBackend::load(&g, &opts).unwrap();
    std::fs::remove_file(&path).unwrap();
    let wanted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, _t) = Engine::spawn(Recording { inner, wanted: wanted.clone() }, EngineConfig::default(), None);
    let greedy = GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(prompt(7, 2), 6) };
    let (tokens, _) = h.submit(greedy.clone()).unwrap().collect_blocking();
    {
        let w = wanted.lock().unwrap();
        assert_eq!(w.len(), 6, "one sampled row per generated token");
        assert!(w.iter().all(|l| *l == hearth_core::LogitsWanted::Greedy), "{w:?}");
    }
    // The same request through a backend that always returns rows (the engine on the plain CPU
    // backend decides per request; here every request wants logits because it asks for logprobs).
    let (h2, _t2) = Engine::spawn(reference, EngineConfig::default(), None);
    let with_logprobs =
        GenerateRequest { sampling: SamplingParams { logprobs: true, ..SamplingParams::default() }, ..greedy.clone() };
    let (tokens_lp, _) = h2.submit(with_logprobs.clone()).unwrap().collect_blocking();
    let ids = |t: &[hearth_engine::TokenOut]| t.iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(&tokens), ids(&tokens_lp), "argmax on the backend == argmax of the row");
    assert!(tokens_lp.iter().all(|t| t.logprob.is_some()));

    wanted.lock().unwrap().clear();
    let _ = h.submit(with_logprobs).unwrap().collect_blocking();
    let sampled = GenerateRequest {
        sampling: SamplingParams { temperature: 0.7, seed: 3, ..SamplingParams::default() },
        ..greedy.clone()
    };
    let _ = h.submit(sampled).unwrap().collect_blocking();
    let min_tokens = GenerateRequest { min_tokens: 3, ..greedy };
    let _ = h.submit(min_tokens).unwrap().collect_blocking();
    let w = wanted.lock().unwrap();
    let (greedy_rows, last_rows) = (
        w.iter().filter(|l| **l == hearth_core::LogitsWanted::Greedy).count(),
        w.iter().filter(|l| **l == hearth_core::LogitsWanted::Last).count(),
    );
    // logprobs: 6 Last; sampling: 6 Last; min_tokens 3: 3 Last then 3 Greedy.
    assert_eq!((last_rows, greedy_rows), (15, 3), "{w:?}");
}

#[test]
fn prompt_logprobs_score_every_prompt_token_across_chunks() {
    use hearth_core::{Backend, LogitsWanted, StepPlan};
    let h = engine(EngineConfig { max_batch_tokens: 8, ..EngineConfig::default() }, 1024 * TOK);
    let p = prompt(23, 5);
    // Put the prompt in the prefix cache first: prompt logprobs must still compute every position.
    let (plain, _) = h
        .submit(GenerateRequest { ignore_eos: true, ..GenerateRequest::greedy(p.clone(), 3) })
        .unwrap()
        .collect_blocking();
    let req = GenerateRequest { prompt_logprobs: Some(3), ignore_eos: true, ..GenerateRequest::greedy(p.clone(), 3) };
    let mut s = h.submit(req).unwrap();
    let (mut scores, mut tokens) = (Vec::new(), Vec::new());
    let info = loop {
        match s.events.blocking_recv().unwrap() {
            EngineEvent::PromptLogprobs(t) => {
                assert!(tokens.is_empty(), "prompt logprobs come before generated tokens");
                scores.extend(t);
            }
            EngineEvent::Tokens(t) => tokens.extend(t),
            EngineEvent::Finished(f) => break f,
        }
    };
    assert_eq!(info.cached_tokens, 0);
    let ids = |t: &[hearth_engine::TokenOut]| t.iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(ids(&tokens), ids(&plain), "prompt logprobs do not change the generation");
    assert_eq!(ids(&scores), p[1..].to_vec());

    // Reference: the same weights, the whole prompt in one step with every row.
    let mut b = backend(1024 * TOK);
    let out = b.execute(&StepPlan::single(p.clone(), 0, (0..6).collect(), LogitsWanted::All)).unwrap();
    for (pos, s) in scores.iter().enumerate() {
        let row = out.row(pos);
        let want = hearth_engine::sampler::logprobs_of(row, &[p[pos + 1]])[0];
        assert!((s.logprob.unwrap() - want).abs() < 1e-4, "position {pos}: {} vs {want}", s.logprob.unwrap());
        assert_eq!(s.top.len(), 3);
        let best = hearth_engine::sampler::top_n(row, 3);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), best, "position {pos}");
        assert!(s.top[0].1 >= s.logprob.unwrap() - 1e-6, "the best alternative is at least as likely");
    }
}

#[test]
fn device_greedy_rows_and_logits_rows_mix_in_one_step() {
    let h = engine(EngineConfig::default(), 1024 * TOK);
    let reqs: Vec<GenerateRequest> = (0..6)
        .map(|i| GenerateRequest {
            ignore_eos: true,
            // Odd requests want logprobs, so they need rows; even ones are plain greedy.
            sampling: SamplingParams { logprobs: i % 2 == 1, ..Default::default() },
            prompt_logprobs: (i == 3).then_some(1),
            ..GenerateRequest::greedy(prompt(4 + 3 * i, i as u32), 5)
        })
        .collect();
    let alone: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap().collect_blocking().0).collect();
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (t, _) = s.collect_blocking();
        assert_eq!(t, alone[i], "request {i}");
        assert_eq!(t[0].logprob.is_some(), i % 2 == 1);
    }
}
