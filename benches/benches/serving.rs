//! The per-token work outside the model: sampling one row of Gemma 3's 262,144-entry vocabulary,
//! and turning ids into streamed text (incremental detokenizer, stop-string matcher).
//!
//!     cargo bench -p hearth-benches --bench serving
//!
//! `sampler/*`: one `Sampler::sample` on a Zipf-shaped logits row (greedy; temperature with top-k 40,
//! top-p 0.9; greedy with logprobs and 5 alternatives). `detok/256_tokens`: 256 generated ids of
//! the default model streamed through `TextStream` (needs the model; skipped with a message
//! without it), and the same text through `StopMatcher` with two stop strings.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth_engine::{Sampler, SamplingParams};
use hearth_server::text::{StopMatcher, TextStream};

/// A model-like row: Zipf-shaped (logit = -1.1 ln(rank + 1)) over a scrambled order of ids, so
/// top-p 0.9 at temperature 0.8 keeps a few hundred tokens, as with real models.
fn logits(vocab: usize) -> Vec<f32> {
    (0..vocab).map(|i| -1.1 * (((i * 40_503) % vocab) as f32 + 1.0).ln()).collect()
}

fn sampler(c: &mut Criterion) {
    let row = logits(262_144);
    let mut g = c.benchmark_group("sampler");
    g.throughput(Throughput::Elements(1));
    let cases = [
        ("greedy", SamplingParams::default()),
        (
            "temp_topk40_topp09",
            SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, seed: 1, ..Default::default() },
        ),
        ("temp_topp09", SamplingParams { temperature: 0.8, top_p: 0.9, seed: 1, ..Default::default() }),
        ("greedy_logprobs5", SamplingParams { logprobs: true, top_logprobs: 5, ..Default::default() }),
    ];
    for (name, p) in cases {
        let mut s = Sampler::new(p, &[1, 2, 3]).unwrap();
        g.bench_function(name, |b| b.iter(|| black_box(s.sample(black_box(&row)))));
    }
    g.finish();
}

fn detok(c: &mut Criterion) {
    let path = hearth_models::store::ModelStore::new(hearth_models::store::ModelStore::default_dir())
        .verified_path(&hearth_models::store::manifest(hearth_models::store::DEFAULT_MODEL).unwrap());
    let Ok(path) = path else {
        eprintln!("detok benches skipped: the default model is not in the store (hearth models pull)");
        return;
    };
    let tok = hearth_models::Tokenizer::from_gguf(&hearth_models::GgufFile::open(path).unwrap()).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. Über naïve café — 日本語のテキスト 🙂. ".repeat(8);
    let ids: Vec<u32> = tok.encode(&text, false).unwrap().into_iter().take(256).collect();
    let mut g = c.benchmark_group("detok");
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("256_tokens", |b| {
        b.iter(|| {
            let mut s = TextStream::default();
            let mut n = 0;
            for &id in &ids {
                n += s.push(&tok, id).len();
            }
            black_box(n + s.flush(&tok).len())
        })
    });
    let pieces: Vec<String> = {
        let mut s = TextStream::default();
        ids.iter().map(|&id| s.push(&tok, id)).collect()
    };
    g.bench_function("stop_matcher_256_tokens", |b| {
        b.iter(|| {
            let mut m = StopMatcher::new(vec!["\nUser:".into(), "</answer>".into()]);
            let mut n = 0;
            for p in &pieces {
                n += m.push(p).0.len();
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, sampler, detok);
criterion_main!(benches);
