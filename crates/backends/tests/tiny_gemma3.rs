//! A tiny Gemma-3-shaped model with seeded weights, written as a real GGUF file and run through the
//! whole loading and forward path, against a straightforward f32 reference written here (full
//! recomputation, no KV cache, no paging).
//!
//! Tolerance: the backend keeps K/V in f16 and rounds q to f16 before attention (as llama.cpp does),
//! so logits may differ from the all-f32 reference by up to 1e-2 relative to the largest logit.

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::{Backend, BackendError, LogitsWanted, PlanError, StepPlan};
use hearth_models::candle_core::quantized::GgmlDType;
use hearth_models::testing::{SeededRng, TinySpec, TinyTensor, tiny_gemma3_weights, write_tiny_gguf};
use hearth_models::{GgufFile, ModelError};

const TOL: f32 = 1e-2;

struct Reference<'a> {
    s: &'a TinySpec,
    w: &'a [TinyTensor],
}

impl Reference<'_> {
    fn get(&self, name: &str) -> &[f32] {
        &self.w.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("{name}")).data
    }

    /// y = W x for W [rows, cols] row-major.
    fn mv(&self, name: &str, x: &[f32]) -> Vec<f32> {
        let w = self.get(name);
        w.chunks(x.len()).map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    fn norm(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        x.chunks(w.len())
            .flat_map(|c| {
                let ms = c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32;
                let s = 1.0 / (ms + 1e-6).sqrt();
                c.iter().zip(w).map(move |(v, w)| v * s * w).collect::<Vec<_>>()
            })
            .collect()
    }

    fn rope(&self, x: &mut [f32], pos: usize, base: f32) {
        let d = self.s.head_dim;
        for head in x.chunks_mut(d) {
            for i in 0..d / 2 {
                let theta = pos as f32 * base.powf(-2.0 * i as f32 / d as f32);
                let (c, s) = (theta.cos(), theta.sin());
                let (a, b) = (head[i], head[i + d / 2]);
                head[i] = a * c - b * s;
                head[i + d / 2] = a * s + b * c;
            }
        }
    }

    /// Logits at every position of `tokens`.
    fn logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let s = self.s;
        let d = s.head_dim;
        let emb = self.get("token_embd.weight");
        let mut xs: Vec<Vec<f32>> = tokens
            .iter()
            .map(|&t| emb[t as usize * s.hidden..][..s.hidden].iter().map(|v| v * (s.hidden as f32).sqrt()).collect())
            .collect();
        for l in 0..s.layers {
            let n = |x: &str| format!("blk.{l}.{x}.weight");
            let sliding = (l + 1) % s.pattern != 0;
            let base = if sliding { 10_000.0 } else { s.rope_base };
            let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
            for (p, x) in xs.iter().enumerate() {
                let h = self.norm(x, self.get(&n("attn_norm")));
                let mut q = self.norm(&self.mv(&n("attn_q"), &h), self.get(&n("attn_q_norm")));
                let mut k = self.norm(&self.mv(&n("attn_k"), &h), self.get(&n("attn_k_norm")));
                self.rope(&mut q, p, base);
                self.rope(&mut k, p, base);
                qs.push(q);
                ks.push(k);
                vs.push(self.mv(&n("attn_v"), &h));
            }
            for p in 0..xs.len() {
                let lo = if sliding { (p + 1).saturating_sub(s.window) } else { 0 };
                let mut att = vec![0f32; s.heads * d];
                for h in 0..s.heads {
                    let g = h / (s.heads / s.kv_heads);
                    let q = &qs[p][h * d..][..d];
                    let sc: Vec<f32> = (lo..=p)
                        .map(|j| {
                            q.iter().zip(&ks[j][g * d..][..d]).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()
                        })
                        .collect();
                    let m = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = sc.iter().map(|v| (v - m).exp()).collect();
                    let z: f32 = e.iter().sum();
                    for (jj, j) in (lo..=p).enumerate() {
                        for i in 0..d {
                            att[h * d + i] += e[jj] / z * vs[j][g * d + i];
                        }
                    }
                }
                let o = self.norm(&self.mv(&n("attn_output"), &att), self.get(&n("post_attention_norm")));
                xs[p].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
                let h = self.norm(&xs[p], self.get(&n("ffn_norm")));
                let gate = self.mv(&n("ffn_gate"), &h);
                let up = self.mv(&n("ffn_up"), &h);
                let m: Vec<f32> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| {
                        0.5 * g * (1.0 + ((2.0 / std::f32::consts::PI).sqrt() * (g + 0.044715 * g * g * g)).tanh()) * u
                    })
                    .collect();
                let o = self.norm(&self.mv(&n("ffn_down"), &m), self.get(&n("post_ffw_norm")));
                xs[p].iter_mut().zip(&o).for_each(|(x, o)| *x += o);
            }
        }
        xs.iter().map(|x| self.mv("token_embd.weight", &self.norm(x, self.get("output_norm.weight")))).collect()
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hearth-tiny-{}-{name}.gguf", std::process::id()))
}

