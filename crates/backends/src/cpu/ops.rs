//! [`Ops`] on the CPU: quantized matmuls through candle-core, the rest in plain Rust over f32 rows.
//!
//! Numerics follow llama.cpp where it matters for agreement with our oracle: RMS norms accumulate
//! in f64, the KV cache is f16, attention rounds q to f16 before the dot products (as ggml's CPU
//! flash attention does), everything else is f32.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;
use hearth_core::{BackendError, StepPlan};
use hearth_models::ops::{AttnParams, KvSpec, OpResult, Ops, RopeParams};
use rayon::prelude::*;

use super::attention::{self, LayerKv};

/// Rows per quantized matmul call. candle-core picks its kernel from the row count (an AMX path
/// for Q4_K from 32 rows, a repacked Q6_K path from 2 rows); calling it on at most 16 rows, and on
/// never fewer than 2 for Q6_K, keeps every row on the same kernel whatever the batch, so a row's
/// result does not depend on what shares its step (checked bit for bit in the tests below).
const MATMUL_ROWS: usize = 16;

/// Activations: `rows × cols` f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuAct {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuAct {
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "activation shape mismatch. This is a bug.");
        CpuAct { data, rows, cols }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A weight matrix `[out, in]` in its GGUF block format.
pub struct CpuMatrix {
    q: Arc<QTensor>,
    mm: QMatMul,
    out: usize,
    inp: usize,
}

pub struct CpuOps {
    kv: Vec<LayerKv>,
    block_size: usize,
    num_blocks: usize,
}

fn internal(e: candle_core::Error) -> BackendError {
    BackendError::Internal(e.to_string())
}

fn shape_err(what: &str, detail: String) -> BackendError {
    BackendError::Internal(format!("{what}: {detail}. This is a bug."))
}

impl CpuOps {
    pub fn new(spec: KvSpec, block_size: usize, num_blocks: usize) -> Self {
        let kv = (0..spec.layers).map(|_| LayerKv::new(spec, block_size, num_blocks)).collect();
        CpuOps { kv, block_size, num_blocks }
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

fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

impl Ops for CpuOps {
    type Act = CpuAct;
    type Matrix = CpuMatrix;
    type Vector = Vec<f32>;

    fn load_matrix(&mut self, name: &str, t: QTensor) -> OpResult<CpuMatrix> {
        let (out, inp) = t.shape().dims2().map_err(|e| shape_err(name, e.to_string()))?;
        let q = Arc::new(t);
        let mm = QMatMul::from_arc(q.clone()).map_err(internal)?;
        Ok(CpuMatrix { q, mm, out, inp })
    }

    fn load_vector(&mut self, _name: &str, v: Vec<f32>) -> OpResult<Vec<f32>> {
        Ok(v)
    }

    fn embed(&mut self, table: &CpuMatrix, ids: &[u32], scale: f32) -> OpResult<CpuAct> {
        let ids_t = Tensor::new(ids, &Device::Cpu).map_err(internal)?;
        let rows = table.q.embedding(&ids_t).map_err(internal)?;
        let mut data = rows.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(internal)?;
        data.iter_mut().for_each(|v| *v *= scale);
        Ok(CpuAct::new(data, ids.len(), table.inp))
    }

    fn matmul(&mut self, x: &CpuAct, w: &CpuMatrix) -> OpResult<CpuAct> {
        if x.cols != w.inp {
            return Err(shape_err("matmul", format!("input has {} columns, weight takes {}", x.cols, w.inp)));
        }
        let mut out = Vec::with_capacity(x.rows * w.out);
        for chunk in x.data.chunks(MATMUL_ROWS * x.cols) {
            let rows = chunk.len() / x.cols;
            // candle takes a different Q6_K kernel for one row than for several: give it two.
            let padded;
            let (input, m) = if rows == 1 && w.q.dtype() == GgmlDType::Q6K {
                padded = [chunk, chunk].concat();
                (&padded[..], 2)
            } else {
                (chunk, rows)
            };
            let t = Tensor::from_slice(input, (m, x.cols), &Device::Cpu).map_err(internal)?;
            let y =
                w.mm.forward(&t).and_then(|y| y.flatten_all()).and_then(|y| y.to_vec1::<f32>()).map_err(internal)?;
            out.extend_from_slice(&y[..rows * w.out]);
        }
        Ok(CpuAct::new(out, x.rows, w.out))
    }

    fn rms_norm(&mut self, x: &CpuAct, w: &Vec<f32>, eps: f32) -> OpResult<CpuAct> {
        let g = w.len();
        if g == 0 || !x.cols.is_multiple_of(g) {
            return Err(shape_err("rms_norm", format!("{} columns in groups of {g}", x.cols)));
        }
        let mut out = x.data.clone();
        out.par_chunks_mut(g).for_each(|chunk| {
            let s = rms_scale(chunk, eps);
            chunk.iter_mut().zip(w).for_each(|(v, w)| *v = *v * s * w);
        });
        Ok(CpuAct::new(out, x.rows, x.cols))
    }

    fn add_rms_norm(&mut self, acc: &mut CpuAct, x: &CpuAct, w: &Vec<f32>, eps: f32) -> OpResult<()> {
        if acc.rows != x.rows || acc.cols != x.cols || w.len() != x.cols {
            return Err(shape_err("add_rms_norm", format!("{}x{} += {}x{}", acc.rows, acc.cols, x.rows, x.cols)));
        }
        acc.data.par_chunks_mut(x.cols).zip(x.data.par_chunks(x.cols)).for_each(|(a, xr)| {
            let s = rms_scale(xr, eps);
            a.iter_mut().zip(xr).zip(w).for_each(|((a, x), w)| *a += x * s * w);
        });
        Ok(())
    }

    fn rope(&mut self, x: &mut CpuAct, positions: &[u32], p: &RopeParams) -> OpResult<()> {
        let d = p.head_dim;
        if positions.len() != x.rows || d == 0 || !x.cols.is_multiple_of(d) {
            return Err(shape_err("rope", format!("{} rows, {} positions, head_dim {d}", x.rows, positions.len())));
        }
        let half = d / 2;
        let inv_freq: Vec<f64> = (0..half).map(|i| (p.base as f64).powf(-2.0 * i as f64 / d as f64)).collect();
        let cols = x.cols;
        x.data.par_chunks_mut(cols).zip(positions.par_iter()).for_each(|(row, &pos)| {
            let pos = pos as f64 / p.position_scale as f64;
            let (cos, sin): (Vec<f32>, Vec<f32>) =
                inv_freq.iter().map(|f| ((pos * f).cos() as f32, (pos * f).sin() as f32)).unzip();
            for head in row.chunks_mut(d) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * cos[i] - x1 * sin[i];
                    b[i] = x0 * sin[i] + x1 * cos[i];
                }
            }
        });
        Ok(())
    }

