//! Paged attention on the CPU: KV write and causal (optionally sliding-window) attention over each
//! sequence's block table.
//!
//! Layout of one layer's cache: `[num_blocks * block_size, kv_heads, head_dim]` f16, so token `p` of
//! a sequence lives at slot `table[p / block_size] * block_size + p % block_size`. Each query row is
//! computed from its own sequence only, in a fixed order, so results do not depend on the batch.

use half::f16;
use half::slice::HalfFloatSliceExt;
use hearth_core::{BackendError, StepPlan};
use hearth_models::ops::{AttnParams, KvSpec, OpResult};
use rayon::prelude::*;

use super::fastmath;
use super::ops::{CpuAct, round_f16};

pub(super) struct LayerKv {
    k: Vec<f16>,
    v: Vec<f16>,
    /// Elements per token: kv_heads * head_dim.
    stride: usize,
}

impl LayerKv {
    pub(super) fn new(spec: KvSpec, block_size: usize, num_blocks: usize) -> Self {
        let stride = spec.kv_heads * spec.head_dim;
        let n = num_blocks * block_size * stride;
        LayerKv { k: vec![f16::ZERO; n], v: vec![f16::ZERO; n], stride }
    }
}

/// Stores this step's K and V rows at their sequences' slots.
pub(super) fn write_kv(kv: &mut LayerKv, k: &CpuAct, v: &CpuAct, step: &StepPlan, block_size: usize) -> OpResult<()> {
    if k.cols != kv.stride || v.cols != kv.stride || k.rows != step.tokens.len() || v.rows != k.rows {
        return Err(BackendError::Internal(format!(
            "write_kv: k {}x{}, v {}x{}, cache stride {}. This is a bug.",
            k.rows, k.cols, v.rows, v.cols, kv.stride
        )));
    }
    let s = kv.stride;
    for seq in &step.seqs {
        for i in 0..seq.len {
            let row = seq.start + i;
            let at = seq.slot(seq.first_position() + i, block_size) * s;
            kv.k[at..at + s].convert_from_f32_slice(k.row(row));
            kv.v[at..at + s].convert_from_f32_slice(v.row(row));
        }
    }
    Ok(())
}

/// Reusable buffers: each sequence's keys and values of this step, converted to f32 once.
#[derive(Default)]
pub(super) struct AttnScratch {
    /// First key position of each sequence's range.
    base: Vec<usize>,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// (sequence, position) of each query row.
    row_seq: Vec<(usize, usize)>,
}

