//! [`Ops`] on the CPU: quantized matmuls through our batched kernels ([`super::qgemm`]), the rest
//! in plain Rust over f32 rows.
//!
//! Numerics follow llama.cpp where it matters for agreement with our oracle: RMS norms accumulate
//! in f64, the KV cache is f16, attention rounds q to f16 before the dot products (as ggml's CPU
//! flash attention does), everything else is f32.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use hearth_core::{BackendError, StepPlan};
use hearth_models::ops::{AttnParams, KvSpec, OpResult, Ops, RopeParams};
use rayon::prelude::*;

use super::attention::{self, AttnScratch, LayerKv};
use super::fastmath;
use super::qgemm::{self, Isa, PackedMatrix, QAct};

/// Activations: `rows × cols` f32, row-major. Those made by [`CpuOps`] give their buffer back to
/// its pool when dropped, so the next op (or the next step) reuses it instead of allocating.
#[derive(Clone, Debug)]
pub struct CpuAct {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pool: Option<Arc<BufferPool>>,
}

impl CpuAct {
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "activation shape mismatch. This is a bug.");
        CpuAct { data, rows, cols, pool: None }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// The values, taken out of the pool's reach (they leave with the step's output).
    pub fn into_data(mut self) -> Vec<f32> {
        self.pool = None;
        std::mem::take(&mut self.data)
    }
}

impl PartialEq for CpuAct {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.cols, &self.data) == (other.rows, other.cols, &other.data)
    }
}

impl Drop for CpuAct {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.data));
        }
    }
}

/// Activation buffers freed during a step, handed out again by the ops that follow: after the
/// first step of a shape, a forward pass allocates nothing for its activations. Holds at most
/// [`POOL_BUFFERS`] buffers (a step has about ten alive at once).
#[derive(Debug, Default)]
pub struct BufferPool(Mutex<Vec<Vec<f32>>>);

const POOL_BUFFERS: usize = 32;

impl BufferPool {
    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        // A panic while holding the lock leaves only a list of buffers behind: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `n` zeros, in the smallest pooled buffer that holds them (a new one if none does).
    pub fn take(&self, n: usize) -> Vec<f32> {
        self.take_as(n, true)
    }

    /// `n` values for a caller that writes every one of them: a reused buffer keeps its old
    /// values instead of being zeroed first (the logits of a batch of 32 are 33 MB).
    pub fn take_overwritten(&self, n: usize) -> Vec<f32> {
        self.take_as(n, false)
    }

    fn take_as(&self, n: usize, zeroed: bool) -> Vec<f32> {
        let mut free = self.free();
        let best = (0..free.len()).filter(|&i| free[i].capacity() >= n).min_by_key(|&i| free[i].capacity());
        let Some(i) = best else {
            // Fresh zeroed memory (large buffers come straight from the OS, already zero).
            return vec![0f32; n];
        };
        let mut v = free.swap_remove(i);
        drop(free);
        if zeroed {
            v.clear();
        }
        v.truncate(n);
        v.resize(n, 0.0);
        v
    }

    /// Keeps `v` for a later [`BufferPool::take`]; when full, keeps the larger buffers.
    pub fn give(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let mut free = self.free();
        if free.len() < POOL_BUFFERS {
            free.push(v);
        } else if let Some(i) = (0..free.len()).min_by_key(|&i| free[i].capacity())
            && free[i].capacity() < v.capacity()
        {
            free[i] = v;
        }
    }

