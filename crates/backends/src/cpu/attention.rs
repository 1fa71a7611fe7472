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

/// Attention of every query row over its own sequence's keys and values, as [`gather`] left them.
///
/// A row's arithmetic (dot products in key order, softmax, weighted sum in key order) does not
/// depend on the other rows, so results are the same whatever the batch or the chunking.
pub(super) fn attend(q: &CpuAct, step: &StepPlan, p: &AttnParams, scratch: &AttnScratch) -> OpResult<CpuAct> {
    let d = p.head_dim;
    let s = p.n_kv_heads * d;
    if q.cols != p.n_heads * d || q.rows != step.tokens.len() || scratch.base.len() != step.seqs.len() {
        return Err(BackendError::Internal(format!(
            "attend: q {}x{} for {} heads of {d}. This is a bug.",
            q.rows, q.cols, p.n_heads
        )));
    }
    // (sequence, position) of each row.
    let mut row_seq = Vec::with_capacity(q.rows);
    for (si, s) in step.seqs.iter().enumerate() {
        row_seq.extend((0..s.len).map(|i| (si, s.first_position() + i)));
    }
    let (ks, vs) = (&scratch.k, &scratch.v);
    let mut out = vec![0f32; q.rows * q.cols];
    out.par_chunks_mut(q.cols).enumerate().for_each(|(row, o)| {
        let (si, pos) = row_seq[row];
        let base = scratch.base[si];
        let keys = (window_lo(p, pos) - base) * s..(pos + 1 - base) * s;
        attend_row(&ks[si][keys.clone()], &vs[si][keys], q.row(row), p, s, o);
    });
    Ok(CpuAct::new(out, q.rows, q.cols))
}

/// One query row over `k`/`v` (`[keys, kv_heads * head_dim]`, the keys it may see, in order).
fn attend_row(k: &[f32], v: &[f32], q: &[f32], p: &AttnParams, stride: usize, out: &mut [f32]) {
    let d = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let n = k.len() / stride;
    // q rounded to f16, as ggml's CPU flash attention does before its f16 dot products.
    let q: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
    let mut scores = vec![0f32; group * n];
    for g in 0..p.n_kv_heads {
        let heads = g * group..(g + 1) * group;
        // The query heads sharing this KV head go through the keys together (independent
        // accumulator chains); 16-lane chunks need head_dim % 16 == 0.
        let qg = &q[heads.start * d..heads.end * d];
        let og = &mut out[heads.start * d..heads.end * d];
        match group {
            _ if !d.is_multiple_of(64) => grouped::<1>(qg, k, v, g * d, p, stride, n, &mut scores, og),
            4 => grouped::<4>(qg, k, v, g * d, p, stride, n, &mut scores, og),
            2 => grouped::<2>(qg, k, v, g * d, p, stride, n, &mut scores, og),
            8 => grouped::<8>(qg, k, v, g * d, p, stride, n, &mut scores, og),
            _ => grouped::<1>(qg, k, v, g * d, p, stride, n, &mut scores, og),
        }
    }
}

/// Attention of `q.len() / head_dim` query heads over one KV head at column `off` of `k`/`v`,
/// `G` heads at a time (the results do not depend on `G`: each head's arithmetic is the same).
#[allow(clippy::too_many_arguments)]
fn grouped<const G: usize>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    off: usize,
    p: &AttnParams,
    stride: usize,
    n: usize,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let d = p.head_dim;
    let heads = q.len() / d;
    for h0 in (0..heads).step_by(G) {
        if G == 1 || !d.is_multiple_of(64) {
            for h in h0..(h0 + G).min(heads) {
                let qh = &q[h * d..(h + 1) * d];
                for j in 0..n {
                    scores[j] = score(dot(qh, &k[j * stride + off..][..d]), p);
                }
                softmax(&mut scores[..n]);
                let oh = &mut out[h * d..(h + 1) * d];
                for j in 0..n {
                    let vj = &v[j * stride + off..][..d];
                    oh.iter_mut().zip(vj).for_each(|(o, v)| *o = scores[j].mul_add(*v, *o));
                }
            }
            continue;
        }
        // Scores of G heads: one pass over the keys, G independent 16-lane accumulators.
        for j in 0..n {
            let kj = &k[j * stride + off..][..d];
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
                let vj = &v[j * stride + off + c0..][..PV_COLS];
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
