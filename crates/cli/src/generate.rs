//! `hearth generate`: one prompt through the CPU backend, text streamed to stdout, speed to stderr.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use hearth_backends::{CpuBackend, CpuOptions};
use hearth_core::{Backend, LogitsWanted, StepPlan};
use hearth_engine::{Sampler, SamplingParams};
use hearth_models::Tokenizer;

use crate::models::ModelArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (BOS is added as the model asks; special-token text such as `<start_of_turn>` is
    /// parsed as its token).
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 for greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Seed of the sampling RNG: same seed and prompt, same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after an end-of-generation token.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Streams text as tokens arrive, holding back bytes that do not yet form whole characters.
struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream<'_> {
    fn push(&mut self, id: u32) -> anyhow::Result<String> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed {
            return Ok(String::new());
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(new)
    }
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let gguf = args.model.open()?;
    let tok = Tokenizer::from_gguf(&gguf)?;
    let prompt = tok.encode(&args.prompt, true)?;
    let opts = CpuOptions::default();
    let mut backend = CpuBackend::load(&gguf, &opts)?;
    drop(gguf);
    let caps = backend.caps().clone();
    let need = prompt.len() + args.max_tokens;
    if need > caps.max_context {
        bail!(
            "prompt of {} tokens plus --max-tokens {} exceeds the context of {} tokens",
            prompt.len(),
            args.max_tokens,
            caps.max_context
        );
    }
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        seed: args.seed,
        ..Default::default()
    };
    let mut sampler = Sampler::new(params, &prompt)?;
    eprintln!("loaded in {:.2}s; prompt: {} tokens", t_load.elapsed().as_secs_f64(), prompt.len());

    // One sequence owns blocks 0.. of the pool.
    let table: Vec<u32> = (0..need.div_ceil(backend.block_size()) as u32).collect();
    let t_prefill = Instant::now();
    let mut logits = None;
    for (i, chunk) in prompt.chunks(caps.max_batch_tokens).enumerate() {
        let cached = i * caps.max_batch_tokens;
        let plan = StepPlan::single(chunk.to_vec(), cached, table.clone(), LogitsWanted::Last);
        logits = Some(backend.execute(&plan).context("prefill")?);
    }
    let prefill_s = t_prefill.elapsed().as_secs_f64();
    let mut logits = logits.context("empty prompt")?;
    let mut stream = TextStream { tok: &tok, ids: Vec::new(), printed: 0 };
    let mut out = std::io::stdout().lock();
    let t_decode = Instant::now();
    let mut generated = 0;
    let mut context = prompt.len();
    while generated < args.max_tokens {
        let next = sampler.sample(logits.row(0)).token;
        generated += 1;
        if tok.is_eog(next) && !args.ignore_eos {
            break;
        }
        write!(out, "{}", stream.push(next)?)?;
        out.flush()?;
        if generated == args.max_tokens {
            break;
        }
        let plan = StepPlan::single(vec![next], context, table.clone(), LogitsWanted::Last);
        logits = backend.execute(&plan).context("decode")?;
        context += 1;
    }
    writeln!(out)?;
    let decode_s = t_decode.elapsed().as_secs_f64();
    eprintln!(
        "prompt: {} tokens in {:.3}s ({:.1} tok/s); generated: {} tokens in {:.3}s ({:.1} tok/s)",
        prompt.len(),
        prefill_s,
        prompt.len() as f64 / prefill_s,
        generated,
        decode_s,
        generated.saturating_sub(1) as f64 / decode_s.max(1e-9)
    );
    Ok(())
}
