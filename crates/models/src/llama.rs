//! The Llama family (Llama 2/3, Qwen2/2.5 shapes), written once over [`Ops`].
//!
//! Pre-norm blocks: `x += o(attn(rope(q(n(x))), rope(k(n(x))), v(n(x))))`, then
//! `x += down(silu(gate(n(x))) * up(n(x)))`; final RMS norm and the output head (or the tied
//! embedding). Qwen2 adds biases to q, k and v. RoPE follows llama.cpp: Llama GGUF files have q and
//! k rows permuted by the converter for adjacent-pair ("normal") RoPE; Qwen2 uses the NeoX layout.
//!
//! Weights come from a GGUF file, or are seeded random ("dummy") for performance work at real
//! shapes, from a Hugging Face `config.json` ([`LlamaConfig::from_hf_json`]).

use std::path::Path;

use hearth_core::StepPlan;

use crate::dummy::tensor_seed;
use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::ops::{AttnParams, KvSpec, OpResult, Ops, RopeParams, logits_rows};
use crate::safetensors::SafetensorsDir;

/// Which member of the family: decides biases and the RoPE layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlamaFlavor {
    Llama,
    Qwen2,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub flavor: LlamaFlavor,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// Positions are divided by this (linear RoPE scaling); 1.0 for none.
    pub rope_position_scale: f32,
    /// Per-pair RoPE frequency divisors, `head_dim / 2` of them: Llama 3.1's long-context scaling
    /// (GGUF `rope_freqs.weight`, or computed from `rope_scaling` of type `llama3`).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Biases on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// The output head is the token embedding.
    pub tied_embeddings: bool,
    /// Weights in Hugging Face's layout (q/k rows not permuted): NeoX RoPE for every flavor.
    pub hf_layout: bool,
}

fn bad(path: &Path, reason: String) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), reason }
}

/// Linear RoPE scaling from a GGUF file's `{arch}.rope.scaling.*` keys (llama.cpp's converter
/// writes them for `rope_scaling` of type `linear`); other types are refused by name.
fn gguf_linear_rope_scale(g: &GgufFile, arch: &str) -> Result<f32> {
    let ty = format!("{arch}.rope.scaling.type");
    let kind = if g.has(&ty) { g.get_str(&ty)? } else { "none" };
    let factor = format!("{arch}.rope.scaling.factor");
    match kind {
        "none" => Ok(1.0),
        "linear" if g.has(&factor) => g.get_f32(&factor),
        "linear" => Ok(1.0),
        other => {
            Err(bad(g.path(), format!("RoPE scaling type `{other}` is not supported (linear and Llama 3.1's are)")))
        }
    }
}

/// RoPE scaling from a Hugging Face config's `rope_scaling` object: `(position divisor, per-pair
/// frequency divisors)`. Types: none/`default`, `linear` (positions divided by `factor`) and
/// `llama3` (Llama 3.1: wavelengths longer than `original_max_position_embeddings /
/// low_freq_factor` slowed by `factor`, shorter than `... / high_freq_factor` kept, a linear blend
/// of the two between).
fn hf_rope_scaling(
    r: &serde_json::Value,
    head_dim: usize,
    base: f32,
) -> std::result::Result<(f32, Option<Vec<f32>>), String> {
    if r.is_null() {
        return Ok((1.0, None));
    }
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(|x| x.as_str()).unwrap_or("default");
    let num = |k: &str| -> std::result::Result<f64, String> {
        r.get(k).and_then(|x| x.as_f64()).ok_or_else(|| format!("`rope_scaling.{k}` missing for type `{kind}`"))
    };
    match kind {
        "default" => Ok((1.0, None)),
        "linear" => Ok((num("factor")? as f32, None)),
        "llama3" => {
            let (factor, low, high) = (num("factor")?, num("low_freq_factor")?, num("high_freq_factor")?);
            let original = num("original_max_position_embeddings")?;
            if !(factor > 0.0 && low > 0.0 && high > low && original > 0.0) {
                return Err(format!(
                    "`rope_scaling` llama3: need factor > 0 and high_freq_factor > low_freq_factor > 0, got \
                     factor {factor}, low_freq_factor {low}, high_freq_factor {high}"
                ));
            }
            Ok((1.0, Some(llama3_freq_factors(head_dim, base as f64, factor, low, high, original))))
        }
        other => Err(format!("`rope_scaling.rope_type` `{other}` is not supported (default, linear and llama3 are)")),
    }
}

