//! Every CUDA op against its CPU reference on random inputs, and a tiny seeded Gemma 3 end to end
//! (CUDA backend vs CPU backend). Needs a GPU: without one each test prints why and passes, unless
//! `HEARTH_REQUIRE_GPU=1` (set by `scripts/gpu-check.sh`) makes that a failure.
//!
//! Tolerances (relative to the largest magnitude of the reference):
//! - norms, RoPE, GELU, attention, row selection: 1e-3 (same f16 KV and f16-rounded q as the CPU;
//!   only the order of f32 sums differs);
//! - embedding and matmul: 1e-2 (bf16 weights and bf16 GEMM inputs, f32 accumulation), against
//!   an f64 product of the same dequantized weights;
//! - whole tiny model: 5e-2 on the logits, and the same argmax on rows whose top-2 margin exceeds it.

use hearth_backends::cpu::{CpuAct, CpuOps};
use hearth_backends::cuda::{CudaAct, CudaOps, GemmDtype, Gpu, unavailable_reason};
use hearth_backends::{CpuBackend, CpuOptions, CudaBackend, CudaOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_models::GgufFile;
use hearth_models::candle_core::quantized::{GgmlDType, QTensor};
use hearth_models::candle_core::{Device, Tensor};
use hearth_models::ops::{AttnParams, KvSpec, Ops, RopeParams};
use hearth_models::testing::{SeededRng, TinySpec, tiny_gemma3_weights, write_tiny_gguf};

fn gpu() -> Option<Gpu> {
    if let Some(why) = unavailable_reason() {
        assert!(std::env::var_os("HEARTH_REQUIRE_GPU").is_none(), "HEARTH_REQUIRE_GPU is set but: {why}");
        eprintln!("skipping: no usable CUDA device ({why})");
        return None;
    }
    Some(Gpu::open(0).expect("opening the GPU"))
}

fn rand_vec(rng: &mut SeededRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| scale * rng.next_f32()).collect()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = rel_err(got, want);
    eprintln!("{what}: max relative error {e:.2e} (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: max relative error {e:.3e} > {tol:.0e}");
}

struct Pair {
    cpu: CpuOps,
    gpu: CudaOps,
}

fn pair(g: Gpu, spec: KvSpec, bs: usize, blocks: usize) -> Pair {
    Pair {
        cpu: CpuOps::new(spec, bs, blocks),
        gpu: CudaOps::new(g, spec, bs, blocks, GemmDtype::default()).expect("CUDA ops"),
    }
}

fn up(p: &Pair, data: &[f32], rows: usize, cols: usize) -> (CpuAct, CudaAct) {
    (CpuAct::new(data.to_vec(), rows, cols), p.gpu.upload(data, rows, cols).unwrap())
}

const SPEC: KvSpec = KvSpec { layers: 2, kv_heads: 2, head_dim: 128 };

