//! `hearth generate`: one prompt through the engine (CPU or CUDA backend), text streamed to stdout,
//! speed to stderr. With dummy weights (no tokenizer) the prompt is given as token ids and the
//! output printed as ids.

use std::io::Write;
use std::time::Instant;

use clap::Args;
use hearth_core::FinishReason;
use hearth_engine::{Engine, EngineEvent, GenerateRequest, SamplingParams};

use crate::backend::BackendArgs;
use crate::engine_args::EngineArgs;
use crate::models::ModelArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The prompt (BOS is added as the model asks; special-token text such as `<start_of_turn>` is
    /// parsed as its token).
    #[arg(long, required_unless_present = "prompt_ids", conflicts_with = "prompt_ids")]
    pub prompt: Option<String>,
    /// The prompt as comma-separated token ids (the only form dummy weights accept).
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
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

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let t_load = Instant::now();
    let loaded = crate::backend::load(&args.backend, &args.model, &args.engine)?;
    let tok = loaded.tokenizer;
    let caps = loaded.backend.caps().clone();
    let kv_tokens = {
        let (block_size, num_blocks) = caps.kv.pool();
        block_size * num_blocks
    };
    let eog = tok.as_ref().map(|t| t.eog_tokens().to_vec()).unwrap_or_default();
    let (engine, _thread) = Engine::spawn(loaded.backend, args.engine.engine_config(eog), None);
    let prompt = match (&args.prompt, &args.prompt_ids, &tok) {
        (_, Some(ids), _) => ids.clone(),
        (Some(text), None, Some(tok)) => tok.encode(text, true)?,
        (Some(_), None, None) => {
            anyhow::bail!("this model has no tokenizer here (dummy weights, or a checkpoint folder): give --prompt-ids")
        }
        (None, None, _) => anyhow::bail!("give --prompt or --prompt-ids"),
    };
    eprintln!(
        "{} backend; loaded in {:.2}s; KV cache: {kv_tokens} tokens; prompt: {} tokens",
        caps.name,
        t_load.elapsed().as_secs_f64(),
        prompt.len()
    );

    let request = GenerateRequest {
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            seed: args.seed,
            ..Default::default()
        },
        ignore_eos: args.ignore_eos,
        ..GenerateRequest::greedy(prompt, args.max_tokens)
    };
    let mut stream = engine.submit(request)?;
    let mut text = tok.as_ref().map(|tok| (tok, hearth_server::text::TextStream::default()));
    let mut out = std::io::stdout().lock();
    while let Some(event) = stream.events.blocking_recv() {
        match event {
            EngineEvent::PromptLogprobs(_) => {}
            EngineEvent::Tokens(tokens) => {
                for t in tokens {
                    match text.as_mut() {
                        Some((tok, text)) => write!(out, "{}", text.push(*tok, t.id))?,
                        None => write!(out, "{} ", t.id)?,
                    }
                }
                out.flush()?;
            }
            EngineEvent::Finished(info) => {
                if let Some((tok, text)) = text.as_mut() {
                    write!(out, "{}", text.flush(*tok))?;
                }
                writeln!(out)?;
                if let FinishReason::Error(e) = &info.reason {
                    anyhow::bail!("generation failed: {e}");
                }
                let ttft = info.time_to_first_token.map_or(0.0, |d| d.as_secs_f64());
                let decode_s = info.total_time.as_secs_f64() - ttft;
                eprintln!(
                    "prompt: {} tokens in {ttft:.3}s ({:.1} tok/s); generated: {} tokens in {decode_s:.3}s ({:.1} tok/s); finish: {:?}",
                    info.prompt_tokens,
                    info.prompt_tokens as f64 / ttft.max(1e-9),
                    info.generated_tokens,
                    info.generated_tokens.saturating_sub(1) as f64 / decode_s.max(1e-9),
                    info.reason
                );
                return Ok(());
            }
        }
    }
    anyhow::bail!("the engine stopped before the request finished")
}
