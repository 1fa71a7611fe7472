//! Randomized interleavings of allocate / reserve / commit / fork / drop: the pool never leaks or
//! double-frees a block, ref counts match holders, and cached blocks are reused only within their
//! scope and only for identical prefixes.

use hearth_kv::{CacheScope, KvCache, SeqBlocks};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Allocate a prompt drawn from a small alphabet (so prefixes repeat) in one of two scopes.
    Alloc {
        scope: u64,
        prompt: Vec<u32>,
    },
    /// Grow sequence `i` (mod live count) by `n` tokens.
    Reserve {
        i: usize,
        n: usize,
    },
    /// Register sequence `i`'s computed full blocks.
    Commit {
        i: usize,
    },
    Fork {
        i: usize,
    },
    Drop {
        i: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2u64, prop::collection::vec(0..3u32, 1..20)).prop_map(|(scope, prompt)| Op::Alloc { scope, prompt }),
        2 => (any::<usize>(), 1..10usize).prop_map(|(i, n)| Op::Reserve { i, n }),
        2 => any::<usize>().prop_map(|i| Op::Commit { i }),
        1 => any::<usize>().prop_map(|i| Op::Fork { i }),
        2 => any::<usize>().prop_map(|i| Op::Drop { i }),
    ]
}

struct Live {
    seq: SeqBlocks,
    /// Tokens whose KV this sequence "computed" (prompt, then generated tokens).
    tokens: Vec<u32>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn pool_invariants_hold(ops in prop::collection::vec(op(), 1..80), num_blocks in 4..24usize, bs in 1..5usize) {
        let kv = KvCache::new(num_blocks, bs);
        let mut live: Vec<Live> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { scope, prompt } => {
                    let before = kv.stats();
                    match kv.allocate(CacheScope(scope), &prompt) {
                        Ok(seq) => {
                            let hit = seq.cached_tokens();
                            prop_assert!(hit < prompt.len().max(1));
                            prop_assert_eq!(hit % bs, 0);
                            // Hit counters move by exactly the reused tokens (exactness of hits is
                            // checked by `hits_are_exact_prefixes` and `check_invariants`).
                            prop_assert_eq!(kv.stats().prefix_hit_tokens - before.prefix_hit_tokens, hit as u64);
                            live.push(Live { seq, tokens: prompt });
                        }
                        Err(_) => prop_assert_eq!(kv.stats(), before, "a failed allocation must change nothing"),
                    }
                }
                Op::Reserve { i, n } if !live.is_empty() => {
                    let l = i % live.len();
                    let want = live[l].tokens.len() + n;
                    let blocks_before = live[l].seq.blocks().len();
                    if live[l].seq.reserve(want).is_ok() {
                        prop_assert!(live[l].seq.capacity() >= want);
                        let next = live[l].tokens.len() as u32 % 3;
                        live[l].tokens.extend(std::iter::repeat_n(next, n));
                    } else {
                        prop_assert_eq!(live[l].seq.blocks().len(), blocks_before);
                    }
                }
                Op::Commit { i } if !live.is_empty() => {
                    let l = i % live.len();
                    let Live { seq, tokens } = &mut live[l];
                    seq.commit(tokens);
                }
                Op::Fork { i } if !live.is_empty() => {
                    let l = i % live.len();
                    let n = live[l].tokens.len();
                    if let Ok((seq, _copy)) = live[l].seq.fork(n) {
                        let tokens = live[l].tokens.clone();
                        live.push(Live { seq, tokens });
                    }
                }
                Op::Drop { i } if !live.is_empty() => {
                    let l = i % live.len();
                    live.swap_remove(l);
                }
                _ => {}
            }
            let holders: Vec<&SeqBlocks> = live.iter().map(|l| &l.seq).collect();
            kv.check_invariants(&holders).map_err(TestCaseError::fail)?;
            let s = kv.stats();
            prop_assert_eq!(s.free + s.used + s.cached, num_blocks);
        }
        drop(live);
        let s = kv.stats();
        prop_assert_eq!(s.used, 0, "every block is released once all handles are gone");
        kv.check_invariants(&[]).map_err(TestCaseError::fail)?;
    }

    /// A prompt reuses exactly the committed full blocks of an identical prefix in its own scope.
    #[test]
    fn hits_are_exact_prefixes(a in prop::collection::vec(0..3u32, 1..30), b in prop::collection::vec(0..3u32, 1..30), same_scope: bool, bs in 1..5usize) {
        let kv = KvCache::new(64, bs);
        let mut first = kv.allocate(CacheScope(0), &a).unwrap();
        first.commit(&a);
        let first_blocks = first.blocks().to_vec();
        drop(first);
        let second = kv.allocate(CacheScope(if same_scope { 0 } else { 1 }), &b).unwrap();
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        let expected = if same_scope { (common.min(b.len() - 1) / bs).min(a.len() / bs) * bs } else { 0 };
        prop_assert_eq!(second.cached_tokens(), expected);
        prop_assert_eq!(&second.blocks()[..expected / bs], &first_blocks[..expected / bs]);
    }
}
