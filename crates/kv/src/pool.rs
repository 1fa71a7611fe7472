//! The block pool and sequence handles. See the crate docs for the states and invariants.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;

pub type BlockId = u32;

/// Who may share cached prefixes: requests share KV blocks only within one scope (a tenant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CacheScope(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("out of KV blocks: need {needed}, {available} available")]
    OutOfBlocks { needed: usize, available: usize },
}

/// Counters for metrics. Prefix queries and hits are in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub free: usize,
    pub used: usize,
    pub cached: usize,
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
}

/// What a full block holds: enough to verify a prefix-cache hit exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BlockKey {
    parent: Option<u64>,
    scope: CacheScope,
    tokens: Vec<u32>,
}

impl BlockKey {
    fn hash64(&self) -> u64 {
        // SipHash with fixed keys: stable within a process, which is all the cache needs.
        let mut h = DefaultHasher::new();
        self.hash_into(&mut h);
        h.finish()
    }

    fn hash_into(&self, h: &mut DefaultHasher) {
        self.parent.hash(h);
        self.scope.hash(h);
        self.tokens.hash(h);
    }
}

#[derive(Debug, Default)]
struct Block {
    refs: u32,
    /// Registered prefix key (full blocks only) and its hash.
    key: Option<(u64, BlockKey)>,
    /// Position in the LRU while cached.
    lru_tick: Option<u64>,
}

#[derive(Debug)]
struct Pool {
    block_size: usize,
    blocks: Vec<Block>,
    free: VecDeque<BlockId>,
    /// Cached blocks by release time (oldest first).
    lru: BTreeMap<u64, BlockId>,
    tick: u64,
    prefix: HashMap<u64, BlockId>,
    query_tokens: u64,
    hit_tokens: u64,
}

impl Pool {
    fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    fn take_block(&mut self) -> BlockId {
        let id = match self.free.pop_front() {
            Some(id) => id,
            None => {
                let (_, id) = self.lru.pop_first().expect("caller checked availability. This is a bug.");
                let b = &mut self.blocks[id as usize];
                b.lru_tick = None;
                if let Some((h, _)) = b.key.take() {
                    self.prefix.remove(&h);
                }
                id
            }
        };
        let b = &mut self.blocks[id as usize];
        debug_assert_eq!(b.refs, 0);
        b.refs = 1;
        id
    }

    /// Adds a reference to a block found in the prefix cache.
    fn revive(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        if let Some(t) = b.lru_tick.take() {
            self.lru.remove(&t);
        }
        b.refs += 1;
    }

    fn release(&mut self, id: BlockId) {
        let b = &mut self.blocks[id as usize];
        assert!(b.refs > 0, "releasing block {id} with no references. This is a bug.");
        b.refs -= 1;
        if b.refs > 0 {
            return;
        }
        if b.key.is_some() {
            self.tick += 1;
            b.lru_tick = Some(self.tick);
            self.lru.insert(self.tick, id);
        } else {
            self.free.push_back(id);
        }
    }

    fn lookup(&self, key: &BlockKey) -> Option<(u64, BlockId)> {
        let h = key.hash64();
        let &id = self.prefix.get(&h)?;
        match &self.blocks[id as usize].key {
            Some((_, k)) if k == key => Some((h, id)),
            _ => None,
        }
    }
}

/// The block manager. Cheap to clone (a handle to the same pool); single-threaded by design: the
/// engine thread owns it and every [`SeqBlocks`].
#[derive(Clone, Debug)]
pub struct KvCache {
    pool: Rc<RefCell<Pool>>,
}

/// A sequence's blocks. Dropping it releases them (cached ones stay revivable until evicted).
#[derive(Debug)]
pub struct SeqBlocks {
    pool: Rc<RefCell<Pool>>,
    scope: CacheScope,
    blocks: Vec<BlockId>,
    /// Hash of each leading full block registered (or found) in the prefix cache.
    hashes: Vec<u64>,
    /// Tokens whose KV came from the prefix cache when the sequence was allocated.
    cached_tokens: usize,
}

