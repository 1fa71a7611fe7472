//! An OpenAI-compatible HTTP surface on the HTTP port: `POST /v1/completions` (plain and streamed
//! as server-sent events) and `GET /v1/models`, so tools written for OpenAI, vLLM or llama.cpp's
//! `llama-server` (load generators, `hearth bench`, SDKs) work unchanged.
//!
//! A request is translated into a `hearth.v1.GenerateRequest` and goes through the same
//! validation, limits, engine and text pipeline as gRPC; only the wire format differs. Extensions
//! vLLM also accepts: `ignore_eos`, `min_tokens`, `top_k`, `min_p`, `repetition_penalty`, and
//! `prompt` as an array of token ids. Errors use OpenAI's body
//! (`{"error": {"message", "type", "param", "code"}}`) with the HTTP status of the error kind.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hearth_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, ErrorKind};
use crate::generate::{Bounds, Chunk, Generation};
use crate::state::AppState;
use crate::validate::validate;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    /// A batch of prompts; only batches of one are served.
    Texts(Vec<String>),
    IdBatches(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The fields of OpenAI's completion request that hearth serves (others are ignored).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub min_tokens: Option<u32>,
    pub n: Option<u32>,
    #[serde(default)]
    pub echo: bool,
}

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v1/completions", axum::routing::post(completions))
        .route("/v1/models", axum::routing::get(models))
}

/// An error as OpenAI clients expect it.
pub struct HttpError(ApiError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, kind) = match e.kind {
            ErrorKind::Invalid | ErrorKind::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
            ErrorKind::Exhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ErrorKind::Deadline => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        };
        let param = e.field.as_deref().map(openai_param);
        let message = match &param {
            Some(p) => format!("{p}: {}", e.message),
            None => e.message.clone(),
        };
        let body = json!({"error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}});
        (status, Json(body)).into_response()
    }
}

/// The OpenAI parameter for a `.proto` field path (`sampling.top_p` → `top_p`).
fn openai_param(field: &str) -> String {
    let f = field.strip_prefix("sampling.").or_else(|| field.strip_prefix("stopping.")).unwrap_or(field);
    if f == "text" || f.starts_with("token_ids") {
        return "prompt".into();
    }
    f.to_string()
}

fn refuse(e: ApiError) -> HttpError {
    crate::metrics::record_refused(e.outcome());
    HttpError(e)
}

/// The OpenAI request as a native one.
fn to_native(r: CompletionRequest) -> Result<(v1::GenerateRequest, bool, bool), ApiError> {
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "only n = 1 is served"));
    }
    if r.echo {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    let prompt = match r.prompt {
        PromptInput::Text(t) => v1::generate_request::Prompt::Text(t),
        PromptInput::Ids(ids) => v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids }),
        PromptInput::Texts(mut t) if t.len() == 1 => v1::generate_request::Prompt::Text(t.remove(0)),
        PromptInput::IdBatches(mut b) if b.len() == 1 => {
            v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids: b.remove(0) })
        }
        _ => return Err(ApiError::invalid("prompt", "give one prompt (batches of several are not served)")),
    };
    let stop = match r.stop {
        None => vec![],
        Some(StopInput::One(s)) => vec![s],
        Some(StopInput::Many(v)) => v,
    };
    let include_usage = r.stream_options.is_some_and(|o| o.include_usage);
    let native = v1::GenerateRequest {
        model: r.model.unwrap_or_default(),
        prompt: Some(prompt),
        sampling: Some(v1::SamplingParams {
            temperature: r.temperature,
            top_k: r.top_k.unwrap_or(0),
            top_p: r.top_p,
            min_p: r.min_p.unwrap_or(0.0),
            repetition_penalty: r.repetition_penalty,
            presence_penalty: r.presence_penalty.unwrap_or(0.0),
            frequency_penalty: r.frequency_penalty.unwrap_or(0.0),
            seed: r.seed,
        }),
        stopping: Some(v1::StoppingCriteria {
            // OpenAI's default is 16 tokens; the server's default serves clients that omit it better.
            max_tokens: r.max_tokens,
            min_tokens: r.min_tokens.unwrap_or(0),
            stop,
            stop_token_ids: vec![],
            ignore_eos: r.ignore_eos,
        }),
        logprobs: r.logprobs,
        ..Default::default()
    };
    Ok((native, r.stream, include_usage))
}