    fn gelu_mul(&mut self, gate: &CpuAct, up: &CpuAct) -> OpResult<CpuAct> {
        if gate.data.len() != up.data.len() {
            return Err(shape_err("gelu_mul", format!("{} vs {} elements", gate.data.len(), up.data.len())));
        }
        let data = gate.data.par_iter().zip(&up.data).map(|(&g, &u)| gelu_tanh(g) * u).collect();
        Ok(CpuAct::new(data, gate.rows, gate.cols))
    }

    fn attention(&mut self, q: &CpuAct, k: &CpuAct, v: &CpuAct, step: &StepPlan, p: &AttnParams) -> OpResult<CpuAct> {
        let layer =
            self.kv.get_mut(p.layer).ok_or_else(|| shape_err("attention", format!("no KV for layer {}", p.layer)))?;
        attention::write_kv(layer, k, v, step, self.block_size)?;
        attention::attend(layer, q, step, p, self.block_size)
    }

    fn select_rows(&mut self, x: &CpuAct, rows: &[usize]) -> OpResult<CpuAct> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                return Err(shape_err("select_rows", format!("row {r} of {}", x.rows)));
            }
            data.extend_from_slice(x.row(r));
        }
        Ok(CpuAct::new(data, rows.len(), x.cols))
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
    use hearth_models::testing::SeededRng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = SeededRng::new(seed);
        (0..n).map(|_| r.next_f32()).collect()
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
            let alone: Vec<Vec<f32>> =
                (0..rows).map(|r| ops.matmul(&CpuAct::new(x.row(r).to_vec(), 1, inp), &w).unwrap().data).collect();
            for m in 1..=rows {
                let batch = CpuAct::new(x.data[..m * inp].to_vec(), m, inp);
                let y = ops.matmul(&batch, &w).unwrap();
                for (r, want) in alone.iter().enumerate().take(m) {
                    assert_eq!(y.row(r), &want[..], "{dtype:?}: row {r} of a batch of {m}");
                }
            }
        }
    }
}
