//! CUDA backend benchmark on the device (skips with a message where there is none).
//!
//! For a dummy (seeded random bf16) Llama-3.1-8B-shaped model: decode step time at batch 1 and 64
//! with a 1024-token context against the HBM-bandwidth floor (weight + KV bytes read per step over
//! the measured device-to-device copy bandwidth), prefill of 2,048 tokens, and engine throughput at
//! concurrency 64 (128-token prompts, 128 new tokens, greedy, ignore_eos). With `--gemma` (and the
//! default model in the store), Gemma 3 270M decode at batch 1 and 64 as well.
//!
//!     cargo bench -p hearth-benches --bench cuda -- [--config models/llama-3.1-8b.json] [--gemma] [--skip-llama] [--json FILE]

use std::time::Instant;

use hearth_backends::cuda::{CudaOps, GemmDtype, Gpu, unavailable_reason};
use hearth_backends::{CudaBackend, CudaOptions};
use hearth_benches::synthetic_tokens;
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_engine::{Engine, EngineConfig, GenerateRequest};
use hearth_models::ops::{AttnParams, KvSpec, Ops};
use hearth_models::{ArchConfig, GgufFile, store};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Device-to-device copy bandwidth, counting bytes read and written.
fn copy_bandwidth(b: &mut CudaBackend) -> f64 {
    let gpu = b.ops_mut().gpu();
    let n = 1usize << 30;
    let src = gpu.stream.alloc_zeros::<u8>(n).expect("alloc");
    let mut dst = gpu.stream.alloc_zeros::<u8>(n).expect("alloc");
    let mut times = Vec::new();
    for _ in 0..8 {
        gpu.stream.synchronize().expect("sync");
        let t = Instant::now();
        gpu.stream.memcpy_dtod(&src, &mut dst).expect("copy");
        gpu.stream.synchronize().expect("sync");
        times.push(t.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / median(times)
}

/// `batch` sequences each at `context` tokens (KV contents do not matter for timing), disjoint
/// blocks, greedy (the argmax taken on the device, as the engine asks for plain-greedy requests).
fn decode_plan(batch: usize, context: usize, block: usize) -> StepPlan {
    let per = (context + 1).div_ceil(block);
    let mut plan = StepPlan::default();
    for s in 0..batch {
        let table: Vec<u32> = ((s * per) as u32..((s + 1) * per) as u32).collect();
        plan.push(&[1000 + s as u32], context, table, LogitsWanted::Greedy);
    }
    plan
}

fn time_steps(b: &mut dyn Backend, plan: &StepPlan, iters: usize) -> f64 {
    b.execute(plan).expect("warm-up step");
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                b.execute(plan).expect("step");
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn engine_throughput(b: CudaBackend, concurrency: usize, prompt: usize, new: usize) -> (f64, f64, f64) {
    let cfg = EngineConfig { max_num_seqs: concurrency, max_batch_tokens: 8192, ..Default::default() };
    let (h, _thread) = Engine::spawn(b, cfg, None);
    let req = |i: usize| GenerateRequest {
        ignore_eos: true,
        ..GenerateRequest::greedy(synthetic_tokens(prompt, 5000 + i as u32).iter().map(|t| t % 100_000).collect(), new)
    };
    h.submit(req(9999)).expect("submit").collect_blocking();
    let t = Instant::now();
    let streams: Vec<_> = (0..concurrency).map(|i| h.submit(req(i)).expect("submit")).collect();
    let (mut tokens, mut ttft) = (0, Vec::new());
    for s in streams {
        let (toks, info) = s.collect_blocking();
        tokens += toks.len();
        ttft.push(info.time_to_first_token.map_or(f64::NAN, |d| d.as_secs_f64()));
    }
    let wall = t.elapsed().as_secs_f64();
    (tokens as f64 / wall, median(ttft), wall)
}

fn main() {
    if let Some(why) = unavailable_reason() {
        println!("skipping the CUDA benchmark: {why}");
        return;
    }
    let mut report = serde_json::Map::new();
    if std::env::args().any(|a| a == "--attention-probe") {
        attention_probe();
        return;
    }
    if !std::env::args().any(|a| a == "--skip-llama") {
        llama(&mut report);
    }
    gemma(&mut report);
    if let Some(path) = arg("--json") {
        std::fs::write(&path, serde_json::to_string_pretty(&serde_json::Value::Object(report)).expect("json"))
            .expect("write report");
    }
}

fn llama(report: &mut serde_json::Map<String, serde_json::Value>) {
    let config = arg("--config").unwrap_or_else(|| {
        let here = std::path::Path::new("models/llama-3.1-8b.json");
        if here.exists() { here.display().to_string() } else { "../models/llama-3.1-8b.json".into() }
    });
    let arch = ArchConfig::for_dummy_weights(std::path::Path::new(&config)).expect("model config");
    let ArchConfig::Llama(lc) = &arch else { unreachable!("dummy configs are Llama-family") };
    let (ctx, block) = (1024, 16);
    let opts =
        CudaOptions { kv_cache_bytes: 12 << 30, max_batch_tokens: 8192, block_size: block, ..Default::default() };
    let t = Instant::now();
    let mut b = CudaBackend::dummy(arch.clone(), &opts, 0).expect("load dummy model");
    let load_s = t.elapsed().as_secs_f64();
    let gpu_name = b.ops_mut().gpu().name.clone();
    let bw = copy_bandwidth(&mut b);
    let weight_bytes = 2.0 * lc.parameters() as f64;
    let kv_token = lc.kv_spec().bytes_per_token(2) as f64;
    println!("device: {gpu_name}; copy bandwidth {:.2} TB/s (read + write)", bw / 1e12);
    println!("model: {config} dummy bf16, {:.2} GB of weights, loaded in {load_s:.1} s", weight_bytes / 1e9);
    report.insert("device".into(), gpu_name.into());
    report.insert("copy_bandwidth_bytes_per_s".into(), bw.into());
    report.insert("weight_bytes".into(), weight_bytes.into());

    println!("{:<28} {:>10} {:>10} {:>8} {:>12}", "case", "step ms", "floor ms", "ratio", "tok/s");
    for batch in [1usize, 64] {
        let plan = decode_plan(batch, ctx, block);
        let floor = (weight_bytes + batch as f64 * (ctx + 1) as f64 * kv_token) / bw;
        for graphs in [false, true] {
            b.set_cuda_graphs(graphs);
            let step = time_steps(&mut b, &plan, 20);
            let name = format!("decode b{batch} ctx{ctx} {}", if graphs { "graph" } else { "eager" });
            println!(
                "{name:<28} {:>10.2} {:>10.2} {:>7.2}x {:>12.0}",
                step * 1e3,
                floor * 1e3,
                step / floor,
                batch as f64 / step
            );
            report.insert(name, serde_json::json!({"step_s": step, "floor_s": floor}));
        }
    }
    if std::env::args().any(|a| a == "--profile") {
        b.set_cuda_graphs(false);
        for batch in [1usize, 64] {
            let plan = decode_plan(batch, ctx, block);
            b.execute(&plan).expect("step");
            b.ops_mut().set_profiling(true);
            let steps = 3;
            for _ in 0..steps {
                b.execute(&plan).expect("step");
            }
            let mut prof = b.ops_mut().take_profile();
            b.ops_mut().set_profiling(false);
            prof.sort_by_key(|p| std::cmp::Reverse(p.1));
            let total: f64 = prof.iter().map(|p| p.1.as_secs_f64()).sum::<f64>() / steps as f64;
            println!(
                "profile: decode b{batch} ctx{ctx}, kernel by kernel, stream drained around each op: {:.2} ms per step",
                total * 1e3
            );
            for (label, d, n) in &prof {
                let ms = d.as_secs_f64() * 1e3 / steps as f64;
                println!(
                    "profile:   {label:<34} {ms:>8.3} ms {:>5.1}% {:>5} calls/step",
                    100.0 * ms / (total * 1e3),
                    n / steps as u64
                );
            }
        }
        gemm_probe(&mut b);
        b.set_cuda_graphs(true);
    }
    let prefill = StepPlan::single(
        synthetic_tokens(2048, 7).iter().map(|t| t % 100_000).collect(),
        0,
        (0..129).collect(),
        LogitsWanted::Last,
    );
    let step = time_steps(&mut b, &prefill, 5);
    println!("{:<28} {:>10.2} {:>10} {:>8} {:>12.0}", "prefill 2048", step * 1e3, "", "", 2048.0 / step);
    report.insert("prefill 2048".into(), serde_json::json!({"step_s": step}));

    let (tps, ttft, wall) = engine_throughput(b, 64, 128, 128);
    println!("engine c64 128+128: {tps:.0} output tok/s, TTFT p50 {:.1} ms, {wall:.2} s", ttft * 1e3);
    report
        .insert("engine c64".into(), serde_json::json!({"output_tok_per_s": tps, "ttft_p50_s": ttft, "wall_s": wall}));
}

fn gemma(report: &mut serde_json::Map<String, serde_json::Value>) {
    if std::env::args().any(|a| a == "--gemma") {
        let g = GgufFile::open(store::default_model_for_tests()).expect("default model");
        let mut gb =
            CudaBackend::load(&g, &CudaOptions { kv_cache_bytes: 2 << 30, ..Default::default() }).expect("gemma");
        for batch in [1usize, 64] {
            let step = time_steps(&mut gb, &decode_plan(batch, 256, 16), 20);
            println!("gemma3-270m decode b{batch} ctx256: {:.2} ms, {:.0} tok/s", step * 1e3, batch as f64 / step);
            report.insert(format!("gemma3-270m decode b{batch}"), serde_json::json!({"step_s": step}));
        }
    }
}

#[allow(unsafe_code)]
/// cuBLAS bf16 GEMMs at the 8B model's shapes, f32 output (what the backend asks) against bf16
/// output: does the output type change cuBLAS's kernel choice?
fn gemm_probe(b: &mut CudaBackend) {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let gpu = b.ops_mut().gpu();
    let s = &gpu.stream;
    for (m, k) in [(4096usize, 4096usize), (14336, 4096), (4096, 14336), (128256, 4096)] {
        for n in [1usize, 64] {
            let w = s.alloc_zeros::<u16>(m * k).expect("alloc");
            let x = s.alloc_zeros::<u16>(n * k).expect("alloc");
            let mut c32 = s.alloc_zeros::<f32>(n * m).expect("alloc");
            let mut c16 = s.alloc_zeros::<u16>(n * m).expect("alloc");
            let mut line = format!("gemm probe: {m}x{k} · n={n}:");
            for (label, out_type) in [("f32 out", cudaDataType::CUDA_R_32F), ("bf16 out", cudaDataType::CUDA_R_16BF)] {
                let (alpha, beta) = (1.0f32, 0.0f32);
                let (wp, _a) = w.device_ptr(s);
                let (xp, _b) = x.device_ptr(s);
                let cp = if out_type == cudaDataType::CUDA_R_32F {
                    c32.device_ptr_mut(s).0
                } else {
                    c16.device_ptr_mut(s).0
                };
                // SAFETY: all pointers are live device buffers of the stated shapes on `s`.
                let run = || unsafe {
                    cudarc::cublas::result::gemm_ex(
                        *gpu.blas.handle(),
                        cublasOperation_t::CUBLAS_OP_T,
                        cublasOperation_t::CUBLAS_OP_N,
                        m as i32,
                        n as i32,
                        k as i32,
                        (&alpha) as *const f32 as *const std::ffi::c_void,
                        wp as *const std::ffi::c_void,
                        cudaDataType::CUDA_R_16BF,
                        k as i32,
                        xp as *const std::ffi::c_void,
                        cudaDataType::CUDA_R_16BF,
                        k as i32,
                        (&beta) as *const f32 as *const std::ffi::c_void,
                        cp as *mut std::ffi::c_void,
                        out_type,
                        m as i32,
                        cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                    .expect("gemm")
                };
                run();
                s.synchronize().expect("sync");
                let iters = 50;
                let t = Instant::now();
                for _ in 0..iters {
                    run();
                }
                s.synchronize().expect("sync");
                let sec = t.elapsed().as_secs_f64() / iters as f64;
                line += &format!("  {label} {:.1} us ({:.0} GB/s)", sec * 1e6, (2 * m * k) as f64 / sec / 1e9);
            }
            println!("{line}");
        }
    }
}

/// The attention op alone at Llama-3.1-8B's layer shape (32 query heads over 8 KV heads of 128):
/// time per call (stream drained once per 20 calls) and the KV bytes it reads per second. For
/// kernel work and for profilers (`ncu --kernel-name regex:attention`), without loading a model.
fn attention_probe() {
    let gpu = Gpu::open(0).expect("GPU");
    let spec = KvSpec { layers: 1, kv_heads: 8, head_dim: 128 };
    let block = 16;
    let mut ops = CudaOps::new(gpu, spec, block, 64 * 260, GemmDtype::Bf16).expect("ops");
    let p =
        AttnParams { layer: 0, n_heads: 32, n_kv_heads: 8, head_dim: 128, scale: 0.088, window: None, softcap: None };
    let kv_token = 2 * 8 * 128 * 2;
    let mut cases: Vec<(String, StepPlan, usize)> = Vec::new();
    for (batch, ctx) in [(1usize, 1024usize), (64, 1024), (16, 4096)] {
        cases.push((format!("decode b{batch} ctx{ctx}"), decode_plan(batch, ctx, block), batch * (ctx + 1) * kv_token));
    }
    let n = 2048;
    cases.push((
        format!("prefill {n}"),
        StepPlan::single(vec![1; n], 0, (0..(n / block) as u32).collect(), LogitsWanted::Last),
        n * kv_token,
    ));
    for (name, plan, bytes) in cases {
        let rows = plan.tokens.len();
        let q = ops.upload(&vec![0.01f32; rows * 4096], rows, 4096).expect("upload");
        let k = ops.upload(&vec![0.02f32; rows * 1024], rows, 1024).expect("upload");
        let v = ops.upload(&vec![0.03f32; rows * 1024], rows, 1024).expect("upload");
        for _ in 0..3 {
            ops.attention(&q, &k, &v, &plan, &p).expect("attention");
        }
        ops.synchronize().expect("sync");
        let iters = 20;
        let t = Instant::now();
        for _ in 0..iters {
            ops.attention(&q, &k, &v, &plan, &p).expect("attention");
        }
        ops.synchronize().expect("sync");
        let sec = t.elapsed().as_secs_f64() / iters as f64;
        println!("attention probe: {name:<22} {:>9.1} us  {:>7.0} GB/s of KV", sec * 1e6, bytes as f64 / sec / 1e9);
    }
}