async fn completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Result<Response, HttpError> {
    let served = state.served().map_err(refuse)?.clone();
    let permit = state.permit().map_err(refuse)?;
    let req: CompletionRequest = serde_json::from_slice(&body)
        .map_err(|e| refuse(ApiError::new(ErrorKind::Invalid, format!("malformed JSON request: {e}"))))?;
    let (native, stream, include_usage) = to_native(req).map_err(refuse)?;
    let valid = validate(native, &served, state.limits()).await.map_err(refuse)?;
    let g = Generation::start(&served, valid, state.opts.log_requests).map_err(refuse)?;
    let id = format!("cmpl-{}", g.request_id);
    let model = served.desc.name.clone();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let bounds = Bounds { deadline: None, aborted: state.aborted() };

    if !stream {
        let _permit = permit;
        let all = g.collect(bounds).await.map_err(HttpError)?;
        let f = all.finish.expect("a generation ends with a finish. This is a bug.");
        let body = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": all.text, "logprobs": logprobs_json(&all.logprobs),
                         "finish_reason": finish_reason(f.reason), "stop_reason": stop_reason(&f)}],
            "usage": usage_json(&f.usage),
        });
        return Ok(Json(body).into_response());
    }

    // Streamed: a task drives the generation into a bounded channel whose receiver is the body.
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let data = |v: Value| Ok(Event::default().data(v.to_string()));
        let events = |c: Chunk| {
            let mut out = vec![data(json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": c.text, "logprobs": logprobs_json(&c.logprobs),
                             "finish_reason": c.finish.as_ref().map(|f| finish_reason(f.reason)),
                             "stop_reason": c.finish.as_ref().map(stop_reason)}],
            }))];
            if let (Some(f), true) = (&c.finish, include_usage) {
                out.push(data(json!({"id": id, "object": "text_completion", "created": created, "model": model,
                                     "choices": [], "usage": usage_json(&f.usage)})));
            }
            out
        };
        g.pump(bounds, tx, events, |e| Ok(error_event(&e)), Some(Ok(Event::default().data("[DONE]")))).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response())
}

fn error_event(e: &ApiError) -> Event {
    Event::default().data(json!({"error": {"message": e.to_string(), "code": e.code() as i32}}).to_string())
}

fn finish_reason(r: v1::FinishReason) -> &'static str {
    match r {
        v1::FinishReason::Length => "length",
        _ => "stop",
    }
}

/// vLLM's `stop_reason`: the stop string or stop token id, null for EOS and length.
fn stop_reason(f: &crate::generate::Finish) -> Value {
    match (&f.stop_string, f.stop_token) {
        (Some(s), _) => json!(s),
        (None, Some(t)) => json!(t),
        _ => Value::Null,
    }
}

fn usage_json(u: &v1::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// OpenAI's legacy completions logprobs object, or null.
fn logprobs_json(lps: &[v1::TokenLogprob]) -> Value {
    if lps.is_empty() {
        return Value::Null;
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps
            .iter()
            .map(|l| l.top.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>())
            .collect::<Vec<_>>(),
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, HttpError> {
    let served =
        state.model().ok_or_else(|| HttpError(ApiError::new(ErrorKind::Unavailable, "the model is still loading")))?;
    let d = &served.desc;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": d.name, "object": "model", "created": 0, "owned_by": "hearth", "max_model_len": d.context_length}],
    })))
}
