//! Tiny seeded models written as real GGUF files, for fast tests of the whole loading and forward
//! path without the real model. Test support only: nothing in the serving path uses this.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// Shape of a tiny Gemma 3.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub window: usize,
    pub pattern: usize,
    pub context: usize,
    pub rope_base: f32,
}

impl Default for TinySpec {
    fn default() -> Self {
        // 3 layers with pattern 3: layers 0 and 1 slide over 8 tokens, layer 2 is global.
        TinySpec {
            vocab: 96,
            hidden: 64,
            layers: 3,
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            ffn: 96,
            window: 8,
            pattern: 3,
            context: 256,
            rope_base: 1_000_000.0,
        }
    }
}

/// A weight: name, row-major shape, values.
#[derive(Clone, Debug)]
pub struct TinyTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub use crate::dummy::SeededRng;

/// Seeded weights with GGUF names for `spec`.
pub fn tiny_gemma3_weights(spec: &TinySpec, seed: u64) -> Vec<TinyTensor> {
    let mut rng = SeededRng::new(seed);
    let mut out = Vec::new();
    let mut mat = |name: String, rows: usize, cols: usize, rng: &mut SeededRng| {
        let a = (3.0 / cols as f32).sqrt();
        let data = (0..rows * cols).map(|_| rng.next_f32() * a).collect();
        out.push(TinyTensor { name, shape: vec![rows, cols], data });
    };
    let (h, q, kv, f) = (spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.ffn);
    mat("token_embd.weight".into(), spec.vocab, h, &mut rng);
    for l in 0..spec.layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        mat(n("attn_q"), q, h, &mut rng);
        mat(n("attn_k"), kv, h, &mut rng);
        mat(n("attn_v"), kv, h, &mut rng);
        mat(n("attn_output"), h, q, &mut rng);
        mat(n("ffn_gate"), f, h, &mut rng);
        mat(n("ffn_up"), f, h, &mut rng);
        mat(n("ffn_down"), h, f, &mut rng);
    }
    let mut vecs = Vec::new();
    for l in 0..spec.layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        for (name, len) in [
            (n("attn_norm"), h),
            (n("attn_q_norm"), spec.head_dim),
            (n("attn_k_norm"), spec.head_dim),
            (n("post_attention_norm"), h),
            (n("ffn_norm"), h),
            (n("post_ffw_norm"), h),
        ] {
            vecs.push((name, len));
        }
    }
    vecs.push(("output_norm.weight".into(), h));
    for (name, len) in vecs {
        let data = (0..len).map(|_| 1.0 + 0.2 * rng.next_f32()).collect();
        out.push(TinyTensor { name, shape: vec![len], data });
    }
    out
}

/// Writes a GGUF file with `arch` as `general.architecture`; matrices in `matrix_dtype`
/// (F32 or a block format), vectors in F32.
pub fn write_tiny_gguf(
    path: &Path,
    arch: &str,
    spec: &TinySpec,
    weights: &[TinyTensor],
    matrix_dtype: GgmlDType,
) -> candle_core::Result<()> {
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (format!("{arch}.context_length"), u(spec.context)),
        (format!("{arch}.embedding_length"), u(spec.hidden)),
        (format!("{arch}.block_count"), u(spec.layers)),
        (format!("{arch}.feed_forward_length"), u(spec.ffn)),
        (format!("{arch}.attention.head_count"), u(spec.heads)),
        (format!("{arch}.attention.head_count_kv"), u(spec.kv_heads)),
        (format!("{arch}.attention.key_length"), u(spec.head_dim)),
        (format!("{arch}.attention.value_length"), u(spec.head_dim)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (format!("{arch}.rope.freq_base"), Value::F32(spec.rope_base)),
        (format!("{arch}.attention.sliding_window"), u(spec.window)),
        (format!("{arch}.attention.sliding_window_pattern"), u(spec.pattern)),
    ];
    let mut tensors = Vec::new();
    for w in weights {
        let t = Tensor::from_vec(w.data.clone(), w.shape.as_slice(), &Device::Cpu)?;
        let dtype = if w.shape.len() == 2 { matrix_dtype } else { GgmlDType::F32 };
        tensors.push((w.name.clone(), QTensor::quantize(&t, dtype)?));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)
}