fn setup(name: &str, dtype: GgmlDType) -> (TinySpec, Vec<TinyTensor>, CpuBackend) {
    let spec = TinySpec::default();
    let w = tiny_gemma3_weights(&spec, 42);
    let path = tmp(name);
    write_tiny_gguf(&path, "gemma3", &spec, &w, dtype).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let b = CpuBackend::load(
        &g,
        &CpuOptions { block_size: 4, kv_cache_bytes: 1 << 20, max_batch_tokens: 512, exact_matmul: false },
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    (spec, w, b)
}

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut r = SeededRng::new(seed);
    (0..n).map(|_| ((r.next_f32() + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err <= TOL * scale, "{what}: max error {err} vs scale {scale}");
}

#[test]
fn prefill_matches_f32_reference_across_the_window() {
    let (spec, w, mut b) = setup("prefill", GgmlDType::F32);
    let r = Reference { s: &spec, w: &w };
    let toks = tokens(21, 1, spec.vocab); // 21 > window of 8
    // A scrambled block table: pages need not be contiguous or ordered.
    let table = vec![7, 2, 11, 0, 5, 9];
    let out = b.execute(&StepPlan::single(toks.clone(), 0, table, LogitsWanted::All)).unwrap();
    let want = r.logits(&toks);
    for (p, row) in want.iter().enumerate() {
        assert_close(out.row(p), row, &format!("position {p}"));
    }
}

#[test]
fn chunked_prefill_and_decode_equal_one_shot() {
    let (spec, _w, mut b) = setup("chunked", GgmlDType::Q8_0);
    let toks = tokens(19, 2, spec.vocab);
    let one = b.execute(&StepPlan::single(toks.clone(), 0, vec![0, 1, 2, 3, 4], LogitsWanted::All)).unwrap();
    // Same tokens in chunks of 7, 5, then one at a time, into different blocks.
    let table = vec![10, 11, 12, 13, 14];
    let mut rows = Vec::new();
    let mut done = 0;
    for n in [7, 5, 1, 1, 1, 1, 1, 1, 1] {
        let o = b
            .execute(&StepPlan::single(toks[done..done + n].to_vec(), done, table.clone(), LogitsWanted::All))
            .unwrap();
        rows.extend_from_slice(&o.logits);
        done += n;
    }
    assert_eq!(done, toks.len());
    assert_eq!(rows, one.logits, "chunked prefill must equal one-shot prefill exactly");
}

#[test]
fn mixed_batch_equals_each_sequence_alone() {
    let (spec, _w, mut b) = setup("mixed", GgmlDType::Q8_0);
    let a = tokens(13, 3, spec.vocab);
    let c = tokens(5, 4, spec.vocab);
    // Sequence A: 12 tokens cached, decodes its 13th; sequence C: a whole 5-token prefill.
    b.execute(&StepPlan::single(a[..12].to_vec(), 0, vec![0, 1, 2, 3], LogitsWanted::None)).unwrap();
    let alone_a = b.execute(&StepPlan::single(vec![a[12]], 12, vec![0, 1, 2, 3], LogitsWanted::Last)).unwrap();
    let alone_c = b.execute(&StepPlan::single(c.clone(), 0, vec![20, 21], LogitsWanted::All)).unwrap();
    let mut plan = StepPlan::default();
    plan.push(&c, 0, vec![30, 31], LogitsWanted::All);
    plan.push(&[a[12]], 12, vec![0, 1, 2, 3], LogitsWanted::Last);
    let both = b.execute(&plan).unwrap();
    assert_eq!(both.rows(), 6);
    assert_eq!(&both.logits[..5 * spec.vocab], &alone_c.logits[..]);
    assert_eq!(both.row(5), alone_a.row(0));
}

#[test]
fn bad_plans_are_errors_not_panics() {
    let (spec, _w, mut b) = setup("bad", GgmlDType::F32);
    let max = b.caps().max_context;
    let err = b.execute(&StepPlan::single(vec![1; 4], max, vec![0; max / 4 + 1], LogitsWanted::Last)).unwrap_err();
    assert!(matches!(err, BackendError::Plan(PlanError::TooLong { .. })), "{err}");
    let err = b.execute(&StepPlan::single(vec![spec.vocab as u32], 0, vec![0], LogitsWanted::Last)).unwrap_err();
    assert!(matches!(err, BackendError::Plan(PlanError::Token { .. })), "{err}");
    let err = b.execute(&StepPlan::single(vec![1; 9], 0, vec![0, 1], LogitsWanted::Last)).unwrap_err();
    assert!(matches!(err, BackendError::Plan(PlanError::BlockTable { .. })), "{err}");
    let err = b.execute(&StepPlan::single(vec![1], 0, vec![1 << 30], LogitsWanted::Last)).unwrap_err();
    assert!(matches!(err, BackendError::Plan(PlanError::BlockOutOfRange { .. })), "{err}");
    // Still serving afterwards.
    assert_eq!(b.execute(&StepPlan::single(vec![1, 2], 0, vec![0], LogitsWanted::Last)).unwrap().rows(), 1);
}

#[test]
fn bad_files_give_clear_errors() {
    let spec = TinySpec::default();
    let w = tiny_gemma3_weights(&spec, 7);
    let path = tmp("badfiles");
    write_tiny_gguf(&path, "mamba", &spec, &w, GgmlDType::F32).unwrap();
    let err = CpuBackend::load(&GgufFile::open(&path).unwrap(), &CpuOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "mamba"), "{err}");

    write_tiny_gguf(&path, "gemma3", &spec, &w, GgmlDType::F32).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("truncated") && err.contains(&path.display().to_string()), "{err}");

    std::fs::write(&path, b"GGUF but not really a gguf file at all").unwrap();
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, ModelError::Gguf { .. }), "{err}");
    std::fs::write(&path, [0u8; 3]).unwrap();
    assert!(GgufFile::open(&path).is_err());
    std::fs::remove_file(&path).unwrap();
}

