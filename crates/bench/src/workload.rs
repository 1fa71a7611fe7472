//! What to send: prompts of exact token lengths (synthetic), prompts sharing a long prefix, or a
//! user's JSONL file. Prompts are token ids (so input lengths are exact on every server); output
//! lengths are exact because requests set `ignore_eos`.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::BenchError;

/// One request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: u32,
}

/// A token length: fixed (`128`) or uniform in a range (`64:192`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Len {
    Fixed(usize),
    Uniform(usize, usize),
}

impl std::str::FromStr for Len {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| t.trim().parse::<usize>().map_err(|_| format!("`{s}` is not a length (try 128 or 64:192)"));
        match s.split_once(':') {
            None => Ok(Len::Fixed(num(s)?))
                .and_then(|l| if l.max() == 0 { Err("a length must be > 0".into()) } else { Ok(l) }),
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a == 0 || a > b {
                    return Err(format!("`{s}`: need 0 < low <= high"));
                }
                Ok(Len::Uniform(a, b))
            }
        }
    }
}

impl Len {
    pub fn max(&self) -> usize {
        match *self {
            Len::Fixed(n) | Len::Uniform(_, n) => n,
        }
    }

    fn draw(&self, rng: &mut StdRng) -> usize {
        match *self {
            Len::Fixed(n) => n,
            Len::Uniform(a, b) => rng.random_range(a..=b),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Workload {
    /// Independent prompts of random words.
    Synthetic { input: Len, output: Len },
    /// Every prompt starts with the same `prefix` tokens (a system prompt), then `suffix` unique ones.
    SharedPrefix { prefix: usize, suffix: Len, output: Len },
    /// JSONL lines `{"prompt": "...", "max_tokens": 128}` (`max_tokens` defaults to `output`).
    File { path: std::path::PathBuf, output: Len },
}

/// Where prompt tokens come from: the model's tokenizer (whole-word tokens, BOS first, prompt
/// files), or bare ids below a vocabulary size (models without a tokenizer, e.g. dummy weights).
pub struct Vocab<'a> {
    words: Vec<u32>,
    bos: Option<u32>,
    tokenizer: Option<&'a hearth_models::Tokenizer>,
}

impl<'a> Vocab<'a> {
    pub fn from_tokenizer(tok: &'a hearth_models::Tokenizer) -> Self {
        Vocab { words: word_tokens(tok), bos: tok.bos(), tokenizer: Some(tok) }
    }

    /// Random ids in `10..vocab_size` (the first ids are usually special tokens).
    pub fn ids(vocab_size: usize) -> Self {
        Vocab { words: (10..vocab_size.max(11) as u32).collect(), bos: None, tokenizer: None }
    }
}

/// Token ids that are plain words (`▁word`), for prompts that look like text to the model.
pub fn word_tokens(tok: &hearth_models::Tokenizer) -> Vec<u32> {
    let words: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| {
            tok.token_text(id).is_some_and(|t| {
                let w = t.strip_prefix('\u{2581}').or_else(|| t.strip_prefix('Ġ')).unwrap_or("");
                w.len() >= 3 && w.chars().all(|c| c.is_ascii_lowercase())
            })
        })
        .collect();
    if words.len() >= 100 { words } else { (10..tok.vocab_size().min(30_000) as u32).collect() }
}

/// `n` requests of the workload, reproducible from `seed`.
pub fn make(w: &Workload, n: usize, vocab: &Vocab<'_>, seed: u64) -> Result<Vec<BenchRequest>, BenchError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let words = &vocab.words;
    let bos: Vec<u32> = vocab.bos.into_iter().collect();
    let random = |len: usize, rng: &mut StdRng| -> Vec<u32> {
        (0..len).map(|_| words[rng.random_range(0..words.len())]).collect()
    };
    let exact = |mut ids: Vec<u32>, len: usize| {
        ids.truncate(len);
        ids
    };
    Ok(match w {
        Workload::Synthetic { input, output } => (0..n)
            .map(|_| {
                let len = input.draw(&mut rng);
                let body = random(len.saturating_sub(bos.len()), &mut rng);
                BenchRequest {
                    prompt: exact([bos.clone(), body].concat(), len),
                    max_tokens: output.draw(&mut rng) as u32,
                }
            })
            .collect(),
        Workload::SharedPrefix { prefix, suffix, output } => {
            let shared = [bos.clone(), random(prefix.saturating_sub(bos.len()), &mut rng)].concat();
            (0..n)
                .map(|_| {
                    let s = suffix.draw(&mut rng);
                    BenchRequest {
                        prompt: [shared.clone(), random(s, &mut rng)].concat(),
                        max_tokens: output.draw(&mut rng) as u32,
                    }
                })
                .collect()
        }
        Workload::File { path, output } => {
            let tok = vocab
                .tokenizer
                .ok_or_else(|| BenchError::Config("a prompt file needs the model's tokenizer".into()))?;
            let lines = read_jsonl(path)?;
            if lines.is_empty() {
                return Err(BenchError::Config(format!("{}: no prompts", path.display())));
            }
            (0..n)
                .map(|i| {
                    let (text, max) = &lines[i % lines.len()];
                    let prompt = tok.encode(text, true).map_err(|e| BenchError::Config(e.to_string()))?;
                    Ok(BenchRequest { prompt, max_tokens: max.unwrap_or_else(|| output.draw(&mut rng) as u32) })
                })
                .collect::<Result<_, BenchError>>()?
        }
    })
}

/// Replaces the request a quarter of the way in by one with a `len`-token prompt (same output).
pub fn mix_in_long_prompt(requests: &mut [BenchRequest], len: usize, vocab: &Vocab<'_>, seed: u64) {
    if requests.is_empty() {
        return;
    }
    let at = requests.len() / 4;
    let long =
        make(&Workload::Synthetic { input: Len::Fixed(len.max(1)), output: Len::Fixed(1) }, 1, vocab, seed ^ 0x5eed)
            .expect("synthetic prompts need no input. This is a bug.");
    requests[at].prompt = long[0].prompt.clone();
}

fn read_jsonl(path: &Path) -> Result<Vec<(String, Option<u32>)>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| BenchError::Config(format!("{}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let bad = |why: String| BenchError::Config(format!("{}:{}: {why}", path.display(), i + 1));
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| bad(e.to_string()))?;
            let prompt = v["prompt"].as_str().ok_or_else(|| bad("needs a string `prompt`".into()))?.to_string();
            let max = v.get("max_tokens").and_then(|m| m.as_u64()).map(|m| m as u32);
            Ok((prompt, max))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse() {
        assert_eq!("128".parse::<Len>(), Ok(Len::Fixed(128)));
        assert_eq!("64:192".parse::<Len>(), Ok(Len::Uniform(64, 192)));
        assert!("0".parse::<Len>().is_err());
        assert!("9:3".parse::<Len>().is_err());
        assert!("lots".parse::<Len>().is_err());
    }
}
