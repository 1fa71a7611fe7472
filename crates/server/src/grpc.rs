//! The gRPC services: `hearth.v1.Generation`, `hearth.v1.Models`, standard health
//! (`grpc.health.v1`) and server reflection (`v1` and `v1alpha`), assembled into one tonic router.
//!
//! Each generation holds a concurrency permit for its whole life. A streamed generation runs in
//! its own task that forwards chunks into a bounded channel (16 messages) whose receiver is the
//! response body; the task ends (dropping the engine stream, which aborts the request) when the
//! client goes away, the `grpc-timeout` deadline passes (`DEADLINE_EXCEEDED`), or the server
//! aborts in-flight work at the end of its shutdown grace (`UNAVAILABLE`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_proto::v1::generation_server::{Generation as GenerationApi, GenerationServer};
use hearth_proto::v1::models_server::{Models as ModelsApi, ModelsServer};
use hearth_proto::v1::{self, generate_response, generate_stream_response};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::error::{ApiError, ErrorKind};
use crate::generate::{Bounds, Chunk, Generation};
use crate::metrics;
use crate::state::{AppState, ServerOptions};
use crate::validate::{ValidRequest, check_ids, check_model, tokenize, validate};

/// The state and the router with every service; the model is set later ([`AppState::set_served`]),
/// and until then health says NOT_SERVING and generations get `UNAVAILABLE`.
pub async fn build(opts: ServerOptions) -> Result<(Arc<AppState>, Router), crate::ServerError> {
    crate::metrics::install();
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, false).await;
    let max_msg = opts.limits.max_message_bytes;
    let streams = u32::try_from(opts.limits.max_concurrent_requests).unwrap_or(u32::MAX).saturating_add(64);
    let state = AppState::new(opts, reporter);
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(hearth_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
    let v1alpha = reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(
            GenerationServer::new(GenerationService { state: state.clone() })
                .max_decoding_message_size(max_msg)
                .max_encoding_message_size(64 << 20),
        )
        .add_service(ModelsServer::new(ModelsService { state: state.clone() }).max_decoding_message_size(max_msg));
    Ok((state, router))
}

