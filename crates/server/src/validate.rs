//! A `hearth.v1.GenerateRequest` checked against the model and the server's limits, turned into
//! what the engine takes ([`ValidRequest`]). Every refusal names the request field (`.proto` path).
//! Text prompts are tokenized here, on a blocking thread (never on the async runtime).

use std::sync::Arc;

use hearth_engine::{GenerateRequest, MAX_TOP_LOGPROBS, SamplingParams};
use hearth_proto::v1;

use crate::error::{ApiError, ErrorKind, api_field};
use crate::state::{Limits, Served};

/// A request the engine will accept (bar a full queue).
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub engine: GenerateRequest,
    pub stop: Vec<String>,
    /// The client's id, or one the server made.
    pub request_id: String,
    /// Whether logprobs of generated tokens were asked for.
    pub logprobs: bool,
}

/// Checks the parts that need no tokenizer and returns the prompt to tokenize, if text.
pub async fn validate(req: v1::GenerateRequest, served: &Served, limits: &Limits) -> Result<ValidRequest, ApiError> {
    check_model(&req.model, served)?;
    let vocab = served.desc.vocab_size;
    let prompt = match req.prompt {
        None => return Err(ApiError::invalid("prompt", "give `text` or `token_ids`")),
        Some(v1::generate_request::Prompt::Text(t)) => {
            if t.is_empty() {
                return Err(ApiError::invalid("text", "must not be empty"));
            }
            let Some(tok) = served.tokenizer.clone() else {
                return Err(ApiError::invalid("text", "this model has no tokenizer here; give `token_ids`"));
            };
            tokenize(tok, t, true).await?
        }
        Some(v1::generate_request::Prompt::TokenIds(ids)) => {
            if ids.ids.is_empty() {
                return Err(ApiError::invalid("token_ids.ids", "must not be empty"));
            }
            check_ids("token_ids.ids", &ids.ids, vocab)?;
            ids.ids
        }
    };
    let context = served.desc.context_length;
    let max_prompt = limits.max_prompt_tokens.min(context.saturating_sub(1));
    if prompt.len() > max_prompt {
        return Err(ApiError::field(
            ErrorKind::OutOfRange,
            "prompt",
            format!("{} tokens exceeds the limit of {max_prompt}", prompt.len()),
        ));
    }
    let sampling = sampling(req.sampling.unwrap_or_default())?;
    let stopping = req.stopping.unwrap_or_default();
    let room = context - prompt.len();
    let max_tokens = match stopping.max_tokens {
        None => limits.default_max_tokens.min(limits.max_tokens_cap).min(room),
        Some(0) => return Err(ApiError::invalid("stopping.max_tokens", "must be at least 1")),
        Some(n) if n as usize > limits.max_tokens_cap => {
            return Err(ApiError::invalid(
                "stopping.max_tokens",
                format!("{n} exceeds the server's cap of {}", limits.max_tokens_cap),
            ));
        }
        Some(n) if n as usize > room => {
            return Err(ApiError::field(
                ErrorKind::OutOfRange,
                "stopping.max_tokens",
                format!("the prompt's {} tokens plus {n} exceed the model's context of {context}", prompt.len()),
            ));
        }
        Some(n) => n as usize,
    };
    let min_tokens = stopping.min_tokens as usize;
    if min_tokens > max_tokens {
        return Err(ApiError::invalid("stopping.min_tokens", format!("{min_tokens} exceeds max_tokens {max_tokens}")));
    }
    if stopping.stop.len() > limits.max_stop_strings {
        return Err(ApiError::invalid("stopping.stop", format!("at most {} stop strings", limits.max_stop_strings)));
    }
    if !stopping.stop.is_empty() && served.tokenizer.is_none() {
        return Err(ApiError::invalid("stopping.stop", "this model has no tokenizer here; use stop_token_ids"));
    }
    for (i, s) in stopping.stop.iter().enumerate() {
        if s.is_empty() || s.len() > limits.max_stop_bytes {
            return Err(ApiError::invalid(
                format!("stopping.stop[{i}]"),
                format!("must be 1 to {} bytes, got {}", limits.max_stop_bytes, s.len()),
            ));
        }
    }
    check_ids("stopping.stop_token_ids", &stopping.stop_token_ids, vocab)?;
    for (field, n) in [("logprobs", req.logprobs), ("prompt_logprobs", req.prompt_logprobs)] {
        if let Some(n) = n
            && n as usize > MAX_TOP_LOGPROBS
        {
            return Err(ApiError::invalid(field, format!("at most {MAX_TOP_LOGPROBS}, got {n}")));
        }
    }
    if req.request_id.len() > 128 || req.request_id.chars().any(char::is_control) {
        return Err(ApiError::invalid("request_id", "at most 128 bytes, no control characters"));
    }
    let mut sampling = sampling;
    sampling.logprobs = req.logprobs.is_some();
    sampling.top_logprobs = req.logprobs.unwrap_or(0) as usize;
    Ok(ValidRequest {
        engine: GenerateRequest {
            prompt,
            sampling,
            max_tokens,
            min_tokens,
            stop_token_ids: stopping.stop_token_ids,
            ignore_eos: stopping.ignore_eos,
            priority: req.priority,
            scope: Default::default(),
            prompt_logprobs: req.prompt_logprobs.map(|n| n as usize),
        },
        stop: stopping.stop,
        request_id: req.request_id,
        logprobs: req.logprobs.is_some(),
    })
}

fn sampling(p: v1::SamplingParams) -> Result<SamplingParams, ApiError> {
    if p.top_k < 0 {
        return Err(ApiError::invalid("sampling.top_k", format!("must be >= 0 (0: no limit), got {}", p.top_k)));
    }
    let s = SamplingParams {
        temperature: p.temperature.unwrap_or(1.0),
        top_k: p.top_k as usize,
        top_p: p.top_p.unwrap_or(1.0),
        min_p: p.min_p,
        repetition_penalty: p.repetition_penalty.unwrap_or(1.0),
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        seed: p.seed.unwrap_or_else(random_seed),
        logprobs: false,
        top_logprobs: 0,
    };
    s.validate().map_err(|e| ApiError::invalid(api_field(e.field), e.reason))?;
    Ok(s)
}

/// A seed for requests that give none: different per request, from the OS-seeded hasher.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// Every id of the list `field` must be in the vocabulary; the error names the first one out.
pub fn check_ids(field: &str, ids: &[u32], vocab: usize) -> Result<(), ApiError> {
    match ids.iter().enumerate().find(|(_, t)| **t as usize >= vocab) {
        Some((i, t)) => Err(ApiError::invalid(
            format!("{field}[{i}]"),
            format!("token id {t} is outside the vocabulary of {vocab}"),
        )),
        None => Ok(()),
    }
}

/// `model` must be empty or the served model's name.
pub fn check_model(name: &str, served: &Served) -> Result<(), ApiError> {
    if name.is_empty() || name == served.desc.name {
        return Ok(());
    }
    Err(ApiError::field(
        ErrorKind::NotFound,
        "model",
        format!("unknown model `{name}`; this server serves `{}`", served.desc.name),
    ))
}

/// Tokenizes on a blocking thread.
pub async fn tokenize(tok: Arc<hearth_models::Tokenizer>, text: String, add_bos: bool) -> Result<Vec<u32>, ApiError> {
    tokio::task::spawn_blocking(move || tok.encode(&text, add_bos))
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("tokenizer task failed: {e}")))?
        .map_err(|e| ApiError::invalid("text", format!("cannot be tokenized: {e}")))
}
