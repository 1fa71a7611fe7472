//! The split policy of static-shape backends: one compiled shape per step, never prefill and
//! decode together, one slot per running request, nothing preempted.

use std::collections::{HashMap, HashSet};

use hearth_core::{
    BackendCaps, BucketGrid, FitRule, KvLayout, RequestId, SamplingSupport, ShapePolicy, StepKind, plan_shape,
};
use hearth_kv::{CacheScope, KvCache};
use hearth_scheduler::{AddError, NewRequest, Scheduler, SchedulerConfig};
use proptest::prelude::*;

const SLOTS: usize = 3;
const MAX_LEN: usize = 64;

fn caps(prefill_batches: &[usize], decode_batches: &[usize]) -> BackendCaps {
    let grid = BucketGrid::cross(&[16, 32, 64], prefill_batches, decode_batches, &[32, 64], FitRule::AtLeast).unwrap();
    BackendCaps {
        kv: KvLayout::Slots { num_slots: SLOTS, max_len: MAX_LEN },
        mixed_prefill_decode: false,
        shapes: ShapePolicy::Bucketed(grid),
        chunked_prefill: false,
        prefix_cache: false,
        preemption: false,
        sampling: SamplingSupport::Logits,
        prompt_logits: false,
        ..BackendCaps::dynamic("static-test", KvLayout::Slots { num_slots: SLOTS, max_len: MAX_LEN }, MAX_LEN, 256, 100)
    }
}

fn sched(c: BackendCaps) -> Scheduler {
    let cfg = SchedulerConfig {
        max_batch_tokens: 256,
        max_num_seqs: 64,
        max_waiting: 100,
        chunked_prefill: false,
        split: Some(c),
    };
    Scheduler::new(cfg, KvCache::new(SLOTS, MAX_LEN))
}

fn req(id: u64, prompt_len: usize, max_tokens: usize) -> NewRequest {
    NewRequest {
        id: RequestId(id),
        prompt: (0..prompt_len as u32).map(|p| p % 7 + 1).collect(),
        max_tokens,
        priority: 0,
        scope: CacheScope(0),
        prompt_logits: false,
    }
}

#[test]
fn prefills_one_at_a_time_then_decodes_and_admits_when_a_slot_frees() {
    let c = caps(&[1], &[1, 2, 4]);
    let mut s = sched(c.clone());
    for id in 1..=4 {
        s.add(req(id, 10 + id as usize, 8)).unwrap();
    }
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let step = s.schedule();
        let shape = plan_shape(&c, &step.plan).unwrap();
        kinds.push((shape.kind, step.seqs.iter().map(|q| q.id.0).collect::<Vec<_>>()));
        let sampled: Vec<Option<u32>> = step.seqs.iter().map(|_| Some(5)).collect();
        s.update(&step, &sampled);
    }
    assert_eq!(
        kinds,
        vec![
            (StepKind::Prefill, vec![1]),
            (StepKind::Prefill, vec![2]),
            (StepKind::Prefill, vec![3]),
            (StepKind::Decode, vec![1, 2, 3]), // request 4 waits: every slot is taken
            (StepKind::Decode, vec![1, 2, 3]),
        ]
    );
    assert_eq!(s.stats().waiting, 1);
    assert!(s.remove(RequestId(2)));
    let step = s.schedule();
    assert_eq!(step.seqs.iter().map(|q| q.id.0).collect::<Vec<_>>(), vec![4], "the freed slot goes to request 4");
    assert_eq!(step.plan.seqs[0].first_position(), 0);
}

#[test]
fn several_prefills_share_a_step_when_a_bucket_holds_them() {
    let c = caps(&[1, 2], &[4]);
    let mut s = sched(c.clone());
    for id in 1..=3 {
        s.add(req(id, 12, 4)).unwrap();
    }
    let step = s.schedule();
    assert_eq!(step.seqs.len(), 2, "the largest prefill batch is 2");
    assert_eq!(plan_shape(&c, &step.plan).unwrap().padded_tokens, 32);
}

#[test]
fn prompts_longer_than_the_largest_prefill_bucket_are_refused() {
    let mut s = sched(caps(&[1], &[4]));
    assert_eq!(s.add(req(1, 65, 1)), Err(AddError::PromptTooLong { prompt: 65, max: 64 }));
}

