//! The kernel sources in `kernels/` (embedded), NVRTC compilation per device architecture, and the
//! host-side launch geometry. Compilation needs only libnvrtc, no GPU: CI compiles every file for
//! sm_80 and sm_90.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{CompileOptions, Ptx};

/// Prepended to every file: storage types and conversions, warp/block reductions.
pub const PRELUDE: &str = include_str!("../../../../kernels/common.cuh");

/// `(file, source, entry points)` of every kernel file.
pub const SOURCES: &[(&str, &str, &[&str])] = &[
    ("embed.cu", include_str!("../../../../kernels/embed.cu"), &["embed_bf16", "embed_f16", "embed_f32"]),
    ("norm.cu", include_str!("../../../../kernels/norm.cu"), &["rms_norm_f32", "add_rms_norm_f32"]),
    ("rope.cu", include_str!("../../../../kernels/rope.cu"), &["rope_neox_f32"]),
    (
        "activation.cu",
        include_str!("../../../../kernels/activation.cu"),
        &[
            "gelu_mul_f32",
            "silu_mul_f32",
            "add_f32",
            "add_bias_f32",
            "cast_f32_bf16",
            "cast_f32_f16",
            "select_rows_f32",
        ],
    ),
    ("kv_cache.cu", include_str!("../../../../kernels/kv_cache.cu"), &["kv_write_f16"]),
    (
        "attention.cu",
        include_str!("../../../../kernels/attention.cu"),
        &[
            "attention_f32_g4_d4",
            "attention_f32_g8_d4",
            "attention_f32_g4_d8",
            "attention_f32_g8_d8",
            "attention_combine_f32",
        ],
    ),
    ("sample.cu", include_str!("../../../../kernels/sample.cu"), &["argmax_f32"]),
];

/// Threads per block of `attention_f32` (`ATTN_THREADS` in attention.cu).
pub const ATTN_THREADS: u32 = 128;
/// The `attention_f32_g{G}_d{D}` entry point for `group` query heads per KV head and `head_dim`:
/// the smallest compiled bound that fits (fewer registers), or `None` beyond the largest.
pub fn attention_kernel(group: usize, head_dim: usize) -> Option<&'static str> {
    [
        (4, 4, "attention_f32_g4_d4"),
        (8, 4, "attention_f32_g8_d4"),
        (4, 8, "attention_f32_g4_d8"),
        (8, 8, "attention_f32_g8_d8"),
    ]
    .into_iter()
    .find(|&(g, d, _)| group <= g && head_dim <= 32 * d)
    .map(|(_, _, name)| name)
}

/// Fewest keys per split of `attention_f32`.
pub const ATTN_MIN_CHUNK: usize = 32;
/// Largest head dimension `attention_f32` handles (`ATTN_MAXD`).
pub const ATTN_MAX_HEAD_DIM: usize = 256;

/// How many splits of each row's key range `attention_f32` runs: enough blocks to give every
/// multiprocessor about eight (each block's loads wait on memory; many blocks hide that), never a
/// split shorter than `ATTN_MIN_CHUNK` keys, one when the batch fills the GPU.
pub fn attention_splits(rows: usize, kv_heads: usize, max_keys: usize, multiprocessors: usize) -> usize {
    let blocks = (rows * kv_heads).max(1);
    let want = (8 * multiprocessors).div_ceil(blocks);
    want.clamp(1, max_keys.div_ceil(ATTN_MIN_CHUNK).max(1))
}

/// NVRTC's name for a compute capability, e.g. `(9, 0)` → `sm_90`.
pub fn arch_name(major: i32, minor: i32) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<(i32, i32), &'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().expect("arch name cache poisoned. This is a bug.");
    // One short string per distinct architecture for the life of the process.
    names.entry((major, minor)).or_insert_with(|| Box::leak(format!("sm_{major}{minor}").into_boxed_str()))
}