#[test]
fn norms_rope_gelu_select_match_cpu() {
    let Some(g) = gpu() else { return };
    let mut p = pair(g, SPEC, 16, 64);
    let mut rng = SeededRng::new(1);
    for rows in [1usize, 7, 67] {
        let cols = 640;
        let x = rand_vec(&mut rng, rows * cols, 3.0);
        let (xc, xg) = up(&p, &x, rows, cols);
        for group in [cols, 128] {
            let w = rand_vec(&mut rng, group, 1.0);
            let (wc, wg) = (p.cpu.load_vector("w", w.clone()).unwrap(), p.gpu.load_vector("w", w).unwrap());
            let a = p.cpu.rms_norm(&xc, &wc, 1e-6).unwrap();
            let b = p.gpu.rms_norm(&xg, &wg, 1e-6).unwrap();
            check(&format!("rms_norm rows {rows} group {group}"), &p.gpu.to_host(&b).unwrap(), &a.data, 1e-3);
        }
        let w = rand_vec(&mut rng, cols, 1.0);
        let (wc, wg) = (p.cpu.load_vector("w", w.clone()).unwrap(), p.gpu.load_vector("w", w).unwrap());
        let y = rand_vec(&mut rng, rows * cols, 50.0);
        let (mut acc_c, mut acc_g) = up(&p, &y, rows, cols);
        p.cpu.add_rms_norm(&mut acc_c, &xc, &wc, 1e-6).unwrap();
        p.gpu.add_rms_norm(&mut acc_g, &xg, &wg, 1e-6).unwrap();
        check(&format!("add_rms_norm rows {rows}"), &p.gpu.to_host(&acc_g).unwrap(), &acc_c.data, 1e-3);

        let positions: Vec<u32> = (0..rows as u32).map(|i| i * 37 + 5).collect();
        // Llama 3.1's frequency divisors (base 500000, factor 8, cut-offs 2048 / 8192 positions).
        let llama31 = hearth_models::llama::llama3_freq_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        for (hd, base, scale, interleaved, factors) in [
            (128usize, 10_000.0f32, 1.0f32, false, None),
            (256, 1_000_000.0, 8.0, false, None),
            (128, 500_000.0, 1.0, true, None),
            (128, 500_000.0, 1.0, true, Some(&llama31[..])),
            (128, 500_000.0, 1.0, false, Some(&llama31[..])),
        ] {
            let (mut rc, mut rg) = up(&p, &x[..rows * 512], rows, 512);
            let rp = RopeParams { head_dim: hd, base, position_scale: scale, freq_factors: factors, interleaved };
            p.cpu.rope(&mut rc, &positions, &rp).unwrap();
            p.gpu.rope(&mut rg, &positions, &rp).unwrap();
            check(
                &format!("rope rows {rows} head_dim {hd} interleaved {interleaved} factors {}", factors.is_some()),
                &p.gpu.to_host(&rg).unwrap(),
                &rc.data,
                1e-3,
            );
        }

        let u = rand_vec(&mut rng, rows * cols, 2.0);
        let (uc, ug) = up(&p, &u, rows, cols);
        let a = p.cpu.gelu_mul(&xc, &uc).unwrap();
        let b = p.gpu.gelu_mul(&xg, &ug).unwrap();
        check(&format!("gelu_mul rows {rows}"), &p.gpu.to_host(&b).unwrap(), &a.data, 1e-3);
        let a = p.cpu.silu_mul(&xc, &uc).unwrap();
        let b = p.gpu.silu_mul(&xg, &ug).unwrap();
        check(&format!("silu_mul rows {rows}"), &p.gpu.to_host(&b).unwrap(), &a.data, 1e-3);

        let (mut ac, mut ag) = up(&p, &u, rows, cols);
        p.cpu.add(&mut ac, &xc).unwrap();
        p.gpu.add(&mut ag, &xg).unwrap();
        check(&format!("add rows {rows}"), &p.gpu.to_host(&ag).unwrap(), &ac.data, 1e-6);
        let bias = rand_vec(&mut rng, cols, 1.0);
        let (bc, bg) = (p.cpu.load_vector("b", bias.clone()).unwrap(), p.gpu.load_vector("b", bias).unwrap());
        p.cpu.add_bias(&mut ac, &bc).unwrap();
        p.gpu.add_bias(&mut ag, &bg).unwrap();
        check(&format!("add_bias rows {rows}"), &p.gpu.to_host(&ag).unwrap(), &ac.data, 1e-6);

        let pick: Vec<usize> = (0..rows).rev().step_by(2).collect();
        let a = p.cpu.select_rows(&xc, &pick).unwrap();
        let b = p.gpu.select_rows(&xg, &pick).unwrap();
        assert_eq!(p.gpu.to_host(&b).unwrap(), a.data, "select_rows is a copy");

        let am = p.gpu.argmax(&xg).unwrap();
        for (r, &i) in am.iter().enumerate() {
            let row = &x[r * cols..(r + 1) * cols];
            let best = row.iter().enumerate().fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            assert_eq!(i as usize, best, "argmax of row {r}");
        }
    }
}

