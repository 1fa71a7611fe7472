//! The scheduler driven by a fake backend: no model, synthetic requests. A "model" here emits token
//! `f(request, position)`, so a request's output is fixed whatever the batching or preemption, and
//! any lost or repeated work shows up as a wrong token.

use std::collections::{BTreeMap, HashMap};

use hearth_core::{LogitsWanted, RequestId};
use hearth_kv::{CacheScope, KvCache};
use hearth_scheduler::{AddError, NewRequest, ScheduledStep, Scheduler, SchedulerConfig};
use proptest::prelude::*;

fn fake_token(id: RequestId, position: usize) -> u32 {
    ((id.0 as usize * 31 + position * 7) % 1000) as u32 + 10
}

fn cfg(max_batch_tokens: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch_tokens, max_num_seqs, max_waiting: 1000, chunked_prefill: true, split: None }
}

fn req(id: u64, prompt_len: usize, max_tokens: usize, priority: i32) -> NewRequest {
    NewRequest {
        id: RequestId(id),
        prompt: (0..prompt_len).map(|p| fake_token(RequestId(id + 10_000), p)).collect(),
        max_tokens,
        priority,
        scope: CacheScope(0),
        prompt_logits: false,
    }
}

struct Sim {
    sched: Scheduler,
    max_tokens: HashMap<RequestId, usize>,
    prompt_len: HashMap<RequestId, usize>,
    done: BTreeMap<RequestId, Vec<u32>>,
    steps: Vec<ScheduledStep>,
}

impl Sim {
    fn new(c: SchedulerConfig, blocks: usize, block_size: usize) -> Self {
        Sim {
            sched: Scheduler::new(c, KvCache::new(blocks, block_size)),
            max_tokens: HashMap::new(),
            prompt_len: HashMap::new(),
            done: BTreeMap::new(),
            steps: Vec::new(),
        }
    }

    fn add(&mut self, r: NewRequest) -> Result<(), AddError> {
        let (id, mt, pl) = (r.id, r.max_tokens, r.prompt.len());
        self.sched.add(r)?;
        self.max_tokens.insert(id, mt);
        self.prompt_len.insert(id, pl);
        Ok(())
    }

    /// One engine step; checks the per-step invariants.
    fn step(&mut self, c: &SchedulerConfig) -> bool {
        let step = self.sched.schedule();
        if step.is_empty() {
            return false;
        }
        assert!(step.plan.tokens.len() <= c.max_batch_tokens, "token budget");
        assert!(step.seqs.len() <= c.max_num_seqs, "sequence cap");
        let kv = self.sched.kv();
        step.plan.validate(kv.block_size(), kv.num_blocks(), usize::MAX, usize::MAX).unwrap();
        let mut sampled = Vec::new();
        for (s, p) in step.seqs.iter().zip(&step.plan.seqs) {
            assert_eq!(s.sample, p.logits == LogitsWanted::Last);
            // The tokens fed must be the request's own: prompt, then what the fake model said.
            for (i, &t) in step.plan.tokens[p.start..p.start + p.len].iter().enumerate() {
                let pos = p.first_position() + i;
                let pl = self.prompt_len[&s.id];
                let want = if pos < pl { fake_token(RequestId(s.id.0 + 10_000), pos) } else { fake_token(s.id, pos) };
                assert_eq!(t, want, "{} position {pos}", s.id);
            }
            sampled.push(s.sample.then(|| fake_token(s.id, p.context_len)));
        }
        self.sched.update(&step, &sampled);
        for s in &step.seqs {
            let generated = self.sched.generated(s.id).unwrap().to_vec();
            if generated.len() >= self.max_tokens[&s.id] {
                self.sched.remove(s.id);
                self.done.insert(s.id, generated);
            }
        }
        self.steps.push(step);
        true
    }

    fn run(&mut self, c: &SchedulerConfig, max_steps: usize) {
        for _ in 0..max_steps {
            if !self.step(c) {
                break;
            }
        }
        assert!(!self.sched.has_work(), "all requests must finish within {max_steps} steps");
    }

    fn check_outputs(&self) {
        for (id, out) in &self.done {
            let pl = self.prompt_len[id];
            let want: Vec<u32> = (0..out.len()).map(|i| fake_token(*id, pl + i)).collect();
            assert_eq!(out, &want, "{id} output");
        }
    }
}

#[test]
fn decode_first_and_chunked_prefill() {
    let c = cfg(16, 8);
    let mut sim = Sim::new(c.clone(), 64, 4);
    sim.add(req(1, 3, 20, 0)).unwrap();
    sim.step(&c); // prefill of request 1
    sim.add(req(2, 50, 2, 0)).unwrap(); // a long prompt arrives while 1 decodes
    let mut chunks = 0;
    while sim.step(&c) {
        let last = sim.steps.last().unwrap();
        let has_1 = last.seqs.iter().any(|s| s.id == RequestId(1));
        if let Some(s) = last.seqs.iter().find(|s| s.id == RequestId(2) && !s.sample) {
            chunks += 1;
            assert!(s.tokens <= 15, "prefill chunk leaves room for the decode");
            assert!(has_1 || sim.done.contains_key(&RequestId(1)), "decode runs in every prefill step");
        }
    }
    assert!(chunks >= 3, "a 50-token prompt under a 16-token budget is split ({chunks} chunks)");
    assert_eq!(sim.done.len(), 2);
    sim.check_outputs();
}