thread_local! {
    /// Per worker: one query row rounded to f16, and its scores (`heads per KV head × keys`).
    static ROW_SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Reads each sequence's key range (from the window start of its first row to its last
/// position) from the paged cache and converts it to f32, once per step and layer.
pub(super) fn gather(kv: &LayerKv, step: &StepPlan, p: &AttnParams, block_size: usize, scratch: &mut AttnScratch) {
    let s = kv.stride;
    let n = step.seqs.len();
    scratch.base.clear();
    scratch.base.extend(step.seqs.iter().map(|q| window_lo(p, q.first_position())));
    scratch.k.resize_with(n.max(scratch.k.len()), Vec::new);
    scratch.v.resize_with(n.max(scratch.v.len()), Vec::new);
    let base = &scratch.base;
    scratch.k[..n].par_iter_mut().zip(scratch.v[..n].par_iter_mut()).enumerate().for_each(|(i, (k32, v32))| {
        let seq = &step.seqs[i];
        let (base, end) = (base[i], seq.first_position() + seq.len);
        k32.resize((end - base) * s, 0.0);
        v32.resize((end - base) * s, 0.0);
        for (j, pos) in (base..end).enumerate() {
            let at = seq.slot(pos, block_size) * s;
            kv.k[at..at + s].convert_to_f32_slice(&mut k32[j * s..(j + 1) * s]);
            kv.v[at..at + s].convert_to_f32_slice(&mut v32[j * s..(j + 1) * s]);
        }
    });
}

fn window_lo(p: &AttnParams, pos: usize) -> usize {
    p.window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Attention of every query row over its own sequence's keys and values, as [`gather`] left them,
/// into `out` (`[rows, heads * head_dim]`).
///
/// A row's arithmetic (dot products in key order, softmax, weighted sum in key order) does not
/// depend on the other rows, so results are the same whatever the batch or the chunking.
pub(super) fn attend(
    q: &CpuAct,
    step: &StepPlan,
    p: &AttnParams,
    scratch: &mut AttnScratch,
    out: &mut [f32],
) -> OpResult<()> {
    let d = p.head_dim;
    let s = p.n_kv_heads * d;
    if q.cols != p.n_heads * d
        || q.rows != step.tokens.len()
        || scratch.base.len() != step.seqs.len()
        || out.len() != q.data.len()
    {
        return Err(BackendError::Internal(format!(
            "attend: q {}x{} for {} heads of {d}. This is a bug.",
            q.rows, q.cols, p.n_heads
        )));
    }
    scratch.row_seq.clear();
    for (si, s) in step.seqs.iter().enumerate() {
        scratch.row_seq.extend((0..s.len).map(|i| (si, s.first_position() + i)));
    }
    let scratch = &*scratch;
    let (ks, vs) = (&scratch.k, &scratch.v);
    out.par_chunks_mut(q.cols).enumerate().for_each(|(row, o)| {
        let (si, pos) = scratch.row_seq[row];
        let base = scratch.base[si];
        let keys = (window_lo(p, pos) - base) * s..(pos + 1 - base) * s;
        attend_row(&ks[si][keys.clone()], &vs[si][keys], q.row(row), p, s, o);
    });
    Ok(())
}

/// One query row over `k`/`v` (`[keys, kv_heads * head_dim]`, the keys it may see, in order).
fn attend_row(k: &[f32], v: &[f32], q: &[f32], p: &AttnParams, stride: usize, out: &mut [f32]) {
    let d = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let n = k.len() / stride;
    ROW_SCRATCH.with_borrow_mut(|(q16, scores)| {
        // q rounded to f16, as ggml's CPU flash attention does before its f16 dot products.
        q16.clear();
        q16.extend(q.iter().map(|&x| round_f16(x)));
        scores.clear();
        scores.resize(group * n, 0.0);
        for g in 0..p.n_kv_heads {
            let heads = g * group..(g + 1) * group;
            // The query heads sharing this KV head go through the keys together (independent
            // accumulator chains); 16-lane chunks need head_dim % 16 == 0.
            let qg = &q16[heads.start * d..heads.end * d];
            let og = &mut out[heads.start * d..heads.end * d];
            let kv = Kv { k, v, off: g * d, stride, n };
            match group {
                _ if !d.is_multiple_of(64) => grouped::<1>(qg, &kv, p, scores, og),
                4 => grouped::<4>(qg, &kv, p, scores, og),
                2 => grouped::<2>(qg, &kv, p, scores, og),
                8 => grouped::<8>(qg, &kv, p, scores, og),
                _ => grouped::<1>(qg, &kv, p, scores, og),
            }
        }
    });
}

/// One KV head's keys and values as a query row sees them: `n` keys at column `off` of rows of
/// `stride` elements.
struct Kv<'a> {
    k: &'a [f32],
    v: &'a [f32],
    off: usize,
    stride: usize,
    n: usize,
}

impl Kv<'_> {
    fn key(&self, j: usize, d: usize) -> &[f32] {
        &self.k[j * self.stride + self.off..][..d]
    }

    fn value(&self, j: usize, d: usize) -> &[f32] {
        &self.v[j * self.stride + self.off..][..d]
    }
}

/// Attention of `q.len() / head_dim` query heads over one KV head, `G` heads at a time. The
/// results do not depend on `G` or on the instruction set: every (head, key) score is the same
/// 16-lane fused multiply-add chain over `head_dim` and the same reduction tree ([`reduce16`]),
/// every output element the same chain over the keys in order, as in the one-head path
/// (`G == 1`), which the tests hold the others to bit for bit.
fn grouped<const G: usize>(q: &[f32], kv: &Kv<'_>, p: &AttnParams, scores: &mut [f32], out: &mut [f32]) {
    if G == 1 || !p.head_dim.is_multiple_of(64) {
        return one_head(q, kv, p, scores, out);
    }
    #[cfg(target_arch = "x86_64")]
    if x86::grouped_avx512::<G>(q, kv, p, scores, out) {
        return;
    }
    grouped_portable::<G>(q, kv, p, scores, out)
}

/// The reference: one head at a time.
fn one_head(q: &[f32], kv: &Kv<'_>, p: &AttnParams, scores: &mut [f32], out: &mut [f32]) {
    let (d, n) = (p.head_dim, kv.n);
    for h in 0..q.len() / d {
        let qh = &q[h * d..(h + 1) * d];
        let scores = &mut scores[..n];
        for (j, s) in scores.iter_mut().enumerate() {
            *s = score(dot(qh, kv.key(j, d)), p);
        }
        softmax(scores);
        let oh = &mut out[h * d..(h + 1) * d];
        for (j, &w) in scores.iter().enumerate() {
            oh.iter_mut().zip(kv.value(j, d)).for_each(|(o, v)| *o = w.mul_add(*v, *o));
        }
    }
}