/// Llama 3.1's frequency divisors, one per rotated pair: 1 for short wavelengths, `factor` for long
/// ones, and between them the divisor that blends `freq / factor` and `freq` by how far the
/// wavelength lies between the two cut-offs.
pub fn llama3_freq_factors(head_dim: usize, base: f64, factor: f64, low: f64, high: f64, original: f64) -> Vec<f32> {
    let (long_wavelen, short_wavelen) = (original / low, original / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = base.powf(-2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < short_wavelen {
                1.0
            } else if wavelen > long_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

impl LlamaConfig {
    pub fn from_gguf(g: &GgufFile, arch: &str) -> Result<Self> {
        let flavor = match arch {
            "llama" => LlamaFlavor::Llama,
            "qwen2" => LlamaFlavor::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        };
        let key = |k: &str| format!("{arch}.{k}");
        let hidden = g.get_usize(&key("embedding_length"))?;
        let heads = g.get_usize(&key("attention.head_count"))?;
        let head_dim = if g.has(&key("attention.key_length")) {
            g.get_usize(&key("attention.key_length"))?
        } else {
            hidden / heads
        };
        let cfg = LlamaConfig {
            flavor,
            vocab_size: g.tensor_shape("token_embd.weight")?[0],
            hidden,
            layers: g.get_usize(&key("block_count"))?,
            heads,
            kv_heads: if g.has(&key("attention.head_count_kv")) {
                g.get_usize(&key("attention.head_count_kv"))?
            } else {
                heads
            },
            head_dim,
            ffn: g.get_usize(&key("feed_forward_length"))?,
            context_length: g.get_usize(&key("context_length"))?,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: if g.has(&key("rope.freq_base")) { g.get_f32(&key("rope.freq_base"))? } else { 10_000.0 },
            rope_position_scale: gguf_linear_rope_scale(g, arch)?,
            rope_freq_factors: if g.tensor_names().any(|n| n == "rope_freqs.weight") {
                Some(g.vector_f32("rope_freqs.weight", head_dim / 2)?)
            } else {
                None
            },
            qkv_bias: g.tensor_names().any(|n| n == "blk.0.attn_q.bias"),
            tied_embeddings: !g.tensor_names().any(|n| n == "output.weight"),
            hf_layout: false,
        };
        cfg.check().map_err(|r| bad(g.path(), r))?;
        Ok(cfg)
    }

    /// Reads a Hugging Face `config.json` (`model_type` `llama` or `qwen2`) for real weights.
    /// `rope_scaling` of type `linear` or `llama3` (Llama 3.1) is applied; other types (`yarn`,
    /// `dynamic`, `longrope`) are refused by name.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        Self::read_hf_json(path, false)
    }

    /// The same for dummy weights, whose outputs mean nothing: a RoPE scaling type hearth does not
    /// implement changes values, not cost, so it is ignored rather than refused.
    pub fn from_hf_json_for_dummy(path: &Path) -> Result<Self> {
        Self::read_hf_json(path, true)
    }

    fn read_hf_json(path: &Path, dummy: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.into(), source })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(path, format!("not JSON: {e}")))?;
        let num = |k: &str| -> Result<usize> {
            v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| bad(path, format!("`{k}` missing")))
        };
        let flavor = match v.get("model_type").and_then(|x| x.as_str()) {
            Some("llama") => LlamaFlavor::Llama,
            Some("qwen2") => LlamaFlavor::Qwen2,
            other => return Err(ModelError::UnsupportedArchitecture(format!("config model_type {other:?}"))),
        };
        let hidden = num("hidden_size")?;
        let heads = num("num_attention_heads")?;
        let head_dim = num("head_dim").unwrap_or(hidden / heads.max(1));
        let rope_base = v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10_000.0) as f32;
        let (rope_position_scale, rope_freq_factors) =
            match hf_rope_scaling(v.get("rope_scaling").unwrap_or(&serde_json::Value::Null), head_dim, rope_base) {
                Ok(s) => s,
                Err(_) if dummy => (1.0, None),
                Err(reason) => return Err(bad(path, reason)),
            };
        let cfg = LlamaConfig {
            flavor,
            vocab_size: num("vocab_size")?,
            hidden,
            layers: num("num_hidden_layers")?,
            heads,
            kv_heads: num("num_key_value_heads").unwrap_or(heads),
            head_dim,
            ffn: num("intermediate_size")?,
            context_length: num("max_position_embeddings")?,
            rms_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-5) as f32,
            rope_base,
            rope_position_scale,
            rope_freq_factors,
            qkv_bias: flavor == LlamaFlavor::Qwen2
                || v.get("attention_bias").and_then(|x| x.as_bool()).unwrap_or(false),
            tied_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            hf_layout: true,
        };
        cfg.check().map_err(|r| bad(path, r))?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!("{} heads cannot be grouped over {} KV heads", self.heads, self.kv_heads));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.layers == 0 || self.vocab_size == 0 {
            return Err("head_dim must be even, layers and vocabulary non-empty".into());
        }
        if !(self.rope_position_scale.is_finite() && self.rope_position_scale > 0.0) {
            return Err(format!("RoPE scaling factor must be positive, got {}", self.rope_position_scale));
        }
        if let Some(f) = &self.rope_freq_factors
            && (f.len() != self.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)))
        {
            return Err(format!(
                "RoPE frequency factors: {} values, need {} positive ones (head_dim / 2)",
                f.len(),
                self.head_dim / 2
            ));
        }
        Ok(())
    }

    pub fn kv_spec(&self) -> KvSpec {
        KvSpec { layers: self.layers, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }

    fn attn(&self, layer: usize) -> AttnParams {
        AttnParams {
            layer,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window: None,
            softcap: None,
        }
    }

    fn rope(&self) -> RopeParams<'_> {
        RopeParams {
            head_dim: self.head_dim,
            base: self.rope_base,
            position_scale: self.rope_position_scale,
            freq_factors: self.rope_freq_factors.as_deref(),
            interleaved: self.flavor == LlamaFlavor::Llama && !self.hf_layout,
        }
    }

    /// Parameters (weights) of the model.
    pub fn parameters(&self) -> usize {
        let (h, q, kv) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.ffn + 2 * h;
        let head = if self.tied_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + head + self.layers * per_layer + h
    }
}