#[test]
fn preemption_by_recompute_then_resumption() {
    let c = cfg(64, 8);
    // 12 blocks of 4 tokens: not enough for three requests growing to 8 + 12 = 20 tokens each.
    let mut sim = Sim::new(c.clone(), 12, 4);
    for id in 1..=3 {
        sim.add(req(id, 8, 12, 0)).unwrap();
    }
    sim.run(&c, 500);
    assert!(sim.sched.stats().preemptions > 0, "the pool is too small for all three at once");
    let preempted: Vec<RequestId> = sim.steps.iter().flat_map(|s| s.preempted.clone()).collect();
    assert!(preempted.iter().all(|&id| id == RequestId(3) || id == RequestId(2)), "newest first: {preempted:?}");
    assert_eq!(sim.done.len(), 3);
    sim.check_outputs();
    assert_eq!(sim.sched.stats().kv.used, 0, "no blocks leak");
}

#[test]
fn priorities_then_fcfs() {
    let c = cfg(8, 1); // one sequence at a time makes the order visible
    let mut sim = Sim::new(c.clone(), 64, 4);
    sim.add(req(1, 4, 1, 5)).unwrap();
    sim.add(req(2, 4, 1, 0)).unwrap();
    sim.add(req(3, 4, 1, 5)).unwrap();
    sim.add(req(4, 4, 1, 0)).unwrap();
    sim.run(&c, 100);
    let order: Vec<u64> = sim.steps.iter().map(|s| s.seqs[0].id.0).collect();
    assert_eq!(order, vec![2, 4, 1, 3]);
}

#[test]
fn admission_limit_and_bad_requests() {
    let c = SchedulerConfig { max_waiting: 2, ..cfg(8, 4) };
    let mut s = Scheduler::new(c, KvCache::new(8, 4));
    s.add(req(1, 4, 4, 0)).unwrap();
    s.add(req(2, 4, 4, 0)).unwrap();
    assert_eq!(s.add(req(3, 4, 4, 0)), Err(AddError::QueueFull(2)));
    assert_eq!(s.add(req(4, 30, 10, 0)), Err(AddError::TooLarge { needed: 10, total: 8 }));
    assert_eq!(s.add(req(5, 0, 1, 0)), Err(AddError::EmptyPrompt));
    assert_eq!(s.add(req(1, 4, 4, 0)), Err(AddError::Duplicate(RequestId(1))));
}

#[test]
fn abort_frees_blocks_at_any_point() {
    let c = cfg(8, 4);
    let mut sim = Sim::new(c.clone(), 32, 4);
    sim.add(req(1, 20, 5, 0)).unwrap();
    sim.add(req(2, 4, 5, 0)).unwrap();
    sim.step(&c); // 1 is mid-prefill
    assert!(sim.sched.remove(RequestId(1)));
    assert!(sim.sched.remove(RequestId(2)));
    assert!(!sim.sched.remove(RequestId(2)));
    assert_eq!(sim.sched.stats().kv.used, 0);
    assert!(!sim.sched.has_work());
}

#[test]
fn prefix_cache_skips_shared_prompt_blocks() {
    let c = cfg(64, 4);
    let mut sim = Sim::new(c.clone(), 64, 4);
    sim.add(req(1, 20, 2, 0)).unwrap();
    sim.run(&c, 50);
    let mut r = req(2, 20, 2, 0);
    r.prompt = req(1, 20, 2, 0).prompt; // same prompt text, another request
    sim.sched.add(r).unwrap();
    let step = sim.sched.schedule();
    assert_eq!(step.plan.seqs[0].first_position(), 16, "four cached blocks, last token recomputed");
    assert_eq!(sim.sched.cached_prompt_tokens(RequestId(2)), Some(16));
}

#[test]
fn prompt_logits_compute_the_whole_prompt_with_all_rows() {
    let c = cfg(8, 4);
    let mut sim = Sim::new(c.clone(), 64, 4);
    sim.add(req(1, 20, 2, 0)).unwrap();
    sim.run(&c, 50);
    let mut r = req(2, 20, 2, 0);
    r.prompt = req(1, 20, 2, 0).prompt; // cached, but prompt logits need every position
    r.prompt_logits = true;
    sim.sched.add(r).unwrap();
    let mut starts = Vec::new();
    for _ in 0..3 {
        let step = sim.sched.schedule();
        let (s, plan) = (&step.seqs[0], &step.plan.seqs[0]);
        assert_eq!(plan.logits, LogitsWanted::All, "prompt chunk at {}", s.start);
        assert_eq!(plan.first_position(), s.start);
        starts.push(s.start);
        let sampled: Vec<Option<u32>> = step.seqs.iter().map(|s| s.sample.then_some(7)).collect();
        sim.sched.update(&step, &sampled);
    }
    assert_eq!(starts, [0, 8, 16], "no prefix-cache hit, chunks of the 8-token budget");
    assert_eq!(sim.sched.cached_prompt_tokens(RequestId(2)), Some(0));
    let step = sim.sched.schedule();
    assert_eq!(step.plan.seqs[0].logits, LogitsWanted::Last, "decode steps want the last row only");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random workloads under random limits: every step respects budget and cap, every request
    /// ends with exactly its own tokens, and no block leaks.
    #[test]
    fn random_workloads_finish_correctly(
        reqs in prop::collection::vec((1..40usize, 1..12usize, 0..3i32), 1..25),
        budget in 4..64usize, cap in 1..8usize, blocks in 24..80usize, bs in 1..6usize,
    ) {
        let c = cfg(budget, cap);
        let mut sim = Sim::new(c.clone(), blocks, bs);
        for (i, (pl, mt, pr)) in reqs.into_iter().enumerate() {
            let _ = sim.add(req(i as u64 + 1, pl, mt, pr)); // TooLarge is a fine answer
        }
        sim.run(&c, 5000);
        sim.check_outputs();
        prop_assert_eq!(sim.sched.stats().kv.used, 0);
    }
}