/// `G` heads at a time without explicit SIMD (head_dim a multiple of 64).
fn grouped_portable<const G: usize>(q: &[f32], kv: &Kv<'_>, p: &AttnParams, scores: &mut [f32], out: &mut [f32]) {
    let (d, n) = (p.head_dim, kv.n);
    for h0 in (0..q.len() / d).step_by(G) {
        // Scores of G heads: one pass over the keys, G independent 16-lane accumulators.
        for j in 0..n {
            let kj = kv.key(j, d);
            let mut acc = [[0f32; 16]; G];
            for (c, kc) in kj.chunks_exact(16).enumerate() {
                for (h, acc) in acc.iter_mut().enumerate() {
                    let qc = &q[(h0 + h) * d + c * 16..][..16];
                    for l in 0..16 {
                        acc[l] = qc[l].mul_add(kc[l], acc[l]);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                scores[h * n + j] = score(reduce16(acc), p);
            }
        }
        for h in 0..G {
            softmax(&mut scores[h * n..(h + 1) * n]);
        }
        // Weighted sum of values, PV_COLS columns at a time for all G heads (accumulators stay
        // in registers).
        for c0 in (0..d).step_by(PV_COLS) {
            let mut acc = [[0f32; PV_COLS]; G];
            for j in 0..n {
                let vj = &kv.value(j, d)[c0..c0 + PV_COLS];
                for (h, acc) in acc.iter_mut().enumerate() {
                    let w = scores[h * n + j];
                    for l in 0..PV_COLS {
                        acc[l] = w.mul_add(vj[l], acc[l]);
                    }
                }
            }
            for (h, acc) in acc.iter().enumerate() {
                out[(h0 + h) * d + c0..][..PV_COLS].copy_from_slice(acc);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{AttnParams, Kv, score, softmax};

    pub(super) fn available() -> bool {
        static AVX512: OnceLock<bool> = OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"))
    }

    /// The AVX-512 path for `G` heads where the CPU has it (false: nothing done, no AVX-512F).
    pub(super) fn grouped_avx512<const G: usize>(
        q: &[f32],
        kv: &Kv<'_>,
        p: &AttnParams,
        scores: &mut [f32],
        out: &mut [f32],
    ) -> bool {
        if !available() || !p.head_dim.is_multiple_of(64) {
            return false;
        }
        // SAFETY: the CPU has AVX-512F and FMA; head_dim is a multiple of 64 = 16·PV for PV ≤ 4.
        unsafe {
            match G {
                2 => grouped::<2, 8, 4>(q, kv, p, scores, out),
                4 => grouped::<4, 4, 4>(q, kv, p, scores, out),
                _ => grouped::<G, 2, 2>(q, kv, p, scores, out),
            }
        }
        true
    }

    /// [`super::reduce16`] in registers: the same pairs added in the same order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce16(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let x = _mm256_add_ps(_mm512_castps512_ps256(v), hi); // l + (l + 8)
        let x = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x)); // + 4
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x)); // + 2
        _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps::<1>(x, x))) // + 1
    }

    /// `G` heads at a time; scores `KT` keys at a time (each 16-lane chunk of a key and of a
    /// query loaded once for `G·KT` multiply-adds); the weighted sum `PV` 16-lane value chunks at
    /// a time. All accumulators stay in registers (`G·KT`, `G·PV` ≤ 16).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p.head_dim` is a multiple of `16·PV`; `q` holds whole heads, `kv` its keys.
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn grouped<const G: usize, const KT: usize, const PV: usize>(
        q: &[f32],
        kv: &Kv<'_>,
        p: &AttnParams,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (d, n) = (p.head_dim, kv.n);
        assert!(d.is_multiple_of(16 * PV) && q.len().is_multiple_of(G * d), "grouped: shapes. This is a bug.");
        assert!(kv.n == 0 || kv.k.len() >= (n - 1) * kv.stride + kv.off + d, "grouped: keys. This is a bug.");
        assert!(
            kv.v.len() == kv.k.len() && scores.len() >= G * n && out.len() == q.len(),
            "grouped: buffers. This is a bug."
        );
        let (kp, vp) = (kv.k.as_ptr().wrapping_add(kv.off), kv.v.as_ptr().wrapping_add(kv.off));
        for h0 in (0..q.len() / d).step_by(G) {
            let qp = q[h0 * d..].as_ptr();
            let mut j0 = 0;
            // SAFETY (loads): key rows j0 .. j0 + KT < n and columns c .. c + 16 ≤ d, within the
            // asserted lengths; query heads h0 .. h0 + G of q.
            while j0 + KT <= n {
                let mut acc = [[_mm512_setzero_ps(); KT]; G];
                for c in (0..d).step_by(16) {
                    let kc: [__m512; KT] =
                        std::array::from_fn(|t| unsafe { _mm512_loadu_ps(kp.add((j0 + t) * kv.stride + c)) });
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let qc = unsafe { _mm512_loadu_ps(qp.add(h * d + c)) };
                        for (acc, kc) in acc.iter_mut().zip(kc) {
                            *acc = _mm512_fmadd_ps(qc, kc, *acc);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (t, acc) in acc.iter().enumerate() {
                        scores[h * n + j0 + t] = score(reduce16(*acc), p);
                    }
                }
                j0 += KT;
            }
            for j in j0..n {
                let mut acc = [_mm512_setzero_ps(); G];
                for c in (0..d).step_by(16) {
                    let kc = unsafe { _mm512_loadu_ps(kp.add(j * kv.stride + c)) };
                    for (h, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(qp.add(h * d + c)) }, kc, *acc);
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    scores[h * n + j] = score(reduce16(*acc), p);
                }
            }
            for h in 0..G {
                softmax(&mut scores[h * n..(h + 1) * n]);
            }
            for c0 in (0..d).step_by(16 * PV) {
                let mut acc = [[_mm512_setzero_ps(); PV]; G];
                for j in 0..n {
                    // SAFETY: value row j < n, columns c0 .. c0 + 16·PV ≤ d.
                    let vj: [__m512; PV] =
                        std::array::from_fn(|c| unsafe { _mm512_loadu_ps(vp.add(j * kv.stride + c0 + 16 * c)) });
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(scores[h * n + j]);
                        for (acc, vj) in acc.iter_mut().zip(vj) {
                            *acc = _mm512_fmadd_ps(w, vj, *acc);
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (c, acc) in acc.iter().enumerate() {
                        // SAFETY: 16 outputs of head h0 + h at column c0 + 16·c < d.
                        unsafe { _mm512_storeu_ps(out[(h0 + h) * d + c0 + 16 * c..][..16].as_mut_ptr(), *acc) };
                    }
                }
            }
        }
    }
}