/// What no compiled shape can ever hold is refused (with its slot freed), never left to block the
/// queue or the running batch.
#[test]
fn requests_no_shape_can_hold_are_refused_not_left_blocking() {
    // A step budget below the largest prefill bucket: a 40-token prompt can never be scheduled.
    let c = caps(&[1], &[4]);
    let cfg = SchedulerConfig {
        max_batch_tokens: 32,
        max_num_seqs: 64,
        max_waiting: 100,
        chunked_prefill: false,
        split: Some(c),
    };
    let mut s = Scheduler::new(cfg, KvCache::new(SLOTS, MAX_LEN));
    s.add(req(1, 40, 4)).unwrap();
    s.add(req(2, 10, 4)).unwrap();
    let step = s.schedule();
    assert_eq!(step.refused.len(), 1);
    assert_eq!(step.refused[0].0, RequestId(1));
    assert!(step.refused[0].1.contains("cannot run this prompt"), "{}", step.refused[0].1);
    assert_eq!(step.seqs.iter().map(|q| q.id.0).collect::<Vec<_>>(), vec![2], "the next request is served");

    // Decode buckets shorter than a slot: a sequence that outgrows the largest is refused.
    let grid = BucketGrid::cross(&[16, 32], &[1], &[1, 2], &[32], FitRule::AtLeast).unwrap();
    let short = BackendCaps { shapes: ShapePolicy::Bucketed(grid), ..caps(&[1], &[4]) };
    let mut s = sched(short);
    s.add(req(1, 30, 10)).unwrap();
    let mut refused = Vec::new();
    for _ in 0..8 {
        let step = s.schedule();
        refused.extend(step.refused.iter().map(|(id, _)| *id));
        let sampled: Vec<Option<u32>> = step.seqs.iter().map(|_| Some(5)).collect();
        s.update(&step, &sampled);
    }
    assert_eq!(refused, vec![RequestId(1)], "refused when its context passes 32");
    assert_eq!((s.stats().running, s.stats().kv.used), (0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Random arrivals: every step fits a compiled shape, no step mixes, running requests hold
    /// distinct slots, every request ends with exactly its tokens, nothing is preempted.
    #[test]
    fn every_step_fits_a_shape(
        reqs in proptest::collection::vec((1usize..40, 1usize..20, 0usize..4), 1..12),
        prefill_batches in prop_oneof![Just(vec![1]), Just(vec![1, 2])],
        decode_batches in prop_oneof![Just(vec![4]), Just(vec![1, 2, 4]), Just(vec![3])],
    ) {
        let c = caps(&prefill_batches, &decode_batches);
        let mut s = sched(c.clone());
        let mut arrivals: Vec<(usize, u64, usize, usize)> =
            reqs.iter().enumerate().map(|(i, &(p, m, at))| (at, i as u64 + 1, p, m)).collect();
        arrivals.sort();
        let mut want: HashMap<RequestId, usize> = HashMap::new();
        let mut got: HashMap<RequestId, usize> = HashMap::new();
        for step_no in 0..1000 {
            for &(at, id, p, m) in &arrivals {
                if at == step_no {
                    s.add(req(id, p, m)).unwrap();
                    want.insert(RequestId(id), m);
                }
            }
            if !s.has_work() && step_no > 4 {
                break;
            }
            let step = s.schedule();
            if step.is_empty() {
                continue;
            }
            let shape = plan_shape(&c, &step.plan).unwrap();
            prop_assert!(shape.kind != StepKind::Mixed);
            let slots: HashSet<u32> = step.plan.seqs.iter().map(|q| q.block_table[0]).collect();
            prop_assert_eq!(slots.len(), step.seqs.len());
            prop_assert!(slots.iter().all(|&b| (b as usize) < SLOTS));
            let sampled: Vec<Option<u32>> = step.seqs.iter().map(|q| q.sample.then_some(9)).collect();
            s.update(&step, &sampled);
            for q in &step.seqs {
                let n = got.entry(q.id).or_default();
                *n += usize::from(q.sample);
                if *n == want[&q.id] {
                    s.remove(q.id);
                }
            }
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(s.stats().preemptions, 0);
        prop_assert_eq!(s.stats().kv.used, 0);
    }
}
