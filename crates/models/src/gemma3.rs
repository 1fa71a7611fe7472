//! Gemma 3 (text), written once over [`Ops`].
//!
//! Follows the reference implementation's structure (and llama.cpp's `gemma3` graph, our
//! correctness oracle): embeddings scaled by √hidden; per block, pre- and post-norms around both
//! attention and MLP; q/k RMS norms; NeoX RoPE with a per-layer base (local layers 10 000, global
//! layers `rope.freq_base`); 5 of every 6 layers attend through a sliding window; GELU(tanh)-gated
//! MLP; final norm and the tied embedding as output head. GGUF converters fold Gemma's `1 + w`
//! norm convention into the stored weights, so norms here multiply by `w` as stored.
//! No KV state lives here: attention goes through the backend's paged cache.

use hearth_core::StepPlan;

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use crate::ops::{AttnParams, KvSpec, OpResult, Ops, RopeParams, logits_rows};

/// Hyper-parameters, mirroring the GGUF metadata keys `gemma3.*`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gemma3Config {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base_global: f32,
    pub rope_base_local: f32,
    /// Linear RoPE scaling factor of global layers (1.0 for none).
    pub rope_scale_global: f32,
    pub sliding_window: usize,
    /// Every `sliding_pattern`-th layer is global; the others slide.
    pub sliding_pattern: usize,
    /// q·k multiplier (1/√head_dim, from `query_pre_attn_scalar`).
    pub attn_scale: f32,
}

impl Gemma3Config {
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let a = "gemma3";
        let key = |k: &str| format!("{a}.{k}");
        let hidden = g.get_usize(&key("embedding_length"))?;
        let heads = g.get_usize(&key("attention.head_count"))?;
        let head_dim = if g.has(&key("attention.key_length")) {
            g.get_usize(&key("attention.key_length"))?
        } else {
            hidden / heads
        };
        let rope_scale_global = if g.has(&key("rope.scaling.factor"))
            && g.get_str(&key("rope.scaling.type")).unwrap_or("linear") == "linear"
        {
            g.get_f32(&key("rope.scaling.factor"))?
        } else {
            1.0
        };
        let sliding_pattern = if g.has(&key("attention.sliding_window_pattern")) {
            g.get_usize(&key("attention.sliding_window_pattern"))?
        } else {
            6
        };
        let vocab_size = g.tensor_shape("token_embd.weight")?[0];
        let cfg = Gemma3Config {
            vocab_size,
            hidden,
            layers: g.get_usize(&key("block_count"))?,
            heads,
            kv_heads: g.get_usize(&key("attention.head_count_kv"))?,
            head_dim,
            ffn: g.get_usize(&key("feed_forward_length"))?,
            context_length: g.get_usize(&key("context_length"))?,
            rms_eps: g.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base_global: g.get_f32(&key("rope.freq_base"))?,
            rope_base_local: 10_000.0,
            rope_scale_global,
            sliding_window: g.get_usize(&key("attention.sliding_window"))?,
            sliding_pattern,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
        };
        cfg.check().map_err(|reason| ModelError::Gguf { path: g.path().to_path_buf(), reason })?;
        Ok(cfg)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!("{} heads cannot be grouped over {} KV heads", self.heads, self.kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) || self.sliding_pattern == 0 || self.layers == 0 {
            return Err("head_dim must be even and the layer pattern non-empty".into());
        }
        Ok(())
    }

    pub fn is_sliding(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.sliding_pattern)
    }

    pub fn kv_spec(&self) -> KvSpec {
        KvSpec { layers: self.layers, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }

    /// Parameters (weights) of the model; the output head is the tied embedding.
    pub fn parameters(&self) -> usize {
        let (h, q, kv) = (self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let per_layer = h * q + 2 * h * kv + q * h + 3 * h * self.ffn + 4 * h + 2 * self.head_dim;
        self.vocab_size * h + self.layers * per_layer + h
    }

    fn attn(&self, layer: usize) -> AttnParams {
        AttnParams {
            layer,
            n_heads: self.heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: self.attn_scale,
            window: self.is_sliding(layer).then_some(self.sliding_window),
            softcap: None,
        }
    }

    fn rope(&self, layer: usize) -> RopeParams<'static> {
        let (base, position_scale) = if self.is_sliding(layer) {
            (self.rope_base_local, 1.0)
        } else {
            (self.rope_base_global, self.rope_scale_global)
        };
        RopeParams { head_dim: self.head_dim, base, position_scale, freq_factors: None, interleaved: false }
    }
}