    /// Buffers held now.
    pub fn len(&self) -> usize {
        self.free().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A weight matrix `[out, in]`: quantized formats repacked for the integer kernels, float formats
/// (F32, F16, BF16: small or test models) held as f32.
pub struct CpuMatrix {
    /// The tensor's name without layer number and suffix (`attn_q`, `token_embd`): profile key.
    label: String,
    data: MatrixData,
}

enum MatrixData {
    Packed(PackedMatrix),
    Float { w: Vec<f32>, out: usize, k: usize },
}

impl CpuMatrix {
    fn out(&self) -> usize {
        match &self.data {
            MatrixData::Packed(p) => p.out(),
            MatrixData::Float { out, .. } => *out,
        }
    }

    fn k(&self) -> usize {
        match &self.data {
            MatrixData::Packed(p) => p.k(),
            MatrixData::Float { k, .. } => *k,
        }
    }

    fn row(&self, col: usize, y: &mut [f32]) {
        match &self.data {
            MatrixData::Packed(p) => p.dequantize_row(col, y),
            MatrixData::Float { w, k, .. } => y.copy_from_slice(&w[col * k..(col + 1) * k]),
        }
    }
}

/// Wall time per operation over the steps run while profiling was on: `(op, total, calls)`,
/// matmuls keyed by weight (`matmul attn_q`, `matmul token_embd` is the output head).
pub type OpProfile = Vec<(String, Duration, u64)>;

/// A RoPE table: (base, scale, head_dim) bits and the frequency divisors it was built for, the
/// positions it holds, cos|sin rows, frequencies.
struct RopeEntry {
    key: (u32, u32, usize),
    factors: Option<Vec<f32>>,
    positions: Vec<u32>,
    table: Arc<Vec<f32>>,
    inv_freq: Vec<f64>,
}

pub struct CpuOps {
    kv: Vec<LayerKv>,
    block_size: usize,
    num_blocks: usize,
    isa: Isa,
    /// Quantized activations of the current matmul, reused across calls.
    qact: QAct,
    attn: AttnScratch,
    /// RoPE tables by (base, scale, head_dim), with the positions they were computed for.
    rope_cache: Vec<RopeEntry>,
    /// Per-op wall time while profiling is on.
    profile: Option<BTreeMap<String, (Duration, u64)>>,
    /// Load matrices as f32 (see [`CpuOps::set_exact_matmul`]).
    exact_matmul: bool,
    /// Activation buffers for reuse.
    pool: Arc<BufferPool>,
}

/// Elementwise work smaller than this many elements runs in one task: splitting it over the pool
/// costs more than it saves (a decode step at batch 1 has ~200 such ops).
const INLINE_ELEMENTS: usize = 16 * 1024;

/// The fewest chunks of `chunk_len` elements worth a task of their own.
fn inline_chunks(chunk_len: usize) -> usize {
    (INLINE_ELEMENTS / chunk_len.max(1)).max(1)
}

fn shape_err(what: &str, detail: String) -> BackendError {
    BackendError::Internal(format!("{what}: {detail}. This is a bug."))
}

impl CpuOps {
    pub fn new(spec: KvSpec, block_size: usize, num_blocks: usize) -> Self {
        let kv = (0..spec.layers).map(|_| LayerKv::new(spec, block_size, num_blocks)).collect();
        CpuOps {
            kv,
            block_size,
            num_blocks,
            isa: Isa::detect(),
            qact: QAct::default(),
            attn: AttnScratch::default(),
            rope_cache: Vec::new(),
            profile: None,
            exact_matmul: false,
            pool: Arc::default(),
        }
    }

    /// A buffer for an op's output that the op writes in full (a reused one is not zeroed first).
    fn output(&self, n: usize) -> Vec<f32> {
        self.pool.take_overwritten(n)
    }

    /// `act(gate) * up`, elementwise: the gated activations of an MLP.
    fn gated(&mut self, op: &str, gate: &CpuAct, up: &CpuAct, act: impl Fn(f32) -> f32 + Sync) -> OpResult<CpuAct> {
        let t0 = self.start();
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(shape_err(op, format!("{}x{} vs {}x{}", gate.rows, gate.cols, up.rows, up.cols)));
        }
        let mut data = self.output(gate.data.len());
        let chunk = 4096;
        data.par_chunks_mut(chunk)
            .zip(gate.data.par_chunks(chunk))
            .zip(up.data.par_chunks(chunk))
            .with_min_len(inline_chunks(chunk))
            .for_each(|((o, g), u)| {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = act(g) * u;
                }
            });
        self.record(t0, || op.into());
        Ok(self.act(data, gate.rows, gate.cols))
    }

    /// An activation whose buffer goes back to the pool when dropped.
    fn act(&self, data: Vec<f32>, rows: usize, cols: usize) -> CpuAct {
        let mut a = CpuAct::new(data, rows, cols);
        a.pool = Some(self.pool.clone());
        a
    }

    /// The activation buffer pool (tests and diagnostics).
    pub fn buffer_pool(&self) -> &BufferPool {
        &self.pool
    }

    /// Matrices loaded from now on are dequantized to f32 and multiplied exactly (a reference mode).
    pub fn set_exact_matmul(&mut self, on: bool) {
        self.exact_matmul = on;
    }

