use candle_core::{Device, Tensor};
use hearth_models::testing::SeededRng;

use super::*;

const DTYPES: [GgmlDType; 5] = [GgmlDType::Q8_0, GgmlDType::Q5_0, GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q6K];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SeededRng::new(seed);
    (0..n).map(|_| r.next_f32()).collect()
}

fn quantized(dtype: GgmlDType, out: usize, k: usize, seed: u64) -> QTensor {
    let w = Tensor::from_vec(random(out * k, seed), (out, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

fn run(w: &PackedMatrix, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
    let mut a = QAct::default();
    a.quantize(x, rows, w.k());
    let mut out = vec![f32::NAN; rows * w.out()];
    matmul(w, &a, &mut out, isa);
    out
}

/// Repacking loses nothing: every row dequantizes to exactly what candle (ggml's layout) gives.
#[test]
fn packed_rows_dequantize_exactly_like_candle() {
    for dtype in DTYPES {
        let (out, k) = (37, 512);
        let q = quantized(dtype, out, k, 7);
        let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let p = PackedMatrix::pack(&q).unwrap();
        let mut row = vec![0f32; k];
        for col in 0..out {
            p.dequantize_row(col, &mut row);
            assert_eq!(row, want[col * k..(col + 1) * k], "{dtype:?} row {col}");
        }
    }
}

/// The product is the dequantized weights times the activations, up to the activations' 8-bit
/// quantization: per block at most half a step (max|x| / 254) plus the f16 rounding of the block
/// scale (2⁻¹¹ relative), summed over |w|.
#[test]
fn matmul_is_within_the_activation_quantization_bound() {
    for dtype in DTYPES {
        let (out, k, rows) = (19, 768, 5);
        let q = quantized(dtype, out, k, 11);
        let wf = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let p = PackedMatrix::pack(&q).unwrap();
        let x = random(rows * k, 12);
        let y = run(&p, &x, rows, Isa::Portable);
        for r in 0..rows {
            let xr = &x[r * k..(r + 1) * k];
            for c in 0..out {
                let wr = &wf[c * k..(c + 1) * k];
                let exact: f64 = wr.iter().zip(xr).map(|(&w, &x)| w as f64 * x as f64).sum();
                let mut bound = 1e-4;
                for (wb, xb) in wr.chunks(QK).zip(xr.chunks(QK)) {
                    let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let wsum: f64 = wb.iter().map(|w| w.abs() as f64).sum();
                    bound += wsum * amax * (1.0 / 254.0 + 1.0 / 2048.0) * 1.001;
                }
                let got = y[r * out + c] as f64;
                assert!((got - exact).abs() <= bound, "{dtype:?} ({r},{c}): {got} vs {exact}, bound {bound}");
            }
        }
    }
}

/// Every SIMD path gives the portable path's results bit for bit, for odd shapes: columns not a
/// multiple of the tile, and batches of 1..=67 rows.
#[test]
fn simd_paths_equal_the_portable_reference() {
    let isas = Isa::available();
    if isas.len() == 1 {
        eprintln!("skipped: this CPU has neither AVX2 nor AVX-512 VNNI; only the portable path exists");
        return;
    }
    for dtype in DTYPES {
        for (out, k) in [(1, 256), (37, 512), (64, 256)] {
            let p = PackedMatrix::pack(&quantized(dtype, out, k, 3)).unwrap();
            let rows = 67;
            let x = random(rows * k, 4);
            let want = run(&p, &x, rows, Isa::Portable);
            for &isa in &isas[1..] {
                for m in [1, 2, 3, 4, 5, 16, 67] {
                    let got = run(&p, &x[..m * k], m, isa);
                    assert_eq!(got, want[..m * out], "{dtype:?} [{out},{k}] {isa:?} rows {m}");
                }
            }
        }
    }
}

/// A row's result does not depend on how many rows share the call or where it sits.
#[test]
fn matmul_is_batch_invariant_on_every_path() {
    for &isa in Isa::available() {
        for dtype in DTYPES {
            let (out, k) = (40, 256);
            let p = PackedMatrix::pack(&quantized(dtype, out, k, 5)).unwrap();
            let rows = if isa == Isa::Portable { 9 } else { 67 };
            let x = random(rows * k, 6);
            let alone: Vec<Vec<f32>> = (0..rows).map(|r| run(&p, &x[r * k..(r + 1) * k], 1, isa)).collect();
            for m in 1..=rows {
                // The batch is rows m-1, m-2, …, 0: every row at a new position.
                let order: Vec<usize> = (0..m).rev().collect();
                let xb: Vec<f32> = order.iter().flat_map(|&r| x[r * k..(r + 1) * k].to_vec()).collect();
                let y = run(&p, &xb, m, isa);
                for (i, &r) in order.iter().enumerate() {
                    assert_eq!(y[i * out..(i + 1) * out], alone[r][..], "{isa:?} {dtype:?} row {r} at {i} of {m}");
                }
            }
        }
    }
}

#[test]
fn unsupported_formats_and_shapes_are_refused() {
    let w = Tensor::from_vec(random(16 * 64, 1), (16, 64), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, GgmlDType::Q8_1).unwrap();
    let err = PackedMatrix::pack(&q).unwrap_err();
    assert!(err.contains("Q8_1"), "{err}");
}

#[test]
fn quantized_activations_follow_q8_0() {
    let mut a = QAct::default();
    let mut x = vec![0f32; 64];
    x[0] = 1.27;
    x[1] = -0.635;
    x[2] = 0.004;
    a.quantize(&x, 1, 64);
    assert_eq!(a.d[0], f16::from_f32(0.01).to_f32());
    assert_eq!(&a.qs[..3], &[127, -64, 0]);
    assert_eq!(a.sums[0], 63);
    // An all-zero block has scale 0 and zero values, never NaN.
    assert_eq!((a.d[1], a.sums[2], a.sums[3]), (0.0, 0, 0));
}
