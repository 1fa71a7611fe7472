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

fn slot(table: &[u32], pos: usize, block_size: usize) -> usize {
    table[pos / block_size] as usize * block_size + pos % block_size
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
            let at = slot(&seq.block_table, seq.first_position() + i, block_size) * s;
            kv.k[at..at + s].convert_from_f32_slice(k.row(row));
            kv.v[at..at + s].convert_from_f32_slice(v.row(row));
        }
    }
    Ok(())
}

/// Attention of every query row over its own sequence's cached keys and values.
pub(super) fn attend(kv: &LayerKv, q: &CpuAct, step: &StepPlan, p: &AttnParams, block_size: usize) -> OpResult<CpuAct> {
    let d = p.head_dim;
    if q.cols != p.n_heads * d || q.rows != step.tokens.len() || kv.stride != p.n_kv_heads * d {
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
    let mut out = vec![0f32; q.rows * q.cols];
    out.par_chunks_mut(q.cols).enumerate().for_each(|(row, o)| {
        let (si, pos) = row_seq[row];
        attend_row(kv, q.row(row), &step.seqs[si].block_table, pos, p, block_size, o);
    });
    Ok(CpuAct::new(out, q.rows, q.cols))
}

fn attend_row(kv: &LayerKv, q: &[f32], table: &[u32], pos: usize, p: &AttnParams, block_size: usize, out: &mut [f32]) {
    let d = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let lo = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let n = pos + 1 - lo;
    // q rounded to f16, as ggml's CPU flash attention does before its f16 dot products.
    let q: Vec<f32> = q.iter().map(|&x| round_f16(x)).collect();
    let mut scores = vec![0f32; group * n];
    let mut kbuf = vec![0f32; d];
    for g in 0..p.n_kv_heads {
        for (j, key_pos) in (lo..=pos).enumerate() {
            let at = slot(table, key_pos, block_size) * kv.stride + g * d;
            kv.k[at..at + d].convert_to_f32_slice(&mut kbuf);
            for h in 0..group {
                let qh = &q[(g * group + h) * d..][..d];
                let mut s = dot(qh, &kbuf) * p.scale;
                if let Some(c) = p.softcap {
                    s = c * (s / c).tanh();
                }
                scores[h * n + j] = s;
            }
        }
        for h in 0..group {
            softmax(&mut scores[h * n..(h + 1) * n]);
        }
        for (j, key_pos) in (lo..=pos).enumerate() {
            let at = slot(table, key_pos, block_size) * kv.stride + g * d;
            kv.v[at..at + d].convert_to_f32_slice(&mut kbuf);
            for h in 0..group {
                let w = scores[h * n + j];
                let oh = &mut out[(g * group + h) * d..][..d];
                oh.iter_mut().zip(&kbuf).for_each(|(o, v)| *o += w * v);
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators: vectorizes, and the order is fixed for every call.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}