    /// Starts (or, with `false`, stops) recording wall time per op; see [`CpuOps::take_profile`].
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(BTreeMap::new);
    }

    /// The per-op times recorded since profiling was switched on or last taken.
    pub fn take_profile(&mut self) -> OpProfile {
        let Some(p) = self.profile.as_mut() else { return Vec::new() };
        std::mem::take(p).into_iter().map(|(k, (d, n))| (k, d, n)).collect()
    }

    /// cos and sin (`[rows][cos half | sin half]`) for these positions; q and k of a layer, and
    /// every layer with the same RoPE, share one computation per step. The table's buffer is
    /// reused from step to step.
    fn rope_table(&mut self, positions: &[u32], p: &RopeParams<'_>) -> Arc<Vec<f32>> {
        let key = (p.base.to_bits(), p.position_scale.to_bits(), p.head_dim);
        let (d, half) = (p.head_dim, p.head_dim / 2);
        let i = match self.rope_cache.iter().position(|e| e.key == key && e.factors.as_deref() == p.freq_factors) {
            Some(i) if self.rope_cache[i].positions[..] == *positions => return self.rope_cache[i].table.clone(),
            Some(i) => i,
            None => {
                let inv_freq = (0..half)
                    .map(|i| {
                        let f = (p.base as f64).powf(-2.0 * i as f64 / d as f64);
                        p.freq_factors.map_or(f, |x| f / x[i] as f64)
                    })
                    .collect();
                let factors = p.freq_factors.map(<[f32]>::to_vec);
                self.rope_cache.push(RopeEntry {
                    key,
                    factors,
                    positions: Vec::new(),
                    table: Arc::default(),
                    inv_freq,
                });
                self.rope_cache.len() - 1
            }
        };
        let e = &mut self.rope_cache[i];
        e.positions.clear();
        e.positions.extend_from_slice(positions);
        if Arc::get_mut(&mut e.table).is_none() {
            e.table = Arc::default(); // an op still holds the old one
        }
        let table = Arc::get_mut(&mut e.table).expect("a new Arc has one owner. This is a bug.");
        table.clear();
        table.resize(positions.len() * d, 0.0);
        let (inv_freq, scale) = (&e.inv_freq, p.position_scale as f64);
        table.par_chunks_mut(d).zip(positions.par_iter()).with_min_len(inline_chunks(d)).for_each(|(cs, &pos)| {
            let pos = pos as f64 / scale;
            let (cos, sin) = cs.split_at_mut(half);
            for (i, f) in inv_freq.iter().enumerate() {
                let (s, c) = (pos * f).sin_cos();
                cos[i] = c as f32;
                sin[i] = s as f32;
            }
        });
        e.table.clone()
    }

    fn start(&self) -> Option<Instant> {
        self.profile.is_some().then(Instant::now)
    }

    fn record(&mut self, t0: Option<Instant>, key: impl FnOnce() -> String) {
        if let (Some(t0), Some(p)) = (t0, self.profile.as_mut()) {
            let e = p.entry(key()).or_default();
            e.0 += t0.elapsed();
            e.1 += 1;
        }
    }

    /// The instruction set the matmuls run on.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs the matmuls on `isa` instead of the detected best (comparisons, tests).
    pub fn set_isa(&mut self, isa: Isa) {
        assert!(Isa::available().contains(&isa), "{isa:?} is not available on this CPU. This is a bug.");
        self.isa = isa;
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    1.0 / ((sum / x.len() as f64) as f32 + eps).sqrt()
}

impl Ops for CpuOps {
    type Act = CpuAct;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;

    fn load_matrix(&mut self, name: &str, t: QTensor) -> OpResult<CpuMatrix> {
        let label = hearth_models::ops::op_label(name);
        let data = if self.exact_matmul || matches!(t.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            let (out, k) = t.shape().dims2().map_err(|e| shape_err(name, e.to_string()))?;
            let w = t
                .dequantize(&candle_core::Device::Cpu)
                .and_then(|w| w.flatten_all())
                .and_then(|w| w.to_vec1::<f32>())
                .map_err(|e| shape_err(name, e.to_string()))?;
            MatrixData::Float { w, out, k }
        } else {
            MatrixData::Packed(PackedMatrix::pack(&t).map_err(|e| BackendError::Unavailable(format!("{name}: {e}")))?)
        };
        Ok(CpuMatrix { label, data })
    }

    fn load_vector(&mut self, _name: &str, v: Vec<f32>) -> OpResult<Vec<f32>> {
        Ok(v)
    }