fn quantized(rng: &mut SeededRng, out: usize, k: usize, dtype: GgmlDType) -> (QTensor, Vec<f32>) {
    let w = rand_vec(rng, out * k, 0.5);
    let t = Tensor::from_vec(w, (out, k), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, dtype).unwrap();
    let deq = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (q, deq)
}

/// Each GEMM dtype against an f64 product of the same dequantized weights: bf16 within 1e-2,
/// f16 within 2e-3, f32 within 1e-5 (relative to the largest output).
#[test]
fn matmul_and_embed_match_f64_reference() {
    if gpu().is_none() {
        return;
    }
    for (dtype, tol) in [(GemmDtype::Bf16, 1e-2), (GemmDtype::F16, 2e-3), (GemmDtype::F32, 1e-5)] {
        let mut ops = CudaOps::new(gpu().expect("GPU"), SPEC, 16, 4, dtype).expect("CUDA ops");
        let mut rng = SeededRng::new(2);
        for (q, out, k) in [
            (GgmlDType::Q8_0, 96, 256),
            (GgmlDType::Q5_0, 160, 512),
            (GgmlDType::Q4K, 96, 512),
            (GgmlDType::Q6K, 272, 256),
        ] {
            let (qt, deq) = quantized(&mut rng, out, k, q);
            let wg = ops.load_matrix("w", qt).unwrap();
            for rows in [1usize, 2, 7, 16, 67] {
                let x = rand_vec(&mut rng, rows * k, 2.0);
                let want: Vec<f32> = (0..rows)
                    .flat_map(|r| {
                        let xr = &x[r * k..(r + 1) * k];
                        deq.chunks(k)
                            .map(move |wr| wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32)
                    })
                    .collect();
                let xg = ops.upload(&x, rows, k).unwrap();
                let y = ops.matmul(&xg, &wg).unwrap();
                check(&format!("matmul {dtype:?} {q:?} {rows}x{k} · {out}"), &ops.to_host(&y).unwrap(), &want, tol);
            }
            let ids: Vec<u32> = vec![0, (out - 1) as u32, 3, 3];
            let e = ops.embed(&wg, &ids, 1.5).unwrap();
            let want: Vec<f32> =
                ids.iter().flat_map(|&i| deq[i as usize * k..(i as usize + 1) * k].iter().map(|v| v * 1.5)).collect();
            check(&format!("embed {dtype:?} {q:?}"), &ops.to_host(&e).unwrap(), &want, tol);
            assert!(ops.embed(&wg, &[out as u32], 1.0).is_err(), "out-of-range token is an error");
        }
    }
}

/// Two steps over three sequences with scattered blocks: prefill chunks after cached context,
/// decode rows, GQA, global and sliding-window layers.
#[test]
fn paged_attention_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    // (query heads, KV heads, head_dim): Llama-like GQA, Gemma-like (one KV head of 256), an odd
    // head size (3 dims per lane).
    for (heads, kv_heads, hd) in [(8usize, 2usize, 128usize), (4, 1, 256), (6, 2, 96)] {
        paged_attention_case(heads, kv_heads, hd);
    }
}