struct Block<O: Ops> {
    attn_norm: O::Vector,
    q: O::Matrix,
    k: O::Matrix,
    v: O::Matrix,
    bias: Option<[O::Vector; 3]>,
    o: O::Matrix,
    ffn_norm: O::Vector,
    gate: O::Matrix,
    up: O::Matrix,
    down: O::Matrix,
}

pub struct Llama<O: Ops> {
    cfg: LlamaConfig,
    embed: O::Matrix,
    /// `None`: tied to `embed`.
    head: Option<O::Matrix>,
    blocks: Vec<Block<O>>,
    final_norm: O::Vector,
}

/// Where weights come from: a GGUF file, a Hugging Face checkpoint, or a seed.
enum Source<'a> {
    Gguf(&'a GgufFile),
    Safetensors(&'a SafetensorsDir),
    Dummy(u64),
}

/// The Hugging Face name of a tensor named the GGUF way (`blk.3.attn_q.weight`).
pub fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, rest) = rest.split_once('.')?;
            let (op, kind) = rest.rsplit_once('.')?;
            let op = match op {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{op}.{kind}")
        }
    })
}

impl Source<'_> {
    fn matrix<O: Ops>(&self, ops: &mut O, name: &str, out: usize, k: usize) -> Result<O::Matrix> {
        match self {
            Source::Gguf(g) => {
                let t = g.tensor_with_shape(name, &[out, k])?;
                Ok(ops.load_matrix(name, t)?)
            }
            Source::Safetensors(d) => {
                let hf = hf_name(name).expect("every tensor the model loads has a Hugging Face name. This is a bug.");
                let w = d.tensor_f32(&hf, &[out, k])?;
                Ok(ops.load_matrix_f32(name, w, out, k)?)
            }
            Source::Dummy(seed) => Ok(ops.dummy_matrix(name, out, k, tensor_seed(*seed, name))?),
        }
    }

    /// Norm weights are 1 and biases 0 in a dummy model.
    fn vector<O: Ops>(&self, ops: &mut O, name: &str, len: usize, fill: f32) -> Result<O::Vector> {
        match self {
            Source::Gguf(g) => Ok(ops.load_vector(name, g.vector_f32(name, len)?)?),
            Source::Safetensors(d) => {
                let hf = hf_name(name).expect("every tensor the model loads has a Hugging Face name. This is a bug.");
                Ok(ops.load_vector(name, d.tensor_f32(&hf, &[len])?)?)
            }
            Source::Dummy(_) => Ok(ops.load_vector(name, vec![fill; len])?),
        }
    }
}