    fn embed(&mut self, table: &CpuMatrix, ids: &[u32], scale: f32) -> OpResult<CpuAct> {
        let t0 = self.start();
        let k = table.k();
        let mut data = self.output(ids.len() * k);
        for (row, &id) in data.chunks_exact_mut(k).zip(ids) {
            if id as usize >= table.out() {
                return Err(shape_err("embed", format!("token {id} of {}", table.out())));
            }
            table.row(id as usize, row);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        self.record(t0, || "embed".into());
        Ok(self.act(data, ids.len(), k))
    }

    fn matmul(&mut self, x: &CpuAct, w: &CpuMatrix) -> OpResult<CpuAct> {
        if x.cols != w.k() {
            return Err(shape_err("matmul", format!("input has {} columns, weight takes {}", x.cols, w.k())));
        }
        let t0 = self.start();
        // Both paths write every output element.
        let mut out = self.output(x.rows * w.out());
        match &w.data {
            MatrixData::Packed(p) => {
                self.qact.quantize(&x.data, x.rows, x.cols);
                qgemm::matmul(p, &self.qact, &mut out, self.isa);
            }
            MatrixData::Float { w, k, out: cols } => {
                out.par_chunks_mut(*cols).enumerate().for_each(|(r, o)| {
                    let xr = x.row(r);
                    o.iter_mut().zip(w.chunks_exact(*k)).for_each(|(o, wr)| *o = attention::dot(xr, wr));
                });
            }
        }
        self.record(t0, || format!("matmul {}", w.label));
        Ok(self.act(out, x.rows, w.out()))
    }

    fn rms_norm(&mut self, x: &CpuAct, w: &Vec<f32>, eps: f32) -> OpResult<CpuAct> {
        let t0 = self.start();
        let g = w.len();
        if g == 0 || !x.cols.is_multiple_of(g) {
            return Err(shape_err("rms_norm", format!("{} columns in groups of {g}", x.cols)));
        }
        let mut out = self.output(x.data.len());
        out.copy_from_slice(&x.data);
        out.par_chunks_mut(g).with_min_len(inline_chunks(g)).for_each(|chunk| {
            let s = rms_scale(chunk, eps);
            chunk.iter_mut().zip(w).for_each(|(v, w)| *v = *v * s * w);
        });
        self.record(t0, || "rms_norm".into());
        Ok(self.act(out, x.rows, x.cols))
    }

    fn add_rms_norm(&mut self, acc: &mut CpuAct, x: &CpuAct, w: &Vec<f32>, eps: f32) -> OpResult<()> {
        let t0 = self.start();
        if acc.rows != x.rows || acc.cols != x.cols || w.len() != x.cols {
            return Err(shape_err("add_rms_norm", format!("{}x{} += {}x{}", acc.rows, acc.cols, x.rows, x.cols)));
        }
        acc.data.par_chunks_mut(x.cols).zip(x.data.par_chunks(x.cols)).with_min_len(inline_chunks(x.cols)).for_each(
            |(a, xr)| {
                let s = rms_scale(xr, eps);
                a.iter_mut().zip(xr).zip(w).for_each(|((a, x), w)| *a += x * s * w);
            },
        );
        self.record(t0, || "add_rms_norm".into());
        Ok(())
    }

    fn rope(&mut self, x: &mut CpuAct, positions: &[u32], p: &RopeParams<'_>) -> OpResult<()> {
        let t0 = self.start();
        let d = p.head_dim;
        if positions.len() != x.rows || d == 0 || !x.cols.is_multiple_of(d) {
            return Err(shape_err("rope", format!("{} rows, {} positions, head_dim {d}", x.rows, positions.len())));
        }
        if p.freq_factors.is_some_and(|f| f.len() != d / 2) {
            return Err(shape_err(
                "rope",
                format!("{:?} frequency factors, head_dim {d}", p.freq_factors.map(<[f32]>::len)),
            ));
        }
        let half = d / 2;
        let table = self.rope_table(positions, p);
        let cols = x.cols;
        let interleaved = p.interleaved;
        x.data.par_chunks_mut(cols).zip(table.par_chunks(2 * half)).with_min_len(inline_chunks(cols)).for_each(
            |(row, cs)| {
                let (cos, sin) = cs.split_at(half);
                for head in row.chunks_mut(d) {
                    if interleaved {
                        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                            let (x0, x1) = (pair[0], pair[1]);
                            pair[0] = x0 * cos[i] - x1 * sin[i];
                            pair[1] = x0 * sin[i] + x1 * cos[i];
                        }
                        continue;
                    }
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1) = (a[i], b[i]);
                        a[i] = x0 * cos[i] - x1 * sin[i];
                        b[i] = x0 * sin[i] + x1 * cos[i];
                    }
                }
            },
        );
        self.record(t0, || "rope".into());
        Ok(())
    }

    fn gelu_mul(&mut self, gate: &CpuAct, up: &CpuAct) -> OpResult<CpuAct> {
        self.gated("gelu_mul", gate, up, fastmath::gelu_tanh)
    }

    fn silu_mul(&mut self, gate: &CpuAct, up: &CpuAct) -> OpResult<CpuAct> {
        self.gated("silu_mul", gate, up, |g| g / (1.0 + fastmath::exp(-g)))
    }

    fn add(&mut self, acc: &mut CpuAct, x: &CpuAct) -> OpResult<()> {
        if acc.rows != x.rows || acc.cols != x.cols {
            return Err(shape_err("add", format!("{}x{} += {}x{}", acc.rows, acc.cols, x.rows, x.cols)));
        }
        let t0 = self.start();
        acc.data.par_chunks_mut(4096).zip(x.data.par_chunks(4096)).with_min_len(inline_chunks(4096)).for_each(
            |(a, x)| {
                a.iter_mut().zip(x).for_each(|(a, x)| *a += x);
            },
        );
        self.record(t0, || "add".into());
        Ok(())
    }

    fn add_bias(&mut self, x: &mut CpuAct, b: &Vec<f32>) -> OpResult<()> {
        if b.len() != x.cols {
            return Err(shape_err("add_bias", format!("{} columns, bias of {}", x.cols, b.len())));
        }
        x.data.chunks_exact_mut(x.cols).for_each(|r| r.iter_mut().zip(b).for_each(|(v, b)| *v += b));
        Ok(())
    }

    fn attention(&mut self, q: &CpuAct, k: &CpuAct, v: &CpuAct, step: &StepPlan, p: &AttnParams) -> OpResult<CpuAct> {
        let t0 = self.start();
        let layer =
            self.kv.get_mut(p.layer).ok_or_else(|| shape_err("attention", format!("no KV for layer {}", p.layer)))?;
        attention::write_kv(layer, k, v, step, self.block_size)?;
        attention::gather(layer, step, p, self.block_size, &mut self.attn);
        self.record(t0, || "attention: KV write + gather".into());
        let t0 = self.start();
        // Zeroed: attention accumulates into its output.
        let mut out = self.pool.take(q.data.len());
        attention::attend(q, step, p, &mut self.attn, &mut out)?;
        self.record(t0, || "attention".into());
        Ok(self.act(out, q.rows, q.cols))
    }

    fn select_rows(&mut self, x: &CpuAct, rows: &[usize]) -> OpResult<CpuAct> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(shape_err("select_rows", format!("row {r} of {}", x.rows)));
        }
        let mut data = self.output(rows.len() * x.cols);
        for (o, &r) in data.chunks_exact_mut(x.cols.max(1)).zip(rows) {
            o.copy_from_slice(x.row(r));
        }
        Ok(self.act(data, rows.len(), x.cols))
    }

    fn to_host(&mut self, x: &CpuAct) -> OpResult<Vec<f32>> {
        Ok(x.data.clone())
    }
}