/// Sets the overall (`""`) and per-service health status.
pub(crate) async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    for name in [
        "",
        <GenerationServer<GenerationService> as NamedService>::NAME,
        <ModelsServer<ModelsService> as NamedService>::NAME,
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// The client's deadline from the `grpc-timeout` header (`<1-8 digits><H|M|S|m|u|n>`).
pub fn deadline(meta: &MetadataMap) -> Result<Option<Instant>, ApiError> {
    let Some(v) = meta.get("grpc-timeout") else { return Ok(None) };
    let bad = || ApiError::invalid("grpc-timeout", "malformed header");
    let v = v.to_str().map_err(|_| bad())?;
    if v.len() < 2 || v.len() > 9 {
        return Err(bad());
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return Err(bad()),
    };
    // tonic's own timeout layer answers CANCELLED at the deadline (counted from a little earlier,
    // when the request arrived); finish first, with the proper DEADLINE_EXCEEDED.
    let margin = (d / 10).min(Duration::from_millis(25));
    Ok(Some(Instant::now() + d - margin))
}

/// Counts a refusal and makes it a status.
fn refuse(e: ApiError) -> Status {
    metrics::record_refused(e.outcome());
    e.into()
}

pub struct GenerationService {
    state: Arc<AppState>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateStreamResponse, Status>> + Send>>;

impl GenerationService {
    /// Everything before the engine: readiness, permit, deadline, validation, submission.
    async fn start(
        &self,
        req: Request<v1::GenerateRequest>,
    ) -> Result<(Generation, tokio::sync::OwnedSemaphorePermit, Option<Instant>), Status> {
        let served = self.state.served().map_err(refuse)?.clone();
        let permit = self.state.permit().map_err(refuse)?;
        let deadline = deadline(req.metadata()).map_err(refuse)?;
        let req = req.into_inner();
        let prompt_text = self.state.opts.log_requests.then(|| format!("{:?}", req.prompt));
        let valid: ValidRequest = validate(req, &served, self.state.limits()).await.map_err(refuse)?;
        let generation = Generation::start(&served, valid, self.state.opts.log_requests).map_err(refuse)?;
        if let Some(p) = prompt_text {
            tracing::info!(request_id = %generation.request_id, prompt = %p, "request");
        }
        Ok((generation, permit, deadline))
    }
}

#[tonic::async_trait]
impl GenerationApi for GenerationService {
    async fn generate(&self, req: Request<v1::GenerateRequest>) -> Result<Response<v1::GenerateResponse>, Status> {
        let (g, _permit, deadline) = self.start(req).await?;
        let request_id = g.request_id.clone();
        let all = g.collect(Bounds { deadline, aborted: self.state.aborted() }).await?;
        let mut out = v1::GenerateResponse {
            request_id,
            token_ids: all.token_ids,
            text: all.text,
            logprobs: all.logprobs,
            prompt_logprobs: all.prompt_logprobs,
            ..Default::default()
        };
        if let Some(f) = all.finish {
            out.finish_reason = f.reason as i32;
            out.stop_cause = match (f.stop_token, f.stop_string) {
                (_, Some(s)) => Some(generate_response::StopCause::StopString(s)),
                (Some(t), None) => Some(generate_response::StopCause::StopTokenId(t)),
                (None, None) => None,
            };
            out.usage = Some(f.usage);
        }
        Ok(Response::new(out))
    }

    type GenerateStreamStream = ChunkStream;

    async fn generate_stream(
        &self,
        req: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStreamStream>, Status> {
        let (g, permit, deadline) = self.start(req).await?;
        let bounds = Bounds { deadline, aborted: self.state.aborted() };
        // The task owns the generation and the permit; the response body owns `rx`.
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _permit = permit;
            let id = g.request_id.clone();
            g.pump(bounds, tx, |c| vec![Ok(stream_message(&id, c))], |e| Err(e.into()), None).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn tokenize(&self, req: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        let served = self.state.model().ok_or_else(loading)?;
        let req = req.into_inner();
        check_model(&req.model, served)?;
        let tok = served.tokenizer.clone().ok_or_else(no_tokenizer)?;
        if req.text.len() > self.state.limits().max_message_bytes {
            return Err(ApiError::invalid("text", "longer than the message limit").into());
        }
        let ids = tokenize(tok.clone(), req.text, req.add_special_tokens.unwrap_or(true)).await?;
        let ids2 = ids.clone();
        let tokens = tokio::task::spawn_blocking(move || {
            ids2.iter().map(|&id| tok.decode(&[id], false).unwrap_or_default()).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| Status::internal(format!("tokenizer task failed: {e}")))?;
        Ok(Response::new(v1::TokenizeResponse { token_ids: ids, tokens }))
    }

    async fn detokenize(
        &self,
        req: Request<v1::DetokenizeRequest>,
    ) -> Result<Response<v1::DetokenizeResponse>, Status> {
        let served = self.state.model().ok_or_else(loading)?;
        let req = req.into_inner();
        check_model(&req.model, served)?;
        let tok = served.tokenizer.clone().ok_or_else(no_tokenizer)?;
        let vocab = served.desc.vocab_size;
        check_ids("token_ids", &req.token_ids, vocab)?;
        let skip = req.skip_special_tokens.unwrap_or(true);
        let text = tokio::task::spawn_blocking(move || tok.decode(&req.token_ids, skip))
            .await
            .map_err(|e| Status::internal(format!("detokenizer task failed: {e}")))?
            .map_err(|e| Status::internal(format!("detokenizing: {e}")))?;
        Ok(Response::new(v1::DetokenizeResponse { text }))
    }
}

fn loading() -> ApiError {
    ApiError::new(ErrorKind::Unavailable, "the model is still loading")
}

fn no_tokenizer() -> ApiError {
    ApiError::invalid("model", "this model has no tokenizer here (dummy weights)")
}

fn stream_message(id: &str, c: Chunk) -> v1::GenerateStreamResponse {
    let mut m = v1::GenerateStreamResponse {
        request_id: id.to_string(),
        token_ids: c.token_ids,
        text: c.text,
        logprobs: c.logprobs,
        prompt_logprobs: c.prompt_logprobs,
        ..Default::default()
    };
    if let Some(f) = c.finish {
        m.finish_reason = f.reason as i32;
        m.stop_cause = match (f.stop_token, f.stop_string) {
            (_, Some(s)) => Some(generate_stream_response::StopCause::StopString(s)),
            (Some(t), None) => Some(generate_stream_response::StopCause::StopTokenId(t)),
            (None, None) => None,
        };
        m.usage = Some(f.usage);
    }
    m
}

pub struct ModelsService {
    state: Arc<AppState>,
}

impl ModelsService {
    fn info(&self) -> Result<v1::ModelInfoResponse, ApiError> {
        let served = self.state.model().ok_or_else(loading)?;
        let d = &served.desc;
        let limits = self.state.limits();
        Ok(v1::ModelInfoResponse {
            name: d.name.clone(),
            architecture: d.architecture.clone(),
            quantization: d.quantization.clone(),
            context_length: d.context_length as u32,
            vocab_size: d.vocab_size as u32,
            checksum_sha256: d.checksum_sha256.clone().unwrap_or_default(),
            backend: d.backend.clone(),
            kv_cache_tokens: d.kv_cache_tokens as u64,
            kv_block_size: d.kv_block_size as u32,
            max_prompt_tokens: limits.max_prompt_tokens.min(d.context_length.saturating_sub(1)) as u32,
            max_tokens_cap: limits.max_tokens_cap as u32,
        })
    }
}

#[tonic::async_trait]
impl ModelsApi for ModelsService {
    async fn list_models(&self, _: Request<v1::ListModelsRequest>) -> Result<Response<v1::ListModelsResponse>, Status> {
        Ok(Response::new(v1::ListModelsResponse { models: vec![self.info()?] }))
    }

    async fn model_info(&self, req: Request<v1::ModelInfoRequest>) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let served = self.state.model().ok_or_else(loading)?;
        let name = &req.get_ref().name;
        check_model(name, served)?;
        Ok(Response::new(self.info()?))
    }
}
