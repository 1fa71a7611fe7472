//! hearth-kv: which KV block holds which tokens, and which blocks can be shared.
//!
//! Design after vLLM v1's `KVCacheManager` (blocks behind a returned handle) and TGI's block
//! allocator (blocks freed on drop). The device memory lives in the backend; this crate only does
//! the bookkeeping, on the engine thread, with no locks and no async runtime.
//!
//! - The pool has `num_blocks` blocks of `block_size` token slots. A block is *free* (no holder, no
//!   cached content), *used* (held by one or more sequences), or *cached* (no holder, but its full
//!   content is registered in the prefix cache and can be revived by a later request).
//! - A full block is keyed by `hash(parent key, cache scope, its tokens)`, so a key names a whole
//!   prefix within one scope (tenant): requests share KV only with their own scope. Hits are
//!   verified against the stored tokens, parent and scope, so a 64-bit collision cannot share KV.
//! - [`SeqBlocks`] is a sequence's allocation: dropping it releases its references. Cached blocks
//!   are evicted least-recently-released first, and only when a free block is needed.
//!
//! Invariants (checked by `check_invariants` in tests): every block is in exactly one state; ref
//! counts equal the number of handles holding the block; the prefix map points only at blocks whose
//! stored key matches.

mod pool;

pub use pool::{BlockId, CacheScope, KvCache, KvError, KvStats, SeqBlocks};