/// `Greedy` sequences get their argmax in `greedy` (equal to the argmax of the `Last` row) and no
/// logits row; the other sequences' rows stay in plan order.
#[test]
fn greedy_rows_return_the_argmax_instead_of_logits() {
    let (spec, _w, mut b) = setup("greedy", GgmlDType::Q8_0);
    let (a, c, d) = (tokens(9, 11, spec.vocab), tokens(5, 12, spec.vocab), tokens(3, 13, spec.vocab));
    let mut full = StepPlan::default();
    // Blocks of 4 tokens: a needs 3, c 2, d 1.
    full.push(&a, 0, vec![0, 1, 2], LogitsWanted::Last);
    full.push(&c, 0, vec![3, 4], LogitsWanted::Last);
    full.push(&d, 0, vec![5], LogitsWanted::All);
    let want = b.execute(&full).unwrap();
    assert!(want.greedy.is_empty());
    let mut mixed = StepPlan::default();
    mixed.push(&a, 0, vec![6, 7, 8], LogitsWanted::Greedy);
    mixed.push(&c, 0, vec![9, 10], LogitsWanted::Last);
    mixed.push(&d, 0, vec![11], LogitsWanted::Greedy);
    let got = b.execute(&mixed).unwrap();
    // Rows of `want`: a (0), c (1), d's three rows (2..5); d's last row is 4.
    assert_eq!(got.greedy, vec![hearth_core::argmax(want.row(0)), hearth_core::argmax(want.row(4))]);
    assert_eq!(got.logits, want.row(1), "only the Last sequence's row comes back");
}
