//! Token sampling from one row of logits.
//!
//! Greedy when `temperature == 0`; otherwise softmax at the temperature, optionally restricted to
//! the `top_k` most likely tokens, drawn with a per-request RNG seeded from `seed`, so the same seed
//! and prompt give the same tokens whatever else runs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 means no limit.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, seed: 0 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self, SamplerError> {
        if !params.temperature.is_finite() || params.temperature < 0.0 {
            return Err(SamplerError::Temperature(params.temperature));
        }
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        if self.params.top_k > 0 && self.params.top_k < cand.len() {
            cand.select_nth_unstable_by(self.params.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(self.params.top_k);
        }
        // Fixed order so a seed always maps to the same token.
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let max = cand[0].1;
        let t = self.params.temperature;
        let weights: Vec<f64> = cand.iter().map(|&(_, l)| (((l - max) / t) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (&(id, _), w) in cand.iter().zip(&weights) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        cand.last().expect("candidate list is never empty. This is a bug.").0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_max() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&[0.1, 0.2, 5.0]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_probabilities() {
        let logits = [1.0f32, 2.0, 0.5, 1.5];
        let params = SamplingParams { temperature: 1.0, top_k: 0, seed: 7 };
        let draw = |n| {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..n).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(50), draw(50));
        let draws = draw(20_000);
        let total: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (id, &l) in logits.iter().enumerate() {
            let expected = (l as f64).exp() / total;
            let got = draws.iter().filter(|&&t| t == id as u32).count() as f64 / draws.len() as f64;
            assert!((got - expected).abs() < 0.015, "token {id}: {got} vs {expected}");
        }
    }

    #[test]
    fn top_k_limits_candidates() {
        let mut s = Sampler::new(SamplingParams { temperature: 5.0, top_k: 2, seed: 1 }).unwrap();
        for _ in 0..500 {
            assert!(matches!(s.sample(&[0.0, 1.0, 0.9, 0.2]), 1 | 2));
        }
    }

    #[test]
    fn rejects_bad_temperature() {
        for t in [f32::NAN, -0.5, f32::INFINITY] {
            assert!(Sampler::new(SamplingParams { temperature: t, ..Default::default() }).is_err());
        }
    }
}
