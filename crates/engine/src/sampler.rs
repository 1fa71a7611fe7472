//! Token sampling from one row of logits.
//!
//! Order of operations (vLLM's): repetition, presence and frequency penalties → temperature →
//! top-k → top-p → min-p → draw. Greedy when `temperature == 0` (penalties still apply). Each
//! request has its own RNG seeded from `seed`, so the same seed and prompt give the same tokens
//! whatever else shares the batch. Logprobs are of the model's own distribution (before penalties
//! and truncation), as vLLM reports them.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 for no limit.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; in (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; in [0, 1].
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens seen in prompt or output; 1 for none.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from the logit of every token already generated.
    pub frequency_penalty: f32,
    pub seed: u64,
    /// Report the chosen token's logprob (costs a pass over the vocabulary per token).
    pub logprobs: bool,
    /// Also report this many most likely alternatives with their logprobs (implies `logprobs`).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

/// A parameter out of range; the name is the request field's.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{field}: {reason}")]
pub struct SamplerError {
    pub field: &'static str,
    pub reason: String,
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |field, reason: String| Err(SamplerError { field, reason });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", format!("must be a finite number >= 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("must be in [0, 1], got {}", self.min_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty", format!("must be > 0, got {}", self.repetition_penalty));
        }
        for (field, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !v.is_finite() || !(-2.0..=2.0).contains(&v) {
                return bad(field, format!("must be in [-2, 2], got {v}"));
            }
        }
        Ok(())
    }
}

/// One sampled token with, if asked, its logprob and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each generated token (presence/frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Tokens of the prompt (repetition penalty).
    prompt_tokens: Vec<u32>,
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler does).
pub use hearth_core::argmax;

/// `log_softmax(logits)[ids]`, computed in f64.
pub fn logprobs_of(logits: &[f32], ids: &[u32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    ids.iter().map(|&i| (logits[i as usize] as f64 - lse) as f32).collect()
}

/// The `n` largest logits' ids, best first (ties by lower id).
pub fn top_n(logits: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    idx.select_nth_unstable_by(n - 1, cmp);
    idx.truncate(n);
    idx.sort_by(cmp);
    idx
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Result<Self, SamplerError> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        let prompt_tokens = if params.repetition_penalty != 1.0 { prompt.to_vec() } else { Vec::new() };
        Ok(Sampler { params, rng, output_counts: HashMap::new(), prompt_tokens })
    }

    /// Greedy with nothing that needs the logits row (no penalties, no logprobs): the argmax can be
    /// taken on the device ([`hearth_core::LogitsWanted::Greedy`]).
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature == 0.0
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
            && !p.logprobs
            && p.top_logprobs == 0
    }

    /// Records a token chosen elsewhere (the device's argmax for a plain-greedy request).
    pub fn accept(&mut self, token: u32) -> Sampled {
        *self.output_counts.entry(token).or_default() += 1;
        Sampled { token, logprob: None, top: Vec::new() }
    }

    /// Picks the next token and records it as generated.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let token = self.choose(logits);
        *self.output_counts.entry(token).or_default() += 1;
        if !self.params.logprobs && self.params.top_logprobs == 0 {
            return Sampled { token, logprob: None, top: Vec::new() };
        }
        let top = top_n(logits, self.params.top_logprobs);
        let mut ids = vec![token];
        ids.extend(&top);
        let lps = logprobs_of(logits, &ids);
        Sampled { token, logprob: Some(lps[0]), top: top.into_iter().zip(lps[1..].iter().copied()).collect() }
    }

    fn penalized(&self, logits: &[f32]) -> Option<Vec<f32>> {
        let p = &self.params;
        let any = p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if !any || (self.output_counts.is_empty() && self.prompt_tokens.is_empty()) {
            return None;
        }
        let mut l = logits.to_vec();
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = self.prompt_tokens.iter().chain(self.output_counts.keys()).copied().collect();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                let v = &mut l[t as usize];
                *v = if *v > 0.0 { *v / p.repetition_penalty } else { *v * p.repetition_penalty };
            }
        }
        for (&t, &n) in &self.output_counts {
            l[t as usize] -= p.presence_penalty + p.frequency_penalty * n as f32;
        }
        Some(l)
    }

    fn choose(&mut self, raw: &[f32]) -> u32 {
        let owned = self.penalized(raw);
        let logits = owned.as_deref().unwrap_or(raw);
        let p = &self.params;
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let t = p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weight = |l: f32| (((l - max) / t) as f64).exp();
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No truncation: draw from the whole distribution in id order, no sort needed.
            let total: f64 = logits.iter().map(|&l| weight(l)).sum();
            let mut r = self.rng.random::<f64>() * total;
            for (i, &l) in logits.iter().enumerate() {
                let w = weight(l);
                if r < w {
                    return i as u32;
                }
                r -= w;
            }
            return argmax(logits);
        }
        // Candidates best first; truncation keeps a prefix of this order. Sorting the whole
        // vocabulary per token is slow, so try the best 1,024 first and fall back to the full
        // sort only when top-p / min-p would reach past them.
        let k = if p.top_k == 0 { logits.len() } else { p.top_k.min(logits.len()) };
        const FIRST: usize = 1024;
        let z = |cand: &[u32]| cand.iter().map(|&c| weight(logits[c as usize])).sum::<f64>();
        let (cand, total) = if k > FIRST {
            let all: f64 =
                if k == logits.len() { logits.iter().map(|&l| weight(l)).sum() } else { z(&top_n(logits, k)) };
            (top_n(logits, FIRST), all)
        } else {
            let c = top_n(logits, k);
            let all = z(&c);
            (c, all)
        };
        let probs: Vec<f64> = cand.iter().map(|&c| weight(logits[c as usize]) / total).collect();
        let (keep, complete) = truncate(&probs, p.top_p, p.min_p, cand.len() == k);
        let (cand, probs, keep) = if complete {
            (cand, probs, keep)
        } else {
            let cand = top_n(logits, k);
            let probs: Vec<f64> = cand.iter().map(|&c| weight(logits[c as usize]) / total).collect();
            let (keep, _) = truncate(&probs, p.top_p, p.min_p, true);
            (cand, probs, keep)
        };
        let kept: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f64>() * kept;
        for (i, q) in probs[..keep].iter().enumerate() {
            if r < *q {
                return cand[i];
            }
            r -= q;
        }
        cand[keep - 1]
    }
}

