//! Tiny seeded Llama and Qwen2 models against candle-transformers' implementations (written from
//! the Hugging Face reference; nobody here wrote them). The same seeded weights go to candle under
//! their Hugging Face names and to hearth twice: as a GGUF file laid out as llama.cpp's converter
//! does (Llama q/k rows permuted for adjacent-pair RoPE; Qwen2 unpermuted, NeoX RoPE, q/k/v biases),
//! and as a Hugging Face checkpoint folder (config.json + safetensors, sharded for Llama).
//!
//! Tolerance: hearth keeps K/V in f16 and rounds q to f16 before attention, so logits may differ
//! from candle's all-f32 path; measured about 1e-4 relative to the largest logit, the bound is 2e-3.

use std::collections::HashMap;

use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_models::candle_core::quantized::GgmlDType;
use hearth_models::candle_core::{DType, Device, Tensor};
use hearth_models::testing::{SeededRng, TinySpec, TinyTensor, write_tiny_gguf};
use hearth_models::{ArchConfig, GgufFile};

const TOL: f32 = 2e-3;

fn spec() -> TinySpec {
    TinySpec {
        vocab: 80,
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        ffn: 96,
        window: 4096,
        pattern: 1,
        context: 128,
        rope_base: 10_000.0,
    }
}

/// Hugging Face tensors `(name, shape, data)`.
fn hf_weights(s: &TinySpec, bias: bool, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = SeededRng::new(seed);
    let mut t = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| offset + scale * rng.next_f32()).collect();
        (name, shape, data)
    };
    let (h, q, kv, f) = (s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim, s.ffn);
    let mut w = vec![t("model.embed_tokens.weight".into(), vec![s.vocab, h], 1.0, 0.0)];
    for l in 0..s.layers {
        let p = |x: &str| format!("model.layers.{l}.{x}");
        let m = |k: usize| 1.0 / (k as f32).sqrt();
        w.push(t(p("self_attn.q_proj.weight"), vec![q, h], m(h), 0.0));
        w.push(t(p("self_attn.k_proj.weight"), vec![kv, h], m(h), 0.0));
        w.push(t(p("self_attn.v_proj.weight"), vec![kv, h], m(h), 0.0));
        if bias {
            w.push(t(p("self_attn.q_proj.bias"), vec![q], 0.2, 0.0));
            w.push(t(p("self_attn.k_proj.bias"), vec![kv], 0.2, 0.0));
            w.push(t(p("self_attn.v_proj.bias"), vec![kv], 0.2, 0.0));
        }
        w.push(t(p("self_attn.o_proj.weight"), vec![h, q], m(q), 0.0));
        w.push(t(p("mlp.gate_proj.weight"), vec![f, h], m(h), 0.0));
        w.push(t(p("mlp.up_proj.weight"), vec![f, h], m(h), 0.0));
        w.push(t(p("mlp.down_proj.weight"), vec![h, f], m(f), 0.0));
        w.push(t(p("input_layernorm.weight"), vec![h], 0.2, 1.0));
        w.push(t(p("post_attention_layernorm.weight"), vec![h], 0.2, 1.0));
    }
    w.push(t("model.norm.weight".into(), vec![h], 0.2, 1.0));
    w.push(t("lm_head.weight".into(), vec![s.vocab, h], 1.0 / (h as f32).sqrt(), 0.0));
    w
}

