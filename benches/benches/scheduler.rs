//! The scheduler's step function and the KV block pool, without a model.
//!
//!     cargo bench -p hearth-benches --bench scheduler
//!
//! `schedule_update/256_running`: one `schedule()` + `update()` with 256 decoding sequences
//! (target: <= 50 µs on the 2-core dev machines). `kv/allocate_free`: allocate a 64-token prompt
//! (4 blocks) and drop it, with the prefix cache active.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hearth_core::RequestId;
use hearth_kv::{CacheScope, KvCache};
use hearth_scheduler::{NewRequest, Scheduler, SchedulerConfig};

/// A scheduler with 256 sequences past their prefill (every step is pure decode).
fn decoding_scheduler() -> Scheduler {
    let cfg = SchedulerConfig {
        max_batch_tokens: 8192,
        max_num_seqs: 256,
        max_waiting: 1024,
        chunked_prefill: true,
        split: None,
    };
    let mut s = Scheduler::new(cfg, KvCache::new(32_768, 16));
    for i in 0..256u64 {
        let prompt: Vec<u32> = (0..128).map(|t| (t * 31 + i as u32 * 7) % 50_000).collect();
        s.add(NewRequest {
            id: RequestId(i),
            prompt,
            max_tokens: 1_500,
            priority: 0,
            scope: CacheScope(0),
            prompt_logits: false,
        })
        .unwrap();
    }
    loop {
        let step = s.schedule();
        let sampled: Vec<Option<u32>> = step.seqs.iter().map(|q| q.sample.then_some(7)).collect();
        s.update(&step, &sampled);
        if step.plan.tokens.len() == 256 && step.seqs.iter().all(|q| q.sample) {
            return s;
        }
    }
}

fn schedule_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("schedule_update");
    g.throughput(Throughput::Elements(256));
    g.bench_function("256_running", |b| {
        // At most 1,000 steps per scheduler so the sequences stay within their reservation.
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut s = decoding_scheduler();
                let n = (iters - done).min(1000);
                let t = Instant::now();
                for _ in 0..n {
                    let step = s.schedule();
                    let sampled: Vec<Option<u32>> = step.seqs.iter().map(|q| q.sample.then_some(11)).collect();
                    s.update(&step, &sampled);
                    black_box(&step);
                }
                total += t.elapsed();
                assert_eq!(s.stats().running, 256);
                done += n;
            }
            total
        })
    });
    g.finish();
}

fn kv(c: &mut Criterion) {
    let kv = KvCache::new(4096, 16);
    let prompt: Vec<u32> = (0..64).collect();
    let mut g = c.benchmark_group("kv");
    g.throughput(Throughput::Elements(4));
    g.bench_function("allocate_free_64_tokens", |b| {
        b.iter(|| {
            let mut seq = kv.allocate(CacheScope(0), &prompt).unwrap();
            seq.commit(&prompt);
            drop(seq);
        })
    });
    g.bench_function("allocate_free_uncached_64_tokens", |b| {
        let mut n = 0u32;
        b.iter(|| {
            n += 1;
            let p: Vec<u32> = (0..64).map(|t| t + n * 64).collect();
            drop(kv.allocate(CacheScope(0), &p).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, schedule_update, kv);
criterion_main!(benches);
