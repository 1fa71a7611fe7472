//! Engine-level throughput on Gemma 3 270M: aggregate decode tokens/s with 1, 4, 16 and 32
//! concurrent greedy requests (128-token prompts, 128 new tokens, ignore_eos), against running the
//! same requests one after another. Each configuration runs once per invocation (a whole run takes
//! minutes, so this is a plain harness, not criterion); repeat the invocation to see the spread.
//!
//!     cargo bench -p hearth-benches --bench engine [-- --quick]

use std::time::Instant;

use hearth_benches::{cpu_backend, synthetic_tokens};
use hearth_engine::{Engine, EngineConfig, GenerateRequest};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (prompt_len, new_tokens) = if quick { (32, 16) } else { (128, 128) };
    let levels: &[usize] = if quick { &[1, 4] } else { &[1, 4, 16, 32] };
    let max = *levels.iter().max().unwrap_or(&1);
    let backend = cpu_backend(max * (prompt_len + new_tokens + 16));
    let (h, _thread) = Engine::spawn(backend, EngineConfig { max_num_seqs: 64, ..Default::default() }, None);
    let request = |i: usize| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::greedy(synthetic_tokens(prompt_len, 1000 + i as u32), new_tokens)
    };
    // Warm up (first touches of weights and KV).
    h.submit(request(9999)).unwrap().collect_blocking();

    println!("prompt {prompt_len} tokens, {new_tokens} new tokens per request, greedy, ignore_eos");
    println!("{:>11} {:>14} {:>14} {:>12} {:>12}", "concurrency", "batched tok/s", "sequential", "ratio", "TTFT p50 s");
    for &n in levels {
        let t = Instant::now();
        let streams: Vec<_> = (0..n).map(|i| h.submit(request(i)).unwrap()).collect();
        let mut ttft: Vec<f64> = Vec::new();
        let mut generated = 0;
        for s in streams {
            let (tokens, info) = s.collect_blocking();
            generated += tokens.len();
            ttft.push(info.time_to_first_token.map_or(f64::NAN, |d| d.as_secs_f64()));
        }
        let batched = generated as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut seq_generated = 0;
        for i in 0..n {
            seq_generated += h.submit(request(n + i)).unwrap().collect_blocking().0.len();
        }
        let sequential = seq_generated as f64 / t.elapsed().as_secs_f64();
        ttft.sort_by(f64::total_cmp);
        println!(
            "{n:>11} {batched:>14.1} {sequential:>14.1} {:>11.2}x {:>12.3}",
            batched / sequential,
            ttft[ttft.len() / 2]
        );
    }
}