impl<O: Ops> Llama<O> {
    pub fn load(g: &GgufFile, cfg: LlamaConfig, ops: &mut O) -> Result<Self> {
        Self::build(&Source::Gguf(g), cfg, ops)
    }

    /// From a Hugging Face checkpoint (`cfg` from its `config.json`).
    pub fn load_safetensors(d: &SafetensorsDir, cfg: LlamaConfig, ops: &mut O) -> Result<Self> {
        Self::build(&Source::Safetensors(d), cfg, ops)
    }

    /// Seeded random weights at the configured shapes.
    pub fn dummy(cfg: LlamaConfig, ops: &mut O, seed: u64) -> Result<Self> {
        Self::build(&Source::Dummy(seed), cfg, ops)
    }

    fn build(src: &Source<'_>, cfg: LlamaConfig, ops: &mut O) -> Result<Self> {
        let (h, qd, kvd, f) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let embed = src.matrix(ops, "token_embd.weight", cfg.vocab_size, h)?;
        let head =
            if cfg.tied_embeddings { None } else { Some(src.matrix(ops, "output.weight", cfg.vocab_size, h)?) };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = if cfg.qkv_bias {
                Some([
                    src.vector(ops, &n("attn_q.bias"), qd, 0.0)?,
                    src.vector(ops, &n("attn_k.bias"), kvd, 0.0)?,
                    src.vector(ops, &n("attn_v.bias"), kvd, 0.0)?,
                ])
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: src.vector(ops, &n("attn_norm.weight"), h, 1.0)?,
                q: src.matrix(ops, &n("attn_q.weight"), qd, h)?,
                k: src.matrix(ops, &n("attn_k.weight"), kvd, h)?,
                v: src.matrix(ops, &n("attn_v.weight"), kvd, h)?,
                bias,
                o: src.matrix(ops, &n("attn_output.weight"), h, qd)?,
                ffn_norm: src.vector(ops, &n("ffn_norm.weight"), h, 1.0)?,
                gate: src.matrix(ops, &n("ffn_gate.weight"), f, h)?,
                up: src.matrix(ops, &n("ffn_up.weight"), f, h)?,
                down: src.matrix(ops, &n("ffn_down.weight"), h, f)?,
            });
        }
        let final_norm = src.vector(ops, "output_norm.weight", h, 1.0)?;
        Ok(Llama { cfg, embed, head, blocks, final_norm })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Runs one step; returns logits `[step.logits_rows(), vocab]` in plan order.
    pub fn forward(&self, ops: &mut O, step: &StepPlan) -> OpResult<O::Act> {
        let cfg = &self.cfg;
        let eps = cfg.rms_eps;
        let positions = step.positions();
        let rope = cfg.rope();
        let mut x = ops.embed(&self.embed, &step.tokens, 1.0)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let h = ops.rms_norm(&x, &b.attn_norm, eps)?;
            let mut q = ops.matmul(&h, &b.q)?;
            let mut k = ops.matmul(&h, &b.k)?;
            let mut v = ops.matmul(&h, &b.v)?;
            if let Some([bq, bk, bv]) = &b.bias {
                ops.add_bias(&mut q, bq)?;
                ops.add_bias(&mut k, bk)?;
                ops.add_bias(&mut v, bv)?;
            }
            ops.rope(&mut q, &positions, &rope)?;
            ops.rope(&mut k, &positions, &rope)?;
            let a = ops.attention(&q, &k, &v, step, &cfg.attn(l))?;
            let a = ops.matmul(&a, &b.o)?;
            ops.add(&mut x, &a)?;

            let h = ops.rms_norm(&x, &b.ffn_norm, eps)?;
            let gate = ops.matmul(&h, &b.gate)?;
            let up = ops.matmul(&h, &b.up)?;
            let m = ops.silu_mul(&gate, &up)?;
            let m = ops.matmul(&m, &b.down)?;
            ops.add(&mut x, &m)?;
        }
        let rows = logits_rows(step);
        if rows.is_empty() {
            return ops.select_rows(&x, &rows);
        }
        let x = if rows.len() == step.tokens.len() { x } else { ops.select_rows(&x, &rows)? };
        let x = ops.rms_norm(&x, &self.final_norm, eps)?;
        ops.matmul(&x, self.head.as_ref().unwrap_or(&self.embed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
    }

    #[test]
    fn shipped_configs_parse_to_their_published_sizes() {
        let l = LlamaConfig::from_hf_json_for_dummy(&models_dir().join("llama-3.1-8b.json")).unwrap();
        assert_eq!((l.hidden, l.layers, l.heads, l.kv_heads, l.head_dim, l.ffn), (4096, 32, 32, 8, 128, 14336));
        assert_eq!(l.flavor, LlamaFlavor::Llama);
        assert!(!l.qkv_bias && !l.tied_embeddings);
        assert_eq!(l.parameters(), 8_030_261_248, "Llama 3.1 8B has 8.03B parameters");
        let q = LlamaConfig::from_hf_json_for_dummy(&models_dir().join("qwen2.5-7b.json")).unwrap();
        assert_eq!((q.hidden, q.layers, q.heads, q.kv_heads, q.head_dim), (3584, 28, 28, 4, 128));
        assert!(q.qkv_bias && q.flavor == LlamaFlavor::Qwen2);
    }

    #[test]
    fn llama_3_1_rope_scaling_is_read_from_its_config() {
        let l = LlamaConfig::from_hf_json(&models_dir().join("llama-3.1-8b.json")).unwrap();
        let f = l.rope_freq_factors.as_ref().expect("Llama 3.1 scales RoPE");
        assert_eq!(f.len(), 64);
        // Base 500000, head_dim 128, factor 8, cut-offs at 8192/4 = 2048 and 8192/1 = 8192 positions:
        // the fastest pairs are kept, the slowest slowed 8×, and the divisors never decrease.
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "{f:?}");
        let blended = f.iter().filter(|&&x| x > 1.0 && x < 8.0).count();
        assert!(blended > 0, "some pairs lie between the cut-offs: {f:?}");
        assert_eq!(l.rope_position_scale, 1.0);
    }

    fn config_with_scaling(tag: &str, scaling: serde_json::Value) -> std::path::PathBuf {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(models_dir().join("llama-3.1-8b.json")).unwrap()).unwrap();
        v["rope_scaling"] = scaling;
        let p = std::env::temp_dir().join(format!("hearth-rope-{tag}-{}.json", std::process::id()));
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p
    }

    #[test]
    fn rope_scaling_types_are_applied_or_refused_by_name() {
        let p = config_with_scaling("linear", serde_json::json!({"type": "linear", "factor": 4.0}));
        let l = LlamaConfig::from_hf_json(&p).unwrap();
        assert_eq!((l.rope_position_scale, l.rope_freq_factors.is_none()), (4.0, true));
        std::fs::remove_file(&p).ok();
        let p = config_with_scaling("yarn", serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
        let err = LlamaConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("`yarn` is not supported"), "{err}");
        // Dummy weights ignore what they cannot apply (values change, cost does not).
        assert!(LlamaConfig::from_hf_json_for_dummy(&p).unwrap().rope_freq_factors.is_none());
        std::fs::remove_file(&p).ok();
        let p = config_with_scaling("bad", serde_json::json!({"rope_type": "llama3", "factor": 8.0}));
        let err = LlamaConfig::from_hf_json(&p).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.low_freq_factor"), "{err}");
        std::fs::remove_file(&p).ok();
    }
}