/// llama.cpp's converter permutation for adjacent-pair RoPE: within each head, row `s·d/2 + j`
/// moves to `2j + s`.
fn permute_rows(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for s in 0..2 {
            for j in 0..half {
                let from = h * head_dim + s * half + j;
                let to = h * head_dim + 2 * j + s;
                out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let map = [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ];
    match hf {
        "model.embed_tokens.weight" => "token_embd.weight".into(),
        "model.norm.weight" => "output_norm.weight".into(),
        "lm_head.weight" => "output.weight".into(),
        "rope_freqs.weight" => "rope_freqs.weight".into(),
        _ => {
            let rest = hf.strip_prefix("model.layers.").expect("layer tensor");
            let (l, rest) = rest.split_once('.').expect("layer index");
            let (op, kind) = rest.rsplit_once('.').expect("weight or bias");
            let op = map.iter().find(|(a, _)| *a == op).unwrap_or_else(|| panic!("{op}")).1;
            format!("blk.{l}.{op}.{kind}")
        }
    }
}

/// Logits of hearth's CPU backend: the prompt's last row, then one row per fed token.
fn hearth_logits(b: &mut CpuBackend, prompt: &[u32], feed: &[u32]) -> Vec<Vec<f32>> {
    let table: Vec<u32> = (0..8).collect();
    let mut out =
        vec![b.execute(&StepPlan::single(prompt.to_vec(), 0, table.clone(), LogitsWanted::Last)).unwrap().logits];
    for (ctx, &t) in (prompt.len()..).zip(feed) {
        out.push(b.execute(&StepPlan::single(vec![t], ctx, table.clone(), LogitsWanted::Last)).unwrap().logits);
    }
    out
}

fn opts() -> CpuOptions {
    CpuOptions { kv_cache_bytes: 1 << 20, ..CpuOptions::default() }
}

/// The CPU backend on a GGUF file of the Llama family.
fn from_gguf(path: &std::path::Path) -> CpuBackend {
    let g = GgufFile::open(path).unwrap();
    assert!(matches!(ArchConfig::from_gguf(&g).unwrap(), ArchConfig::Llama(_)));
    CpuBackend::load(&g, &opts()).unwrap()
}

/// The CPU backend on a Hugging Face checkpoint folder.
fn from_checkpoint(dir: &std::path::Path) -> CpuBackend {
    CpuBackend::load_safetensors(&hearth_models::SafetensorsDir::open(dir).unwrap(), &opts()).unwrap()
}

/// Writes `config` and the tensors as a Hugging Face checkpoint folder (sharded in two files with
/// an index when `sharded`).
fn write_checkpoint(
    dir: &std::path::Path,
    config: &serde_json::Value,
    hf: &[(String, Vec<usize>, Vec<f32>)],
    sharded: bool,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(config).unwrap()).unwrap();
    if !sharded {
        hearth_models::safetensors::write_f32(&dir.join("model.safetensors"), hf).unwrap();
        return;
    }
    let (a, b) = hf.split_at(hf.len() / 2);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    hearth_models::safetensors::write_f32(&dir.join(names[0]), a).unwrap();
    hearth_models::safetensors::write_f32(&dir.join(names[1]), b).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|t| (t.0.clone(), names[0].into()))
        .chain(b.iter().map(|t| (t.0.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn compare(what: &str, theirs: &[Vec<f32>], ours: &[Vec<f32>]) {
    for (i, (a, b)) in theirs.iter().zip(ours).enumerate() {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        eprintln!("{what} step {i}: max relative logit error {err:.2e}");
        assert!(err <= TOL, "{what} step {i}: {err:.3e} > {TOL}");
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold(0, |b, (j, x)| if *x > v[b] { j } else { b }) as u32
}

fn write(dir: &std::path::Path, arch: &str, s: &TinySpec, hf: &[(String, Vec<usize>, Vec<f32>)]) -> std::path::PathBuf {
    let tensors: Vec<TinyTensor> = hf
        .iter()
        .map(|(name, shape, data)| {
            let g = gguf_name(name);
            let data = match (arch, g.rsplit_once('.').map(|(a, _)| a.rsplit('.').next().unwrap_or(""))) {
                ("llama", Some("attn_q")) => permute_rows(data, s.heads, s.head_dim, s.hidden),
                ("llama", Some("attn_k")) => permute_rows(data, s.kv_heads, s.head_dim, s.hidden),
                _ => data.clone(),
            };
            TinyTensor { name: g, shape: shape.clone(), data }
        })
        .collect();
    let path = dir.join(format!("{arch}.gguf"));
    write_tiny_gguf(&path, arch, s, &tensors, GgmlDType::F32).unwrap();
    path
}

fn var_builder(hf: &[(String, Vec<usize>, Vec<f32>)]) -> VarBuilder<'static> {
    let map: HashMap<String, Tensor> = hf
        .iter()
        .map(|(n, shape, d)| (n.clone(), Tensor::from_vec(d.clone(), shape.as_slice(), &Device::Cpu).unwrap()))
        .collect();
    VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("hearth-tiny-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const PROMPT: [u32; 11] = [1, 17, 42, 5, 63, 8, 8, 23, 71, 2, 40];

/// Runs the tiny Llama through candle-transformers and through hearth (GGUF and checkpoint folder)
/// and compares logits; `rope_scaling` goes into config.json, and into the GGUF file as llama.cpp's
/// converter writes it (`rope_freqs.weight`, one divisor per rotated pair).
fn llama_case(tag: &str, seed: u64, rope_scaling: serde_json::Value) {
    let s = spec();
    let hf = hf_weights(&s, false, seed);
    let json = serde_json::json!({
        "model_type": "llama",
        "hidden_size": s.hidden, "intermediate_size": s.ffn, "vocab_size": s.vocab,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": 1e-6, "rope_theta": s.rope_base, "max_position_embeddings": s.context,
        "tie_word_embeddings": false, "rope_scaling": rope_scaling
    });
    let cfg: llama::LlamaConfig = serde_json::from_value(json.clone()).unwrap();
    let cfg = cfg.into_config(false);
    let model = llama::Llama::load(var_builder(&hf), &cfg).unwrap();
    let mut cache = llama::Cache::new(true, DType::F32, &cfg, &Device::Cpu).unwrap();
    let input = Tensor::new(&PROMPT[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut theirs =
        vec![model.forward(&input, 0, &mut cache).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()];
    let mut feed = Vec::new();
    for i in 0..5 {
        let t = argmax(theirs.last().unwrap());
        feed.push(t);
        let x = Tensor::new(&[t], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        theirs.push(model.forward(&x, PROMPT.len() + i, &mut cache).unwrap().flatten_all().unwrap().to_vec1().unwrap());
    }
    let dir = tempdir(tag);
    let mut gguf_tensors = hf.clone();
    if !rope_scaling.is_null() {
        // What llama.cpp's converter writes: one frequency divisor per rotated pair.
        let f = |k: &str| rope_scaling[k].as_f64().unwrap();
        let factors = hearth_models::llama::llama3_freq_factors(
            s.head_dim,
            s.rope_base as f64,
            f("factor"),
            f("low_freq_factor"),
            f("high_freq_factor"),
            f("original_max_position_embeddings"),
        );
        gguf_tensors.push(("rope_freqs.weight".into(), vec![s.head_dim / 2], factors));
    }
    let ours = hearth_logits(&mut from_gguf(&write(&dir, "llama", &s, &gguf_tensors)), &PROMPT, &feed);
    compare(tag, &theirs, &ours);
    // The same weights as a Hugging Face checkpoint (unpermuted q/k, NeoX RoPE), in two shards.
    write_checkpoint(&dir.join("hf"), &json, &hf, true);
    compare(
        &format!("{tag} safetensors"),
        &theirs,
        &hearth_logits(&mut from_checkpoint(&dir.join("hf")), &PROMPT, &feed),
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tiny_llama_matches_candle_transformers() {
    llama_case("llama", 11, serde_json::Value::Null);
}

/// Llama 3.1's RoPE scaling, with cut-offs (64/4 = 16 and 64 positions) that put the tiny model's
/// 8 rotated pairs in all three regimes: kept, blended, slowed by the factor.
#[test]
fn tiny_llama_3_1_rope_scaling_matches_candle_transformers() {
    let scaling = serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64
    });
    llama_case("llama3.1", 13, scaling);
}

#[test]
fn tiny_qwen2_matches_candle_transformers() {
    let s = spec();
    let hf = hf_weights(&s, true, 12);
    let json = serde_json::json!({
        "model_type": "qwen2",
        "vocab_size": s.vocab, "hidden_size": s.hidden, "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers, "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": s.context, "sliding_window": s.context, "max_window_layers": s.layers,
        "tie_word_embeddings": false, "rope_theta": s.rope_base as f64, "rms_norm_eps": 1e-6,
        "use_sliding_window": false, "hidden_act": "silu"
    });
    let cfg: qwen2::Config = serde_json::from_value(json.clone()).unwrap();
    let mut model = qwen2::ModelForCausalLM::new(&cfg, var_builder(&hf)).unwrap();
    let logits = |m: &mut qwen2::ModelForCausalLM, ids: &[u32], off: usize| -> Vec<f32> {
        let x = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        m.forward(&x, off).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let mut theirs = vec![logits(&mut model, &PROMPT, 0)];
    let mut feed = Vec::new();
    for i in 0..5 {
        let t = argmax(theirs.last().unwrap());
        feed.push(t);
        theirs.push(logits(&mut model, &[t], PROMPT.len() + i));
    }
    let dir = tempdir("qwen2");
    let ours = hearth_logits(&mut from_gguf(&write(&dir, "qwen2", &s, &hf)), &PROMPT, &feed);
    compare("qwen2", &theirs, &ours);
    write_checkpoint(&dir.join("hf"), &json, &hf, false);
    compare("qwen2 safetensors", &theirs, &hearth_logits(&mut from_checkpoint(&dir.join("hf")), &PROMPT, &feed));
    std::fs::remove_dir_all(&dir).ok();
}