impl KvCache {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0 && num_blocks <= u32::MAX as usize, "invalid KV pool geometry");
        let pool = Pool {
            block_size,
            blocks: (0..num_blocks).map(|_| Block::default()).collect(),
            free: (0..num_blocks as BlockId).collect(),
            lru: BTreeMap::new(),
            tick: 0,
            prefix: HashMap::new(),
            query_tokens: 0,
            hit_tokens: 0,
        };
        KvCache { pool: Rc::new(RefCell::new(pool)) }
    }

    pub fn block_size(&self) -> usize {
        self.pool.borrow().block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.borrow().blocks.len()
    }

    /// Blocks that an allocation could use now (free, or cached and evictable).
    pub fn available(&self) -> usize {
        self.pool.borrow().available()
    }

    pub fn stats(&self) -> KvStats {
        let p = self.pool.borrow();
        KvStats {
            free: p.free.len(),
            cached: p.lru.len(),
            used: p.blocks.len() - p.free.len() - p.lru.len(),
            prefix_query_tokens: p.query_tokens,
            prefix_hit_tokens: p.hit_tokens,
        }
    }

    /// Allocates blocks for a prompt, reusing the longest cached prefix of full blocks in `scope`.
    /// At least the last prompt token is always left to compute (its logits are needed).
    pub fn allocate(&self, scope: CacheScope, prompt: &[u32]) -> Result<SeqBlocks, KvError> {
        self.allocate_with(scope, prompt, true)
    }

    /// [`KvCache::allocate`], optionally without reusing cached blocks (when every prompt position
    /// must be computed, e.g. for prompt logprobs). The blocks still register once full.
    pub fn allocate_with(&self, scope: CacheScope, prompt: &[u32], reuse: bool) -> Result<SeqBlocks, KvError> {
        let mut p = self.pool.borrow_mut();
        let bs = p.block_size;
        let reusable = if reuse { prompt.len().saturating_sub(1) / bs } else { 0 };
        let mut hits: Vec<(u64, BlockId)> = Vec::new();
        for chunk in prompt.chunks(bs).take(reusable) {
            let key = BlockKey { parent: hits.last().map(|h| h.0), scope, tokens: chunk.to_vec() };
            match p.lookup(&key) {
                Some(hit) => hits.push(hit),
                None => break,
            }
        }
        let total = prompt.len().div_ceil(bs).max(1);
        let needed = total - hits.len();
        // Reviving a cached hit takes it out of the evictable set, so count those too.
        let hits_in_lru = hits.iter().filter(|(_, id)| p.blocks[*id as usize].refs == 0).count();
        let available = p.available() - hits_in_lru;
        if needed > available {
            return Err(KvError::OutOfBlocks { needed, available });
        }
        if reuse {
            p.query_tokens += prompt.len() as u64;
        }
        p.hit_tokens += (hits.len() * bs) as u64;
        let mut blocks = Vec::with_capacity(total);
        for &(_, id) in &hits {
            p.revive(id);
            blocks.push(id);
        }
        for _ in 0..needed {
            blocks.push(p.take_block());
        }
        Ok(SeqBlocks {
            pool: self.pool.clone(),
            scope,
            cached_tokens: hits.len() * bs,
            hashes: hits.into_iter().map(|h| h.0).collect(),
            blocks,
        })
    }

    /// Checks every invariant of the pool; for tests. `holders` are all live handles.
    #[doc(hidden)]
    pub fn check_invariants(&self, holders: &[&SeqBlocks]) -> Result<(), String> {
        let p = self.pool.borrow();
        let mut refs = vec![0u32; p.blocks.len()];
        for s in holders {
            for &b in &s.blocks {
                refs[b as usize] += 1;
            }
        }
        for (id, b) in p.blocks.iter().enumerate() {
            if b.refs != refs[id] {
                return Err(format!("block {id}: ref count {} but {} holders", b.refs, refs[id]));
            }
            let in_free = p.free.contains(&(id as BlockId));
            let in_lru = b.lru_tick.is_some_and(|t| p.lru.get(&t) == Some(&(id as BlockId)));
            let states = (b.refs > 0) as u8 + in_free as u8 + in_lru as u8;
            if states != 1 {
                return Err(format!("block {id}: refs {} free {in_free} cached {in_lru}", b.refs));
            }
            if in_free && b.key.is_some() {
                return Err(format!("free block {id} still has a prefix key"));
            }
        }
        if p.lru.len() + p.free.len() + refs.iter().filter(|&&r| r > 0).count() != p.blocks.len() {
            return Err("block states do not add up".into());
        }
        for (&h, &id) in &p.prefix {
            match &p.blocks[id as usize].key {
                Some((kh, k)) if *kh == h && k.hash64() == h => {}
                _ => return Err(format!("prefix entry {h:x} points at block {id} with another key")),
            }
        }
        Ok(())
    }
}