/// How many of the best-first `probs` top-p and min-p keep, and whether that answer is final
/// (false when `probs` is only a prefix of the candidates and truncation might reach past it).
fn truncate(probs: &[f64], top_p: f32, min_p: f32, all: bool) -> (usize, bool) {
    let mut keep = probs.len();
    let mut decided = all;
    if top_p < 1.0 {
        let mut acc = 0.0;
        if let Some(i) = probs.iter().position(|q| {
            acc += q;
            acc >= top_p as f64
        }) {
            keep = i + 1;
            decided = true;
        }
    } else if !all && min_p <= 0.0 {
        return (keep, false);
    }
    if min_p > 0.0 {
        let floor = probs[0] * min_p as f64;
        let above = probs.iter().take_while(|&&q| q >= floor).count().max(1);
        if above < probs.len() {
            decided = true;
        }
        keep = keep.min(above);
    }
    (keep, decided)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, seed: u64) -> SamplingParams {
        SamplingParams { temperature, seed, ..Default::default() }
    }

    fn freq(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut c = vec![0usize; logits.len()];
        for _ in 0..n {
            c[s.choose(logits) as usize] += 1;
        }
        c.into_iter().map(|x| x as f64 / n as f64).collect()
    }

    #[test]
    fn greedy_picks_first_max_and_reports_logprobs() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams { top_logprobs: 2, ..Default::default() }, &[]).unwrap();
        let out = s.sample(&[0.0, 2.0f32.ln(), 0.0]);
        assert_eq!(out.token, 1);
        assert!((out.logprob.unwrap() - 0.5f32.ln()).abs() < 1e-6);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 0]);
        assert!((out.top[1].1 - 0.25f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_probabilities() {
        let logits = [1.0f32, 2.0, 0.5, 1.5];
        let draw = |n| {
            let mut s = Sampler::new(params(1.0, 7), &[]).unwrap();
            (0..n).map(|_| s.choose(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(50), draw(50));
        let mut s = Sampler::new(params(1.0, 7), &[]).unwrap();
        let f = freq(&mut s, &logits, 20_000);
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (id, &l) in logits.iter().enumerate() {
            let expected = (l as f64).exp() / total;
            assert!((f[id] - expected).abs() < 0.015, "token {id}: {} vs {expected}", f[id]);
        }
    }

    #[test]
    fn truncation_top_k_top_p_min_p() {
        // Probabilities at t=1: 0.5, 0.25, 0.125, 0.125.
        let logits: Vec<f32> = [0.5f32, 0.25, 0.125, 0.125].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(SamplingParams { top_k: 2, ..params(1.0, 1) }, &[]).unwrap();
        let f = freq(&mut s, &logits, 6000);
        assert!(f[2] == 0.0 && f[3] == 0.0 && (f[0] - 2.0 / 3.0).abs() < 0.03);
        let mut s = Sampler::new(SamplingParams { top_p: 0.7, ..params(1.0, 2) }, &[]).unwrap();
        let f = freq(&mut s, &logits, 6000);
        assert!(f[2] == 0.0 && f[3] == 0.0 && f[1] > 0.2);
        let mut s = Sampler::new(SamplingParams { min_p: 0.3, ..params(1.0, 3) }, &[]).unwrap();
        let f = freq(&mut s, &logits, 6000);
        assert!(f[2] == 0.0 && f[3] == 0.0 && f[1] > 0.2);
        let mut s = Sampler::new(SamplingParams { top_p: 0.01, ..params(1.0, 4) }, &[]).unwrap();
        assert_eq!(freq(&mut s, &logits, 200)[0], 1.0, "top_p keeps at least the best token");
    }

    #[test]
    fn truncation_past_the_first_candidates_is_exact() {
        // 3,000 tokens with slowly falling logits: top-p 0.9 keeps far more than the first 1,024.
        let logits: Vec<f32> = (0..3000).map(|i| -(i as f32) * 1e-4).collect();
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let mut acc = 0.0;
        let cut = logits.iter().position(|&l| {
            acc += (l as f64).exp() / z;
            acc >= 0.9
        });
        let cut = cut.unwrap() as u32;
        let mut s = Sampler::new(SamplingParams { top_p: 0.9, ..params(1.0, 5) }, &[]).unwrap();
        let draws: Vec<u32> = (0..4000).map(|_| s.choose(&logits)).collect();
        assert!(draws.iter().all(|&t| t <= cut), "a token past the top-p cut {cut} was drawn");
        assert!(draws.iter().any(|&t| t > 1024), "candidates past the first 1,024 are reachable");
        // min-p that keeps everything above half the best probability: about 6,900 ranks, all kept.
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, ..params(1.0, 6) }, &[]).unwrap();
        assert!((0..2000).map(|_| s.choose(&logits)).any(|t| t > 1024));
        // Untruncated sampling follows the distribution without sorting.
        let mut s = Sampler::new(params(1.0, 7), &[]).unwrap();
        let f = freq(&mut s, &[0.0, 1.0f32.ln() + 1.0, 0.0], 20_000);
        let e = std::f64::consts::E;
        assert!((f[1] - e / (e + 2.0)).abs() < 0.015, "{f:?}");
    }

    #[test]
    fn penalties_discourage_repeats() {
        let logits = [1.0f32, 0.9, 0.0];
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.5, ..Default::default() }, &[]).unwrap();
        assert_eq!(s.sample(&logits).token, 0);
        assert_eq!(s.sample(&logits).token, 1, "token 0 now costs 0.5");
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.06, ..Default::default() }, &[]).unwrap();
        assert_eq!(s.sample(&logits).token, 0);
        assert_eq!(s.sample(&logits).token, 0, "one occurrence costs only 0.06");
        assert_eq!(s.sample(&logits).token, 1, "two cost 0.12 > 0.1");
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 1.5, ..Default::default() }, &[0]).unwrap();
        assert_eq!(s.sample(&logits).token, 1, "prompt tokens count for the repetition penalty");
    }

    #[test]
    fn rejects_out_of_range_parameters_naming_the_field() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
            (SamplingParams { temperature: -0.5, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingParams { min_p: -0.1, ..Default::default() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { presence_penalty: 3.0, ..Default::default() }, "presence_penalty"),
            (SamplingParams { frequency_penalty: f32::INFINITY, ..Default::default() }, "frequency_penalty"),
        ];
        for (p, field) in cases {
            assert_eq!(Sampler::new(p, &[]).err().map(|e| e.field), Some(field));
        }
    }
}