fn paged_attention_case(heads: usize, kv_heads: usize, hd: usize) {
    let spec = KvSpec { layers: 2, kv_heads, head_dim: hd };
    let bs = 16;
    let mut p = pair(gpu().expect("GPU"), spec, bs, 64);
    let mut rng = SeededRng::new(3);
    let kvd = kv_heads * hd;
    let mut tables = vec![vec![5u32, 9, 1, 40, 41, 42], vec![2, 63, 7], vec![11, 12, 13, 14, 15, 16, 17, 18]];
    // A long sequence in the remaining blocks, in reverse order.
    let used: Vec<u32> = tables.concat();
    tables.push((0..64u32).rev().filter(|b| !used.contains(b)).take(44).collect());
    // (cached, new) per sequence and step; (0, 0) leaves a sequence out. Step 1 prefills; step 2
    // mixes decode rows and a chunk (a few splits per row); step 3 is one long decode row (many splits).
    let steps = [
        [(0usize, 37usize), (0, 20), (0, 70), (0, 690)],
        [(37, 1), (20, 19), (70, 1), (690, 1)],
        [(0, 0), (0, 0), (0, 0), (691, 1)],
    ];
    for (si, shape) in steps.iter().enumerate() {
        let mut step = StepPlan::default();
        for (s, &(cached, new)) in shape.iter().enumerate() {
            if new == 0 {
                continue;
            }
            let toks: Vec<u32> = (0..new as u32).collect();
            step.push(&toks, cached, tables[s].clone(), LogitsWanted::Last);
        }
        step.validate(bs, 64, 4096, 1 << 20).unwrap();
        let rows = step.tokens.len();
        let q = rand_vec(&mut rng, rows * heads * hd, 2.0);
        let k = rand_vec(&mut rng, rows * kvd, 2.0);
        let v = rand_vec(&mut rng, rows * kvd, 1.0);
        for (layer, window, softcap) in [(0usize, None, None), (1, Some(24usize), Some(30.0f32))] {
            let ap = AttnParams {
                layer,
                n_heads: heads,
                n_kv_heads: kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                window,
                softcap,
            };
            let (qc, qg) = up(&p, &q, rows, heads * hd);
            let (kc, kg) = up(&p, &k, rows, kvd);
            let (vc, vg) = up(&p, &v, rows, kvd);
            let a = p.cpu.attention(&qc, &kc, &vc, &step, &ap).unwrap();
            let b = p.gpu.attention(&qg, &kg, &vg, &step, &ap).unwrap();
            check(
                &format!("attention {heads}/{kv_heads}x{hd} step {si} layer {layer} window {window:?}"),
                &p.gpu.to_host(&b).unwrap(),
                &a.data,
                1e-3,
            );
        }
    }
}