impl SeqBlocks {
    /// Physical blocks in logical order (the block table).
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens of the prompt whose KV was found in the prefix cache (need no prefill).
    pub fn cached_tokens(&self) -> usize {
        self.cached_tokens
    }

    pub fn scope(&self) -> CacheScope {
        self.scope
    }

    /// Token slots held.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * self.pool.borrow().block_size
    }

    /// Grows the allocation to hold `tokens` tokens. On failure nothing changes.
    pub fn reserve(&mut self, tokens: usize) -> Result<(), KvError> {
        let mut p = self.pool.borrow_mut();
        let want = tokens.div_ceil(p.block_size);
        let needed = want.saturating_sub(self.blocks.len());
        if needed > p.available() {
            return Err(KvError::OutOfBlocks { needed, available: p.available() });
        }
        for _ in 0..needed {
            let id = p.take_block();
            self.blocks.push(id);
        }
        Ok(())
    }

    /// Registers the sequence's full blocks whose KV has been computed in the prefix cache.
    /// `tokens` are all the sequence's tokens with computed KV (prompt and generated), in order.
    pub fn commit(&mut self, tokens: &[u32]) {
        let mut p = self.pool.borrow_mut();
        let bs = p.block_size;
        let full = (tokens.len() / bs).min(self.blocks.len());
        for i in self.hashes.len()..full {
            let key = BlockKey {
                parent: self.hashes.last().copied(),
                scope: self.scope,
                tokens: tokens[i * bs..(i + 1) * bs].to_vec(),
            };
            let h = key.hash64();
            let id = self.blocks[i];
            // Another sequence may have registered the same prefix first: keep theirs, ours stays
            // private (freed normally), and the chain continues with the shared hash.
            if p.blocks[id as usize].key.is_none() && !p.prefix.contains_key(&h) {
                p.prefix.insert(h, id);
                p.blocks[id as usize].key = Some((h, key));
            }
            self.hashes.push(h);
        }
    }

    /// A second sequence sharing this one's full blocks (e.g. parallel sampling). The partial last
    /// block cannot be shared: the fork gets a fresh block for it, and the returned pair
    /// `(from, to)` says which block's contents the backend must copy.
    pub fn fork(&self, tokens: usize) -> Result<(SeqBlocks, Option<(BlockId, BlockId)>), KvError> {
        let mut p = self.pool.borrow_mut();
        let bs = p.block_size;
        let full = (tokens / bs).min(self.blocks.len());
        let partial = !tokens.is_multiple_of(bs) && full < self.blocks.len();
        if partial && p.available() == 0 {
            return Err(KvError::OutOfBlocks { needed: 1, available: 0 });
        }
        let mut blocks = self.blocks[..full].to_vec();
        for &id in &blocks {
            p.revive(id);
        }
        let copy = partial.then(|| {
            let to = p.take_block();
            blocks.push(to);
            (self.blocks[full], to)
        });
        let fork = SeqBlocks {
            pool: self.pool.clone(),
            scope: self.scope,
            hashes: self.hashes[..self.hashes.len().min(full)].to_vec(),
            cached_tokens: 0,
            blocks,
        };
        Ok((fork, copy))
    }
}