/// Rounds to f16 and back (what a value looks like after a trip through the f16 KV cache).
pub(super) fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use hearth_models::testing::SeededRng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SeededRng::new(seed);
        (0..n).map(|_| r.next_f32()).collect()
    }

    #[test]
    fn buffer_pool_reuses_the_smallest_fit_and_zeroes_unless_told() {
        let pool = BufferPool::default();
        let mut a = pool.take(100);
        a.iter_mut().for_each(|v| *v = 1.0);
        let (a_ptr, b) = (a.as_ptr(), vec![2.0f32; 1000]);
        let b_ptr = b.as_ptr();
        pool.give(b);
        pool.give(a);
        assert_eq!(pool.len(), 2);
        let c = pool.take(50); // the 100-buffer fits best
        assert_eq!((c.as_ptr(), c.len()), (a_ptr, 50));
        assert!(c.iter().all(|&v| v == 0.0), "take zeroes");
        let d = pool.take_overwritten(800);
        assert_eq!((d.as_ptr(), d.len()), (b_ptr, 800));
        assert!(d.iter().all(|&v| v == 2.0), "take_overwritten keeps the old values");
        assert!(pool.is_empty());
        let e = pool.take(10); // nothing pooled: new memory
        assert!(e.iter().all(|&v| v == 0.0) && e.len() == 10);
        for _ in 0..POOL_BUFFERS + 5 {
            pool.give(vec![0.0; 8]);
        }
        pool.give(vec![0.0; 64]);
        assert_eq!(pool.len(), POOL_BUFFERS, "bounded");
        assert_eq!(pool.take_overwritten(64).capacity(), 64, "a full pool keeps the larger buffer");
    }

    /// Each row of a batched matmul equals the same row computed alone, bit for bit, for every
    /// block format the default model uses and batch sizes 1..=40.
    #[test]
    fn quantized_matmul_is_batch_invariant() {
        let (out, inp) = (64, 512);
        let mut ops = CpuOps::new(KvSpec { layers: 1, kv_heads: 1, head_dim: 2 }, 1, 1);
        for dtype in [GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4_0] {
            let w = Tensor::from_vec(random(out * inp, 1), (out, inp), &Device::Cpu).unwrap();
            let w = ops.load_matrix("w", QTensor::quantize(&w, dtype).unwrap()).unwrap();
            let rows = 40;
            let x = CpuAct::new(random(rows * inp, 2), rows, inp);
            let alone: Vec<Vec<f32>> = (0..rows)
                .map(|r| ops.matmul(&CpuAct::new(x.row(r).to_vec(), 1, inp), &w).unwrap().into_data())
                .collect();
            for m in 1..=rows {
                let batch = CpuAct::new(x.data[..m * inp].to_vec(), m, inp);
                let y = ops.matmul(&batch, &w).unwrap();
                for (r, want) in alone.iter().enumerate().take(m) {
                    assert_eq!(y.row(r), &want[..], "{dtype:?}: row {r} of a batch of {m}");
                }
            }
        }
    }

    /// Frequency divisors: all 2 is exactly linear scaling by 2 (both halve every angle); all 1 is
    /// plain RoPE; one pair's divisor rotates that pair alone more slowly, by the stated angle.
    #[test]
    fn rope_frequency_factors_divide_each_pairs_frequency() {
        let (d, rows, cols) = (8, 3, 16);
        let mut ops = CpuOps::new(KvSpec { layers: 1, kv_heads: 1, head_dim: d }, 1, 1);
        let positions = [0u32, 7, 1000];
        let run = |ops: &mut CpuOps, p: &RopeParams<'_>| {
            let mut x = CpuAct::new(random(rows * cols, 3), rows, cols);
            ops.rope(&mut x, &positions, p).unwrap();
            x.into_data()
        };
        let base =
            RopeParams { head_dim: d, base: 10_000.0, position_scale: 1.0, freq_factors: None, interleaved: true };
        let plain = run(&mut ops, &base);
        let twos = [2.0f32; 4];
        let halved = run(&mut ops, &RopeParams { freq_factors: Some(&twos), ..base });
        assert_eq!(halved, run(&mut ops, &RopeParams { position_scale: 2.0, ..base }));
        assert_ne!(halved, plain);
        assert_eq!(run(&mut ops, &RopeParams { freq_factors: Some(&[1.0; 4]), ..base }), plain);
        let one = [1.0f32, 1.0, 4.0, 1.0];
        let y = run(&mut ops, &RopeParams { freq_factors: Some(&one), ..base });
        let x = CpuAct::new(random(rows * cols, 3), rows, cols).into_data();
        for (r, &pos) in positions.iter().enumerate() {
            for c in 0..cols {
                let (pair, head_base) = ((c % d) / 2, r * cols + c - c % 2);
                if pair != 2 {
                    assert_eq!(y[r * cols + c], plain[r * cols + c], "row {r} col {c}: only pair 2 changes");
                    continue;
                }
                let angle = pos as f64 * 10_000f64.powf(-2.0 * 2.0 / d as f64) / 4.0;
                let (sn, cs) = angle.sin_cos();
                let (a, b) = (x[head_base] as f64, x[head_base + 1] as f64);
                let want = if c % 2 == 0 { a * cs - b * sn } else { a * sn + b * cs };
                assert!((y[r * cols + c] as f64 - want).abs() < 1e-5, "row {r} col {c}: {} vs {want}", y[r * cols + c]);
            }
        }
    }
}
