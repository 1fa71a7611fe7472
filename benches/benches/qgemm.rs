//! The CPU backend's quantized matmul alone, at the default model's shapes: integer MACs per
//! second per weight format, batch size and instruction set.
//!
//!     cargo bench -p hearth-benches --bench qgemm

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hearth_backends::cpu::qgemm::{Isa, PackedMatrix, QAct, matmul};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let shapes: &[(&str, GgmlDType, usize, usize)] = &[
        ("head Q8_0", GgmlDType::Q8_0, 32768, 640),
        ("ffn_up Q5_0", GgmlDType::Q5_0, 2048, 640),
        ("ffn_down Q6_K", GgmlDType::Q6K, 640, 2048),
        ("attn_output Q4_K", GgmlDType::Q4K, 640, 1024),
    ];
    println!("| weight [out, k] | rows | ISA | µs/call | GMAC/s |\n|---|---|---|---|---|");
    for &(name, dtype, out, k) in shapes {
        let w: Vec<f32> = (0..out * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let w = QTensor::quantize(&Tensor::from_vec(w, (out, k), &Device::Cpu).unwrap(), dtype).unwrap();
        let p = PackedMatrix::pack(&w).unwrap();
        for rows in [1usize, 16, 32, 128] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 104729 % 1000) as f32 / 500.0) - 1.0).collect();
            let mut a = QAct::default();
            a.quantize(&x, rows, k);
            let mut y = vec![0f32; rows * out];
            for &isa in Isa::available().iter().rev().take(if quick { 1 } else { 3 }) {
                if isa == Isa::Portable && rows > 1 {
                    continue;
                }
                matmul(&p, &a, &mut y, isa);
                let iters = (2e9 / (rows * out * k) as f64).clamp(3.0, 2000.0) as u32;
                let t0 = Instant::now();
                for _ in 0..iters {
                    matmul(&p, &a, &mut y, isa);
                }
                let per = t0.elapsed().as_secs_f64() / iters as f64;
                let gmacs = (rows * out * k) as f64 / per / 1e9;
                println!("| {name} [{out}, {k}] | {rows} | {isa:?} | {:.1} | {gmacs:.1} |", per * 1e6);
            }
        }
    }
}