impl Drop for SeqBlocks {
    fn drop(&mut self) {
        let mut p = self.pool.borrow_mut();
        // Release the tail first so a sequence's earlier (more shareable) blocks are evicted last.
        for &id in self.blocks.iter().rev() {
            p.release(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: CacheScope = CacheScope(1);

    #[test]
    fn allocation_frees_on_drop() {
        let kv = KvCache::new(8, 4);
        let a = kv.allocate(S, &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(a.blocks().len(), 2);
        assert_eq!(kv.stats().used, 2);
        drop(a);
        assert_eq!(kv.stats(), KvStats { free: 8, used: 0, cached: 0, prefix_query_tokens: 5, prefix_hit_tokens: 0 });
    }

    #[test]
    fn prefix_is_reused_within_scope_only() {
        let kv = KvCache::new(16, 4);
        let prompt: Vec<u32> = (0..10).collect();
        let mut a = kv.allocate(S, &prompt).unwrap();
        a.commit(&prompt);
        let first = a.blocks().to_vec();
        drop(a);
        assert_eq!(kv.stats().cached, 2); // two full blocks cached, the partial one freed
        let mut longer = prompt.clone();
        longer.extend([50, 51, 52]);
        let b = kv.allocate(S, &longer).unwrap();
        assert_eq!(b.cached_tokens(), 8);
        assert_eq!(&b.blocks()[..2], &first[..2]);
        let other = kv.allocate(CacheScope(2), &longer).unwrap();
        assert_eq!(other.cached_tokens(), 0, "another scope must not see the prefix");
        kv.check_invariants(&[&b, &other]).unwrap();
    }

    #[test]
    fn fully_cached_prompt_still_computes_its_last_token() {
        let kv = KvCache::new(8, 4);
        let prompt: Vec<u32> = (0..8).collect();
        let mut a = kv.allocate(S, &prompt).unwrap();
        a.commit(&prompt);
        drop(a);
        let b = kv.allocate(S, &prompt).unwrap();
        assert_eq!(b.cached_tokens(), 4);
    }

    #[test]
    fn eviction_is_lru_and_only_when_needed() {
        let kv = KvCache::new(4, 2);
        for t in [[1u32, 2, 9], [3, 4, 9]] {
            let mut a = kv.allocate(S, &t).unwrap();
            a.commit(&t[..2]);
        }
        assert_eq!(kv.stats().cached, 2);
        // Two free blocks left: a 2-block prompt must not evict anything.
        let c = kv.allocate(S, &[7, 7, 7]).unwrap();
        assert_eq!(kv.stats().cached, 2);
        // One more block evicts the oldest cached prefix ([1, 2]), keeping [3, 4].
        let d = kv.allocate(S, &[8]).unwrap();
        drop((c, d));
        assert_eq!(kv.allocate(S, &[1, 2, 9]).unwrap().cached_tokens(), 0);
        assert_eq!(kv.allocate(S, &[3, 4, 9]).unwrap().cached_tokens(), 2);
    }

    #[test]
    fn out_of_blocks_changes_nothing() {
        let kv = KvCache::new(2, 4);
        let mut a = kv.allocate(S, &[1; 8]).unwrap();
        assert_eq!(kv.allocate(S, &[2]).unwrap_err(), KvError::OutOfBlocks { needed: 1, available: 0 });
        assert!(a.reserve(9).is_err());
        assert_eq!(a.blocks().len(), 2);
        kv.check_invariants(&[&a]).unwrap();
    }

    #[test]
    fn fork_shares_full_blocks_and_copies_the_tail() {
        let kv = KvCache::new(8, 4);
        let a = kv.allocate(S, &[1, 2, 3, 4, 5, 6]).unwrap();
        let (b, copy) = a.fork(6).unwrap();
        assert_eq!(b.blocks()[0], a.blocks()[0]);
        assert_eq!(copy, Some((a.blocks()[1], b.blocks()[1])));
        kv.check_invariants(&[&a, &b]).unwrap();
        drop(a);
        kv.check_invariants(&[&b]).unwrap();
    }
}