const PV_COLS: usize = 16;

fn score(dot: f32, p: &AttnParams) -> f32 {
    let s = dot * p.scale;
    match p.softcap {
        Some(c) => c * (s / c).tanh(),
        None => s,
    }
}

#[inline(always)]
fn reduce16(acc: &[f32; 16]) -> f32 {
    let mut a = *acc;
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            a[l] += a[l + w];
        }
    }
    a[0]
}

/// `Σ a·b` with 16 fused multiply-add lanes and a fixed reduction tree: vectorizes, and every
/// call with the same inputs gives the same bits.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut s = reduce16(&acc);
    for (x, y) in ra.iter().zip(rb) {
        s = x.mul_add(*y, s);
    }
    s
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Separate loops: the exponentials vectorize, the (ordered) sum does not need to.
    x.iter_mut().for_each(|v| *v = fastmath::exp(*v - max));
    let sum: f32 = x.iter().sum();
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every grouped path against the one-head reference, bit for bit: key counts that are and
    /// are not multiples of the key tile, with and without softcap, at a KV column offset.
    fn check<const G: usize>() {
        let (d, kv_heads) = (128, 2);
        let stride = kv_heads * d;
        for softcap in [None, Some(30.0)] {
            let p = AttnParams {
                layer: 0,
                n_heads: 2 * G,
                n_kv_heads: kv_heads,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                window: None,
                softcap,
            };
            for n in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 37] {
                let q: Vec<f32> = values(2 * G * d, n as u64).iter().map(|&x| 4.0 * x).collect();
                let (k, v) = (values(n * stride, 100 + n as u64), values(n * stride, 200 + n as u64));
                let kv = Kv { k: &k, v: &v, off: d, stride, n };
                let mut scores = vec![0f32; 2 * G * n];
                let mut want = vec![0f32; 2 * G * d];
                one_head(&q, &kv, &p, &mut scores, &mut want);
                assert!(want.iter().any(|&x| x != 0.0), "the reference computed something");
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let mut got = vec![0f32; 2 * G * d];
                grouped_portable::<G>(&q, &kv, &p, &mut scores, &mut got);
                assert_eq!(bits(&got), bits(&want), "portable, G {G}, {n} keys, softcap {softcap:?}");
                #[cfg(target_arch = "x86_64")]
                if x86::available() {
                    let mut got = vec![0f32; 2 * G * d];
                    assert!(x86::grouped_avx512::<G>(&q, &kv, &p, &mut scores, &mut got));
                    assert_eq!(bits(&got), bits(&want), "AVX-512, G {G}, {n} keys, softcap {softcap:?}");
                } else {
                    eprintln!("no AVX-512F on this CPU: only the portable grouped path was checked");
                }
            }
        }
    }

    #[test]
    fn grouped_paths_match_the_one_head_reference_bit_for_bit() {
        check::<2>();
        check::<4>();
        check::<8>();
    }
}