#[test]
fn tiny_gemma3_cuda_matches_cpu() {
    if gpu().is_none() {
        return;
    }
    let spec = TinySpec::default();
    let dir = std::env::temp_dir().join(format!("hearth-cuda-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 7), GgmlDType::F32).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let mut cpu = CpuBackend::load(&g, &CpuOptions { kv_cache_bytes: 1 << 20, ..CpuOptions::default() }).unwrap();
    let mut cuda = CudaBackend::load(&g, &CudaOptions { kv_cache_bytes: 1 << 20, ..CudaOptions::default() }).unwrap();
    let prompt: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % spec.vocab as u32).collect();
    let mut plan = StepPlan::single(prompt.clone(), 0, vec![0, 1], LogitsWanted::All);
    for step in 0..6 {
        let a = cpu.execute(&plan).unwrap();
        let b = cuda.execute(&plan).unwrap();
        check(&format!("tiny gemma3 step {step} logits"), &b.logits, &a.logits, 5e-2);
        let v = a.vocab;
        for (r, (ra, rb)) in a.logits.chunks(v).zip(b.logits.chunks(v)).enumerate() {
            let mut sorted: Vec<f32> = ra.to_vec();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let scale = sorted[0].abs().max(sorted[v - 1].abs());
            let arg = |x: &[f32]| x.iter().enumerate().fold(0, |b, (j, val)| if *val > x[b] { j } else { b });
            if sorted[0] - sorted[1] > 0.1 * scale {
                assert_eq!(arg(ra), arg(rb), "step {step} row {r}: argmax differs");
            }
        }
        let last = &a.logits[a.logits.len() - v..];
        let next = last.iter().enumerate().fold(0, |b, (j, val)| if *val > last[b] { j } else { b }) as u32;
        // The device's argmax of the same row.
        let mut greedy_plan = plan.clone();
        greedy_plan.seqs[0].logits = LogitsWanted::Greedy;
        let g = cuda.execute(&greedy_plan).unwrap();
        assert!(g.logits.is_empty() && g.greedy.len() == 1, "a greedy row returns its id only");
        let gpu_last = &b.logits[b.logits.len() - v..];
        assert_eq!(g.greedy[0], hearth_core::argmax(gpu_last), "step {step}: device argmax");
        let ctx = plan.seqs[0].context_len;
        plan = StepPlan::single(vec![next], ctx, vec![0, 1], LogitsWanted::Last);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Decode steps replayed as CUDA graphs equal the same steps run kernel by kernel: the same greedy
/// ids, logits within 1e-4 (a padded batch may get another GEMM algorithm, and the graph's fixed
/// attention split count another summation order). Batches of 1 and 3 (padded to 4), greedy and
/// logits rows, contexts crossing block boundaries.
#[test]
fn decode_graphs_equal_eager_steps() {
    if gpu().is_none() {
        return;
    }
    let spec = TinySpec::default();
    let dir = std::env::temp_dir().join(format!("hearth-cuda-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.gguf");
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 9), GgmlDType::Q8_0).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let opts =
        |graphs| CudaOptions { kv_cache_bytes: 1 << 20, block_size: 4, cuda_graphs: graphs, ..CudaOptions::default() };
    let mut eager = CudaBackend::load(&g, &opts(false)).unwrap();
    let mut graphed = CudaBackend::load(&g, &opts(true)).unwrap();
    // Batch 1, then 3 (a longer prefill grows the GEMM input buffer the first graph points at),
    // then 1 again (that graph must have been recorded again).
    for batch in [1usize, 3, 1] {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|i| (0..5 + i as u32).map(|t| (t * 7 + 3 + i as u32) % spec.vocab as u32).collect())
            .collect();
        let tables: Vec<Vec<u32>> = (0..batch).map(|i| (i as u32 * 8..i as u32 * 8 + 8).collect()).collect();
        let mut prefill = StepPlan::default();
        for (p, t) in prompts.iter().zip(&tables) {
            prefill.push(p, 0, t.clone(), LogitsWanted::Last);
        }
        let a = eager.execute(&prefill).unwrap();
        let b = graphed.execute(&prefill).unwrap();
        assert_eq!(a.logits, b.logits, "prefill runs kernel by kernel on both");
        let mut next: Vec<u32> = a.logits.chunks(a.vocab).map(hearth_core::argmax).collect();
        let mut ctx: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        for step in 0..8 {
            let mut plan = StepPlan::default();
            for i in 0..batch {
                // Alternate greedy and logits rows.
                let want = if (i + step) % 2 == 0 { LogitsWanted::Greedy } else { LogitsWanted::Last };
                plan.push(&[next[i]], ctx[i], tables[i].clone(), want);
            }
            let a = eager.execute(&plan).unwrap();
            let b = graphed.execute(&plan).unwrap();
            assert_eq!(a.greedy, b.greedy, "batch {batch} step {step}: greedy ids");
            check(&format!("graph batch {batch} step {step} logits"), &b.logits, &a.logits, 1e-4);
            let (mut gi, mut li) = (0, 0);
            for i in 0..batch {
                next[i] = if plan.seqs[i].logits == LogitsWanted::Greedy {
                    gi += 1;
                    a.greedy[gi - 1]
                } else {
                    li += 1;
                    hearth_core::argmax(&a.logits[(li - 1) * a.vocab..li * a.vocab])
                };
                ctx[i] += 1;
            }
        }
    }
    assert!(graphed.graphs_captured() >= 2, "decode steps were captured ({} graphs)", graphed.graphs_captured());
    assert_eq!(eager.graphs_captured(), 0);
    std::fs::remove_dir_all(&dir).ok();
}
