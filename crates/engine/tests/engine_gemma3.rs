//! The engine on Gemma 3 270M: continuous batching must not change any request's tokens.
//! Prompts are slices of the llama.cpp fixture prompts' token ids (real text), BOS first.

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::FinishReason;
use hearth_engine::{Engine, EngineConfig, EngineHandle, FinishInfo, GenerateRequest, SamplingParams};
use hearth_kv::CacheScope;
use hearth_models::{GgufFile, Tokenizer, store};
use serde::Deserialize;

#[derive(Deserialize)]
struct Prompt {
    tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    prompts: Vec<Prompt>,
}

/// A long stream of real-text token ids (no BOS).
fn text_pool() -> Vec<u32> {
    let fx: Fixture =
        serde_json::from_str(include_str!("../../models/tests/fixtures/gemma3_270m_logits.json")).unwrap();
    fx.prompts.iter().rev().flat_map(|p| p.tokens[1..].to_vec()).collect()
}

fn prompt(pool: &[u32], len: usize, offset: usize) -> Vec<u32> {
    let mut p = vec![2];
    p.extend(pool.iter().cycle().skip(offset).take(len - 1));
    p
}

const KV_TOKEN_BYTES: usize = 2 * 18 * 256 * 2;

fn engine(kv_tokens: usize, cfg: EngineConfig) -> EngineHandle {
    let g = GgufFile::open(store::default_model_for_tests()).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let opts = CpuOptions { kv_cache_bytes: kv_tokens * KV_TOKEN_BYTES, ..CpuOptions::default() };
    let b = CpuBackend::load(&g, &opts).unwrap();
    let eog = tok.eog_tokens().to_vec();
    Engine::spawn(b, EngineConfig { eog_tokens: eog, ..cfg }, None).0
}

fn ids(r: &(Vec<hearth_engine::TokenOut>, FinishInfo)) -> (Vec<u32>, FinishReason) {
    (r.0.iter().map(|t| t.id).collect(), r.1.reason.clone())
}

fn run_alone(h: &EngineHandle, reqs: &[GenerateRequest]) -> Vec<(Vec<u32>, FinishReason)> {
    reqs.iter().map(|r| ids(&h.submit(r.clone()).unwrap().collect_blocking())).collect()
}

fn run_together(h: &EngineHandle, reqs: &[GenerateRequest]) -> Vec<(Vec<u32>, FinishReason)> {
    let streams: Vec<_> = reqs.iter().map(|r| h.submit(r.clone()).unwrap()).collect();
    streams.into_iter().map(|s| ids(&s.collect_blocking())).collect()
}

#[test]
fn thirty_two_concurrent_requests_equal_each_alone() {
    let pool = text_pool();
    let lens = [
        5, 7, 9, 11, 13, 16, 19, 22, 25, 28, 32, 36, 40, 45, 50, 55, // short
        64, 72, 80, 90, 100, 115, 130, 150, 170, 190, 215, 240, // medium
        300, 420, 560, 700, // long, past the 512-token window
    ];
    let reqs: Vec<GenerateRequest> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| GenerateRequest::greedy(prompt(&pool, n, i * 37), 4 + (i * 7) % 20))
        .collect();
    // A budget that forces chunked prefill of the long prompts alongside running decodes.
    let h = engine(16_384, EngineConfig { max_batch_tokens: 256, ..Default::default() });
    let alone = run_alone(&h, &reqs);
    let together = run_together(&h, &reqs);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i} ({} prompt tokens)", lens[i]);
    }
    let stats = h.stats().unwrap();
    println!("32 requests: identical greedy tokens batched and alone over {} steps", stats.steps);
    assert_eq!(stats.kv.used, 0);
}

#[test]
fn forced_preemption_keeps_greedy_outputs() {
    let pool = text_pool();
    let reqs: Vec<GenerateRequest> = (0..8)
        .map(|i| GenerateRequest {
            ignore_eos: true,
            ..GenerateRequest::greedy(prompt(&pool, 100 + 20 * i, 11 * i), 40)
        })
        .collect();
    // Room for about five of the eight at full length: the scheduler must preempt and recompute.
    let h = engine(1_024, EngineConfig::default());
    let alone = run_alone(&h, &reqs);
    let together = run_together(&h, &reqs);
    let preemptions = h.stats().unwrap().preemptions;
    println!("tiny KV (1,024 tokens): {preemptions} preemptions");
    assert!(preemptions > 0, "the KV budget was meant to force preemption");
    assert_eq!(alone, together);
}

#[test]
fn shared_prefix_reuses_blocks() {
    let pool = text_pool();
    let prefix = prompt(&pool, 300, 5);
    let with = |offset| {
        let mut p = prefix.clone();
        p.extend(&pool[offset..offset + 20]);
        GenerateRequest::greedy(p, 8)
    };
    let (a, b) = (with(400), with(700));
    let h = engine(4_096, EngineConfig::default());
    h.submit(a).unwrap().collect_blocking();
    let hits_before = h.stats().unwrap().kv.prefix_hit_tokens;
    let shared = h.submit(b.clone()).unwrap().collect_blocking();
    let hits = h.stats().unwrap().kv.prefix_hit_tokens - hits_before;
    println!("second request: {} of {} prompt tokens from the prefix cache", shared.1.cached_tokens, b.prompt.len());
    assert_eq!(shared.1.cached_tokens, 288, "18 full blocks of the 300-token prefix");
    assert_eq!(hits, 288);
    // The same request in another scope gets nothing from the cache, and the same tokens.
    let other = h.submit(GenerateRequest { scope: CacheScope(7), ..b }).unwrap().collect_blocking();
    assert_eq!(other.1.cached_tokens, 0);
    assert_eq!(ids(&shared), ids(&other));
}

#[test]
fn seeded_sampling_is_reproducible_across_batch_mixes() {
    let pool = text_pool();
    let sampled = |seed| GenerateRequest {
        sampling: SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 50, seed, ..Default::default() },
        ignore_eos: true,
        ..GenerateRequest::greedy(prompt(&pool, 24, 3), 24)
    };
    let h = engine(4_096, EngineConfig::default());
    let alone = run_alone(&h, &[sampled(42)]);
    let mut mix = vec![sampled(42)];
    for i in 0..5 {
        let mut r = sampled(100 + i);
        r.prompt = prompt(&pool, 10 + 30 * i as usize, 50 * i as usize);
        mix.push(r);
    }
    mix.swap(0, 3);
    let together = run_together(&h, &mix);
    assert_eq!(alone[0], together[3]);
    let other_seed = run_alone(&h, &[sampled(43)]);
    assert_ne!(alone[0].0, other_seed[0].0, "a different seed should change a 24-token sample");
}