struct Block<O: Ops> {
    attn_norm: O::Vector,
    q: O::Matrix,
    k: O::Matrix,
    v: O::Matrix,
    q_norm: O::Vector,
    k_norm: O::Vector,
    o: O::Matrix,
    post_attn_norm: O::Vector,
    ffn_norm: O::Vector,
    gate: O::Matrix,
    up: O::Matrix,
    down: O::Matrix,
    post_ffn_norm: O::Vector,
}

pub struct Gemma3<O: Ops> {
    cfg: Gemma3Config,
    embed: O::Matrix,
    blocks: Vec<Block<O>>,
    final_norm: O::Vector,
}

impl<O: Ops> Gemma3<O> {
    pub fn load(g: &GgufFile, cfg: Gemma3Config, ops: &mut O) -> Result<Self> {
        let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim, cfg.ffn);
        let mut matrix = |name: String, shape: [usize; 2]| -> Result<O::Matrix> {
            let t = g.tensor_with_shape(&name, &shape)?;
            Ok(ops.load_matrix(&name, t)?)
        };
        let embed = matrix("token_embd.weight".into(), [cfg.vocab_size, h])?;
        let mut mats = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            mats.push([
                matrix(n("attn_q"), [q_dim, h])?,
                matrix(n("attn_k"), [kv_dim, h])?,
                matrix(n("attn_v"), [kv_dim, h])?,
                matrix(n("attn_output"), [h, q_dim])?,
                matrix(n("ffn_gate"), [f, h])?,
                matrix(n("ffn_up"), [f, h])?,
                matrix(n("ffn_down"), [h, f])?,
            ]);
        }
        let mut vector = |name: String, len: usize| -> Result<O::Vector> {
            let v = g.vector_f32(&name, len)?;
            Ok(ops.load_vector(&name, v)?)
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for (l, [q, k, v, o, gate, up, down]) in mats.into_iter().enumerate() {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            blocks.push(Block {
                attn_norm: vector(n("attn_norm"), h)?,
                q,
                k,
                v,
                q_norm: vector(n("attn_q_norm"), cfg.head_dim)?,
                k_norm: vector(n("attn_k_norm"), cfg.head_dim)?,
                o,
                post_attn_norm: vector(n("post_attention_norm"), h)?,
                ffn_norm: vector(n("ffn_norm"), h)?,
                gate,
                up,
                down,
                post_ffn_norm: vector(n("post_ffw_norm"), h)?,
            });
        }
        let final_norm = vector("output_norm.weight".into(), h)?;
        Ok(Gemma3 { cfg, embed, blocks, final_norm })
    }

    pub fn config(&self) -> &Gemma3Config {
        &self.cfg
    }

    /// Runs one step; returns logits `[step.logits_rows(), vocab]` in plan order.
    pub fn forward(&self, ops: &mut O, step: &StepPlan) -> OpResult<O::Act> {
        let cfg = &self.cfg;
        let eps = cfg.rms_eps;
        let positions = step.positions();
        let mut x = ops.embed(&self.embed, &step.tokens, (cfg.hidden as f32).sqrt())?;
        for (l, b) in self.blocks.iter().enumerate() {
            let h = ops.rms_norm(&x, &b.attn_norm, eps)?;
            let mut q = ops.matmul(&h, &b.q)?;
            let mut k = ops.matmul(&h, &b.k)?;
            let v = ops.matmul(&h, &b.v)?;
            q = ops.rms_norm(&q, &b.q_norm, eps)?;
            k = ops.rms_norm(&k, &b.k_norm, eps)?;
            let rope = cfg.rope(l);
            ops.rope(&mut q, &positions, &rope)?;
            ops.rope(&mut k, &positions, &rope)?;
            let a = ops.attention(&q, &k, &v, step, &cfg.attn(l))?;
            let a = ops.matmul(&a, &b.o)?;
            ops.add_rms_norm(&mut x, &a, &b.post_attn_norm, eps)?;

            let h = ops.rms_norm(&x, &b.ffn_norm, eps)?;
            let gate = ops.matmul(&h, &b.gate)?;
            let up = ops.matmul(&h, &b.up)?;
            let m = ops.gelu_mul(&gate, &up)?;
            let m = ops.matmul(&m, &b.down)?;
            ops.add_rms_norm(&mut x, &m, &b.post_ffn_norm, eps)?;
        }
        let rows = logits_rows(step);
        if rows.is_empty() {
            return ops.select_rows(&x, &rows);
        }
        let x = if rows.len() == step.tokens.len() { x } else { ops.select_rows(&x, &rows)? };
        let x = ops.rms_norm(&x, &self.final_norm, eps)?;
        ops.matmul(&x, &self.embed)
    }
}