/// Compiles one kernel file (prelude + source) to PTX for `arch`.
pub fn compile(file: &str, source: &str, arch: &'static str) -> Result<Ptx, String> {
    let src = format!("{PRELUDE}\n#line 1 \"{file}\"\n{source}");
    let opts = CompileOptions {
        arch: Some(arch),
        name: Some(file.to_string()),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src, opts)
        .map_err(|e| format!("NVRTC failed on kernels/{file} for {arch}: {e}"))
}

/// Every kernel file compiled for `arch`, compiled once per process and architecture.
pub fn compile_all(arch: &'static str) -> Result<Vec<(&'static str, Ptx)>, String> {
    type Cache = Mutex<HashMap<&'static str, Vec<(&'static str, String)>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("PTX cache poisoned. This is a bug.");
    if !cache.contains_key(arch) {
        let mut out = Vec::with_capacity(SOURCES.len());
        for (file, src, _) in SOURCES {
            out.push((*file, compile(file, src, arch)?.to_src()));
        }
        cache.insert(arch, out);
    }
    Ok(cache[arch].iter().map(|(f, p)| (*f, Ptx::from_src(p.clone()))).collect())
}

/// Threads for a block that strides over `n` values: a multiple of 32 in `32..=max`.
pub fn block_threads(n: usize, max: u32) -> u32 {
    (n.div_ceil(32) * 32).clamp(32, max as usize) as u32
}

/// Grid size for a grid-stride elementwise kernel over `n` values with `threads` per block.
pub fn elementwise_blocks(n: usize, threads: u32) -> u32 {
    n.div_ceil(threads as usize).clamp(1, 8192) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(arch_name(9, 0), "sm_90");
        assert_eq!(arch_name(8, 0), "sm_80");
        assert!(std::ptr::eq(arch_name(8, 6), arch_name(8, 6)), "one string per architecture");
    }

    #[test]
    fn attention_kernel_choice() {
        assert_eq!(attention_kernel(4, 128), Some("attention_f32_g4_d4"), "Llama 3.1 8B");
        assert_eq!(attention_kernel(7, 128), Some("attention_f32_g8_d4"), "Qwen2.5 7B");
        assert_eq!(attention_kernel(4, 256), Some("attention_f32_g4_d8"), "Gemma 3 270M");
        assert_eq!(attention_kernel(8, 256), Some("attention_f32_g8_d8"));
        assert_eq!(attention_kernel(3, 96), Some("attention_f32_g4_d4"));
        assert_eq!(attention_kernel(16, 128), None);
        assert_eq!(attention_kernel(1, 512), None);
    }

    #[test]
    fn attention_split_counts() {
        // Batch 1 with 8 KV heads on 132 multiprocessors: split a long context, never below 32 keys.
        assert_eq!(attention_splits(1, 8, 1024, 132), 32);
        assert_eq!(attention_splits(1, 8, 100_000, 132), 132);
        assert_eq!(attention_splits(1, 8, 10, 132), 1);
        // A large batch splits a little; a prefill not at all.
        assert_eq!(attention_splits(64, 8, 1024, 132), 3);
        assert_eq!(attention_splits(2048, 8, 2048, 132), 1);
        assert_eq!(attention_splits(16, 1, 4096, 132), 66);
    }

    #[test]
    fn launch_geometry() {
        assert_eq!(block_threads(1, 256), 32);
        assert_eq!(block_threads(100, 256), 128);
        assert_eq!(block_threads(640, 256), 256);
        assert_eq!(block_threads(5000, 1024), 1024);
        assert_eq!(elementwise_blocks(0, 256), 1);
        assert_eq!(elementwise_blocks(257, 256), 2);
        assert_eq!(elementwise_blocks(usize::MAX / 2, 256), 8192);
    }

    #[test]
    fn every_entry_point_is_defined_in_its_file() {
        for (file, src, entries) in SOURCES {
            for e in *entries {
                let defined = match e.strip_prefix("attention_f32_g").and_then(|r| r.split_once("_d")) {
                    Some((g, d)) => src.contains(&format!("ATTN_ENTRY({g}, {d},")),
                    None => src.contains(&format!("void {e}(")),
                };
                assert!(defined, "{e} is not defined in kernels/{file}");
            }
        }
    }
}
