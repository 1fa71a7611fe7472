//! Every RPC and error path of the gRPC services, in process: the tonic server and client talk
//! over an in-memory duplex pipe (no network), and the engine runs the real Gemma 3 270M on the
//! CPU backend. Generations are short (a few tokens).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hearth_backends::{CpuBackend, CpuOptions};
use hearth_engine::{Engine, EngineConfig};
use hearth_models::{GgufFile, Tokenizer, store};
use hearth_proto::v1::generation_client::GenerationClient;
use hearth_proto::v1::models_client::ModelsClient;
use hearth_proto::v1::{self, generate_request::Prompt, generate_response::StopCause};
use hearth_server::{AppState, Limits, ModelDesc, Served, ServerOptions};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

fn load(cfg: EngineConfig, kv_tokens: usize) -> Served {
    let path = store::default_model_for_tests();
    let g = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    // Gemma 3 270M: 18 layers × 1 KV head × 256 × (K+V) × f16.
    let per_token = 18 * 256 * 2 * 2;
    let b =
        CpuBackend::load(&g, &CpuOptions { kv_cache_bytes: kv_tokens * per_token, ..CpuOptions::default() }).unwrap();
    let caps = hearth_core::Backend::caps(&b).clone();
    let (block_size, num_blocks) = caps.kv.pool();
    let cfg = EngineConfig { eog_tokens: tok.eog_tokens().to_vec(), ..cfg };
    let (engine, _) = Engine::spawn(b, cfg, Some(hearth_server::metrics::step_observer()));
    Served {
        engine,
        tokenizer: Some(Arc::new(tok)),
        desc: ModelDesc {
            name: store::DEFAULT_MODEL.into(),
            architecture: "gemma3".into(),
            quantization: "gguf".into(),
            context_length: caps.max_context,
            vocab_size: caps.vocab_size,
            checksum_sha256: Some(store::manifest(store::DEFAULT_MODEL).unwrap().sha256),
            backend: caps.name.into(),
            kv_cache_tokens: block_size * num_blocks,
            kv_block_size: block_size,
        },
    }
}

/// One engine on the real model shared by the tests that do not need their own.
fn shared() -> Served {
    static S: OnceLock<Served> = OnceLock::new();
    S.get_or_init(|| load(EngineConfig::default(), 16_384)).clone()
}

fn limits() -> Limits {
    Limits { max_prompt_tokens: 256, max_tokens_cap: 512, ..Limits::default() }
}

struct Harness {
    state: Arc<AppState>,
    channel: Channel,
}

impl Harness {
    async fn start(served: Option<Served>, limits: Limits) -> Harness {
        let opts = ServerOptions { limits, log_requests: false, shutdown_grace: Duration::from_secs(5) };
        let (state, router) = hearth_server::build(opts).await.unwrap();
        if let Some(s) = served {
            state.set_served(s).await;
        }
        // A new in-memory connection per dial (tonic: examples/src/mock).
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<tokio::io::DuplexStream, std::io::Error>>(4);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        tokio::spawn(router.serve_with_incoming(incoming));
        let channel = Endpoint::try_from("http://in-process.test")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let tx = tx.clone();
                async move {
                    let (client, server) = tokio::io::duplex(1 << 16);
                    tx.send(Ok(server)).await.map_err(|_| std::io::Error::other("server gone"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }))
            .await
            .unwrap();
        Harness { state, channel }
    }

    fn client(&self) -> GenerationClient<Channel> {
        GenerationClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
}

fn text_req(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        prompt: Some(Prompt::Text(text.into())),
        sampling: Some(v1::SamplingParams { temperature: Some(0.0), ..Default::default() }),
        stopping: Some(v1::StoppingCriteria { max_tokens: Some(max_tokens), ..Default::default() }),
        ..Default::default()
    }
}

/// Streams a request; returns the messages.
async fn stream_all(h: &Harness, req: v1::GenerateRequest) -> Vec<v1::GenerateStreamResponse> {
    let mut s = h.client().generate_stream(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push(m);
    }
    out
}

const PROMPT: &str = "The three primary colors are";
/// Over two KV blocks of tokens, so a repeat hits the prefix cache.
const LONG_PROMPT: &str = "Rust is a general-purpose programming language emphasizing performance, type safety \
    and concurrency. It enforces memory safety, meaning that all references point to valid memory, without a \
    garbage collector. To simultaneously enforce memory safety and prevent data races, its borrow checker tracks";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_and_stream_agree_and_report_usage() {
    let h = Harness::start(Some(shared()), limits()).await;
    let unary = h.client().generate(text_req(LONG_PROMPT, 12)).await.unwrap().into_inner();
    let msgs = stream_all(&h, text_req(LONG_PROMPT, 12)).await;
    let ids: Vec<u32> = msgs.iter().flat_map(|m| m.token_ids.clone()).collect();
    let text: String = msgs.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(ids, unary.token_ids);
    assert_eq!(text, unary.text);
    assert!(!text.is_empty());
    let last = msgs.last().unwrap();
    assert!(msgs[..msgs.len() - 1].iter().all(|m| m.usage.is_none() && m.finish_reason == 0), "only the last finishes");
    let usage = last.usage.unwrap();
    let n_prompt =
        h.client().tokenize(v1::TokenizeRequest { text: LONG_PROMPT.into(), ..Default::default() }).await.unwrap();
    assert_eq!(usage.prompt_tokens as usize, n_prompt.into_inner().token_ids.len());
    assert_eq!(usage.completion_tokens as usize, ids.len() + usize::from(last.stop_cause.is_some()));
    assert!(usage.total_seconds >= usage.time_to_first_token_seconds && usage.time_to_first_token_seconds > 0.0);
    assert!(usage.cached_tokens > 0, "the second identical prompt hits the prefix cache");
    assert!(last.request_id.starts_with("req-"));
    // The text is the detokenized ids.
    let detok = h.client().detokenize(v1::DetokenizeRequest { token_ids: ids, ..Default::default() }).await.unwrap();
    assert_eq!(detok.into_inner().text, text);
    // A client request id is echoed.
    let mut r = text_req(PROMPT, 2);
    r.request_id = "client-42".into();
    assert_eq!(h.client().generate(r).await.unwrap().into_inner().request_id, "client-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_detokenize_and_models() {
    let h = Harness::start(Some(shared()), limits()).await;
    let t =
        h.client().tokenize(v1::TokenizeRequest { text: "Hello world".into(), ..Default::default() }).await.unwrap();
    let t = t.into_inner();
    assert_eq!(t.token_ids[0], 2, "BOS");
    assert_eq!(t.tokens.len(), t.token_ids.len());
    let no_bos =
        v1::TokenizeRequest { text: "Hello world".into(), add_special_tokens: Some(false), ..Default::default() };
    assert_eq!(h.client().tokenize(no_bos).await.unwrap().into_inner().token_ids, t.token_ids[1..]);
    let d = h.client().detokenize(v1::DetokenizeRequest { token_ids: t.token_ids.clone(), ..Default::default() }).await;
    assert_eq!(d.unwrap().into_inner().text, "Hello world");
    let keep = v1::DetokenizeRequest { token_ids: t.token_ids, skip_special_tokens: Some(false), ..Default::default() };
    assert_eq!(h.client().detokenize(keep).await.unwrap().into_inner().text, "<bos>Hello world");

    let mut m = ModelsClient::new(h.channel.clone());
    let list = m.list_models(v1::ListModelsRequest {}).await.unwrap().into_inner();
    assert_eq!(list.models.len(), 1);
    let info = m.model_info(v1::ModelInfoRequest { name: "gemma3-270m".into() }).await.unwrap().into_inner();
    assert_eq!(info, list.models[0]);
    assert_eq!((info.vocab_size, info.architecture.as_str(), info.backend.as_str()), (262_144, "gemma3", "cpu"));
    assert_eq!(info.checksum_sha256, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    assert_eq!((info.max_prompt_tokens, info.max_tokens_cap), (256, 512));
    let e = m.model_info(v1::ModelInfoRequest { name: "llama-70b".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().starts_with("model: unknown model `llama-70b`"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_spanning_tokens_and_stop_tokens() {
    let h = Harness::start(Some(shared()), limits()).await;
    let msgs = stream_all(&h, text_req(PROMPT, 24)).await;
    let pieces: Vec<&str> = msgs.iter().map(|m| m.text.as_str()).collect();
    let full: String = pieces.concat();
    // A stop string made of the end of one token's text and the start of the next one's.
    let i = (1..pieces.len() - 1)
        .find(|&i| pieces[i].chars().count() >= 2 && !pieces[i + 1].is_empty())
        .expect("some adjacent tokens with text");
    let stop = format!("{}{}", pieces[i].chars().last().unwrap(), pieces[i + 1].chars().next().unwrap());
    let want = &full[..full.find(&stop).unwrap()];
    let mut r = text_req(PROMPT, 24);
    r.stopping.as_mut().unwrap().stop = vec!["no such text at all".into(), stop.clone()];
    let streamed = stream_all(&h, r.clone()).await;
    let text: String = streamed.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(text, want, "text up to, not including, the stop string {stop:?}");
    let last = streamed.last().unwrap();
    assert_eq!(last.finish_reason, v1::FinishReason::Stop as i32);
    assert_eq!(last.stop_cause, Some(v1::generate_stream_response::StopCause::StopString(stop.clone())));
    let unary = h.client().generate(r).await.unwrap().into_inner();
    assert_eq!((unary.text.as_str(), unary.stop_cause), (want, Some(StopCause::StopString(stop))));

    // A stop token: generation ends before it, and it is named.
    let ids: Vec<u32> = msgs.iter().flat_map(|m| m.token_ids.clone()).collect();
    let mut r = text_req(PROMPT, 24);
    r.stopping.as_mut().unwrap().stop_token_ids = vec![ids[3]];
    let first = ids.iter().position(|&t| t == ids[3]).unwrap();
    let out = h.client().generate(r).await.unwrap().into_inner();
    assert_eq!(out.token_ids, ids[..first]);
    assert_eq!(out.stop_cause, Some(StopCause::StopTokenId(ids[3])));
    assert_eq!(out.finish_reason, v1::FinishReason::Stop as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_prompt_logprobs_and_seeded_sampling() {
    let h = Harness::start(Some(shared()), limits()).await;
    let mut r = text_req(PROMPT, 6);
    r.logprobs = Some(3);
    r.prompt_logprobs = Some(2);
    let out = h.client().generate(r).await.unwrap().into_inner();
    assert_eq!(out.logprobs.len(), out.token_ids.len());
    for (lp, &id) in out.logprobs.iter().zip(&out.token_ids) {
        assert_eq!(lp.token_id, id);
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].token_id, id, "greedy picks the most likely token");
        assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].logprob).abs() < 1e-6);
    }
    let usage = out.usage.unwrap();
    assert_eq!(out.prompt_logprobs.len(), usage.prompt_tokens as usize - 1);
    assert_eq!(usage.cached_tokens, 0, "prompt logprobs compute the whole prompt");
    let prompt_ids =
        h.client().tokenize(v1::TokenizeRequest { text: PROMPT.into(), ..Default::default() }).await.unwrap();
    let prompt_ids = prompt_ids.into_inner().token_ids;
    for (lp, &id) in out.prompt_logprobs.iter().zip(&prompt_ids[1..]) {
        assert_eq!((lp.token_id, lp.top.len()), (id, 2));
        assert!(lp.logprob.is_finite() && lp.logprob <= 0.0 && lp.top[0].logprob >= lp.logprob - 1e-6);
    }

    let sampled = |seed| {
        let mut r = text_req(PROMPT, 12);
        r.sampling = Some(v1::SamplingParams { temperature: Some(1.0), seed: Some(seed), ..Default::default() });
        r.stopping.as_mut().unwrap().ignore_eos = true;
        let mut c = h.client();
        async move { c.generate(r).await.unwrap().into_inner().token_ids }
    };
    let (a, b, c) = tokio::join!(sampled(7), sampled(7), sampled(8));
    assert_eq!(a, b, "same seed, same tokens, even sharing a batch");
    assert_ne!(a, c);
}

/// Each bad request gets its status and a message naming the field; the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses() {
    let h = Harness::start(Some(shared()), limits()).await;
    let base = || text_req(PROMPT, 4);
    let with_sampling = |f: fn(&mut v1::SamplingParams)| {
        let mut r = base();
        f(r.sampling.as_mut().unwrap());
        r
    };
    let with_stopping = |f: fn(&mut v1::StoppingCriteria)| {
        let mut r = base();
        f(r.stopping.as_mut().unwrap());
        r
    };
    let cases: Vec<(&str, v1::GenerateRequest, Code, &str)> = vec![
        ("no prompt", v1::GenerateRequest::default(), Code::InvalidArgument, "prompt: "),
        ("empty text", text_req("", 4), Code::InvalidArgument, "text: must not be empty"),
        (
            "empty ids",
            v1::GenerateRequest { prompt: Some(Prompt::TokenIds(v1::TokenIds { ids: vec![] })), ..base() },
            Code::InvalidArgument,
            "token_ids.ids: must not be empty",
        ),
        (
            "id out of vocabulary",
            v1::GenerateRequest { prompt: Some(Prompt::TokenIds(v1::TokenIds { ids: vec![2, 300_000] })), ..base() },
            Code::InvalidArgument,
            "token_ids.ids[1]: token id 300000 is outside the vocabulary",
        ),
        (
            "NaN temperature",
            with_sampling(|s| s.temperature = Some(f32::NAN)),
            Code::InvalidArgument,
            "sampling.temperature: ",
        ),
        (
            "negative temperature",
            with_sampling(|s| s.temperature = Some(-1.0)),
            Code::InvalidArgument,
            "sampling.temperature: ",
        ),
        ("top_p 0", with_sampling(|s| s.top_p = Some(0.0)), Code::InvalidArgument, "sampling.top_p: "),
        ("top_p 1.5", with_sampling(|s| s.top_p = Some(1.5)), Code::InvalidArgument, "sampling.top_p: "),
        ("top_k -1", with_sampling(|s| s.top_k = -1), Code::InvalidArgument, "sampling.top_k: "),
        ("min_p 2", with_sampling(|s| s.min_p = 2.0), Code::InvalidArgument, "sampling.min_p: "),
        ("max_tokens 0", with_stopping(|s| s.max_tokens = Some(0)), Code::InvalidArgument, "stopping.max_tokens: "),
        (
            "max_tokens beyond the cap",
            with_stopping(|s| s.max_tokens = Some(100_000)),
            Code::InvalidArgument,
            "stopping.max_tokens: 100000 exceeds the server's cap of 512",
        ),
        (
            "min_tokens > max_tokens",
            with_stopping(|s| s.min_tokens = 9),
            Code::InvalidArgument,
            "stopping.min_tokens: ",
        ),
        (
            "empty stop string",
            with_stopping(|s| s.stop = vec![String::new()]),
            Code::InvalidArgument,
            "stopping.stop[0]: ",
        ),
        ("17 stop strings", with_stopping(|s| s.stop = vec!["x".into(); 17]), Code::InvalidArgument, "stopping.stop: "),
        (
            "stop token out of vocabulary",
            with_stopping(|s| s.stop_token_ids = vec![1, 999_999]),
            Code::InvalidArgument,
            "stopping.stop_token_ids[1]: ",
        ),
        ("logprobs 21", v1::GenerateRequest { logprobs: Some(21), ..base() }, Code::InvalidArgument, "logprobs: "),
        (
            "prompt_logprobs 99",
            v1::GenerateRequest { prompt_logprobs: Some(99), ..base() },
            Code::InvalidArgument,
            "prompt_logprobs: ",
        ),
        (
            "unknown model",
            v1::GenerateRequest { model: "gpt-5".into(), ..base() },
            Code::NotFound,
            "model: unknown model",
        ),
        ("prompt too long", text_req(&"word ".repeat(400), 4), Code::OutOfRange, "prompt: "),
        (
            "request id with control characters",
            v1::GenerateRequest { request_id: "a\nb".into(), ..base() },
            Code::InvalidArgument,
            "request_id: ",
        ),
    ];
    for (what, req, code, msg) in cases {
        let stream_req = req.clone();
        let e = h.client().generate(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        assert!(e.message().starts_with(msg), "{what}: {:?} should start with {msg:?}", e.message());
        let e = h.client().generate_stream(stream_req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what} (stream)");
    }

    // A 10 MB message: over the 4 MiB limit.
    let e = h.client().generate(text_req(&"a".repeat(10 << 20), 4)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{}", e.message());
    assert!(e.message().contains("message length too large"), "{}", e.message());

    // Invalid UTF-8 where the .proto says `string`: sent raw, as a broken client would.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RawGenerate {
        #[prost(bytes = "vec", tag = "2")]
        text: Vec<u8>,
    }
    let mut grpc = tonic::client::Grpc::new(h.channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/hearth.v1.Generation/Generate");
    let r: Result<tonic::Response<v1::GenerateResponse>, _> = grpc
        .unary(Request::new(RawGenerate { text: vec![b'h', 0xff, 0xfe] }), path, tonic_prost::ProstCodec::default())
        .await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("GenerateRequest.prompt: invalid string value"), "names the field: {}", e.message());

    // Still serving.
    let ok = h.client().generate(text_req(PROMPT, 3)).await.unwrap().into_inner();
    assert!(!ok.token_ids.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_cancellation_and_full_queues() {
    let served = load(EngineConfig { max_num_seqs: 1, max_waiting: 1, ..EngineConfig::default() }, 4096);
    let engine = served.engine.clone();
    let h = Harness::start(Some(served), Limits { max_concurrent_requests: 3, ..limits() }).await;
    let long = || {
        let mut r = text_req(PROMPT, 500);
        r.stopping.as_mut().unwrap().ignore_eos = true;
        r
    };
    let idle = || {
        let s = engine.stats().unwrap();
        s.running == 0 && s.waiting == 0 && s.kv.used == 0
    };
    let wait_idle = || async {
        for _ in 0..500 {
            let e = engine.clone();
            if tokio::task::spawn_blocking(move || e.stats().unwrap()).await.unwrap().kv.used == 0 && idle() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the engine did not free the request's blocks");
    };

    // Deadlines, unary and streamed.
    let mut req = Request::new(long());
    req.set_timeout(Duration::from_millis(400));
    let e = h.client().generate(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    wait_idle().await;
    let mut req = Request::new(long());
    req.set_timeout(Duration::from_millis(400));
    let mut s = h.client().generate_stream(req).await.unwrap().into_inner();
    let e = loop {
        match s.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without the deadline"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::DeadlineExceeded);
    wait_idle().await;

    // A client that goes away mid-stream: the engine frees its blocks.
    let mut s = h.client().generate_stream(long()).await.unwrap().into_inner();
    s.message().await.unwrap().unwrap();
    assert!(!idle(), "the request is running");
    drop(s);
    wait_idle().await;

    // One running, one waiting (max_waiting 1): the third is refused at once by the engine queue.
    let mut running = h.client().generate_stream(long()).await.unwrap().into_inner();
    running.message().await.unwrap().unwrap();
    let mut waiting = h.client().generate_stream(long()).await.unwrap().into_inner();
    let e = h.client().generate(text_req(PROMPT, 4)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("queue is full"), "{}", e.message());
    // And with three in flight (the concurrency limit) the fourth is refused before the engine.
    let third = h.client().generate_stream(long()).await;
    assert_eq!(third.unwrap_err().code(), Code::ResourceExhausted);
    drop(running);
    waiting.message().await.unwrap().unwrap();
    drop(waiting);
    wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_lifecycle() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let h = Harness::start(None, limits()).await;
    let health = HealthClient::new(h.channel.clone());
    let status = |service: &str| {
        let mut c = health.clone();
        let service = service.to_string();
        async move { c.check(HealthCheckRequest { service }).await.unwrap().into_inner().status() }
    };
    assert_eq!(status("").await, ServingStatus::NotServing, "loading");
    let e = h.client().generate(text_req(PROMPT, 2)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unavailable, "the model is still loading"));
    h.state.set_served(shared()).await;
    assert_eq!(status("").await, ServingStatus::Serving);
    assert_eq!(status("hearth.v1.Generation").await, ServingStatus::Serving);

    // Reflection, both versions: the services are listed and hearth.v1 resolves.
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_client::ServerReflectionClient};
    let mut refl = ServerReflectionClient::new(h.channel.clone());
    let ask = |m: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(m) };
    let reqs = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("hearth.v1.Generation".into())),
    ]);
    let mut answers = refl.server_reflection_info(reqs).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["hearth.v1.Generation", "hearth.v1.Models", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(fd)) = answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a file descriptor")
    };
    assert!(!fd.file_descriptor_proto.is_empty());
    {
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest as AlphaReq, server_reflection_client::ServerReflectionClient as Alpha,
        };
        let mut alpha = Alpha::new(h.channel.clone());
        let req = AlphaReq { host: String::new(), message_request: Some(AlphaRequest::ListServices(String::new())) };
        let mut a = alpha.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
        assert!(a.message().await.unwrap().is_some(), "v1alpha answers");
    }

    // HTTP probes and metrics, in process.
    use tower::ServiceExt;
    let get = |path: &'static str| {
        let app = hearth_server::http::router(h.state.clone());
        async move {
            let r = app.oneshot(axum_request(path)).await.unwrap();
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    assert_eq!(get("/ready").await.0, 200);
    assert_eq!(get("/health").await.0, 200);
    let (code, metrics) = get("/metrics").await;
    assert_eq!(code, 200);
    for name in [
        "hearth_requests_total",
        "hearth_kv_cache_blocks{state=\"free\"}",
        "hearth_model_info{",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }

    // Draining: NOT_SERVING, new generations refused, /ready says so.
    h.state.begin_drain().await;
    assert_eq!(status("").await, ServingStatus::NotServing);
    let e = h.client().generate(text_req(PROMPT, 2)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::Unavailable, "the server is shutting down"));
    assert_eq!(get("/ready").await, (503, "shutting down\n".into()));
}

fn axum_request(path: &str) -> axum::http::Request<axum::body::Body> {
    axum::http::Request::builder().uri(path).body(axum::body::Body::empty()).unwrap()
}

/// A model without a tokenizer (dummy weights, a bare checkpoint): token ids in, token ids out,
/// and a precise refusal for text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_tokenizer_serves_token_ids() {
    use hearth_models::candle_core::quantized::GgmlDType;
    use hearth_models::testing::{TinySpec, tiny_gemma3_weights, write_tiny_gguf};
    let spec = TinySpec::default();
    let path = std::env::temp_dir().join(format!("hearth-server-tiny-{}.gguf", std::process::id()));
    write_tiny_gguf(&path, "gemma3", &spec, &tiny_gemma3_weights(&spec, 3), GgmlDType::Q8_0).unwrap();
    let b = CpuBackend::load(
        &GgufFile::open(&path).unwrap(),
        &CpuOptions { kv_cache_bytes: 1 << 20, ..CpuOptions::default() },
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    let caps = hearth_core::Backend::caps(&b).clone();
    let (engine, _) = Engine::spawn(b, EngineConfig::default(), None);
    let desc = ModelDesc {
        name: "tiny".into(),
        architecture: "gemma3".into(),
        quantization: "dummy".into(),
        context_length: caps.max_context,
        vocab_size: caps.vocab_size,
        checksum_sha256: None,
        backend: "cpu".into(),
        kv_cache_tokens: 0,
        kv_block_size: 16,
    };
    let h = Harness::start(Some(Served { engine, tokenizer: None, desc }), limits()).await;
    let mut r = text_req("", 5);
    r.prompt = Some(Prompt::TokenIds(v1::TokenIds { ids: vec![1, 5, 9] }));
    r.stopping.as_mut().unwrap().ignore_eos = true;
    let out = h.client().generate(r).await.unwrap().into_inner();
    assert_eq!((out.token_ids.len(), out.text.as_str()), (5, ""));
    let e = h.client().generate(text_req("hello", 5)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("text: this model has no tokenizer"), "{}", e.message());
    let e = h.client().tokenize(v1::TokenizeRequest { text: "hi".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// The OpenAI-compatible HTTP surface, in process: plain and streamed completions, errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completions_plain_streamed_and_errors() {
    use tower::ServiceExt;
    let h = Harness::start(Some(shared()), limits()).await;
    let post = |body: serde_json::Value| {
        let app = hearth_server::http::router(h.state.clone());
        async move {
            let req = axum::http::Request::post("/v1/completions")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            let r = app.oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let native = h.client().generate(text_req(PROMPT, 8)).await.unwrap().into_inner();
    let (code, body) = post(serde_json::json!({"prompt": PROMPT, "max_tokens": 8, "temperature": 0})).await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["text"], native.text.as_str(), "same text as the gRPC API");
    assert_eq!(v["usage"]["completion_tokens"], native.token_ids.len() + usize::from(native.stop_cause.is_some()));
    assert_eq!(v["object"], "text_completion");

    // Streamed, token ids in, usage at the end, then [DONE].
    let (code, body) = post(serde_json::json!({
        "prompt": [2, 818, 5279, 529], "max_tokens": 5, "temperature": 0, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true}
    }))
    .await;
    assert_eq!(code, 200);
    let events: Vec<&str> = body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let parsed: Vec<serde_json::Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let usage = &parsed.last().unwrap()["usage"];
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(4), Some(5)));
    let finishes: Vec<&serde_json::Value> =
        parsed.iter().filter_map(|p| p["choices"].get(0)).map(|c| &c["finish_reason"]).collect();
    assert_eq!(finishes.last().unwrap().as_str(), Some("length"));
    assert!(finishes[..finishes.len() - 1].iter().all(|f| f.is_null()));

    for (body, status, param) in [
        (serde_json::json!({"prompt": "x", "top_p": 3}), 400, "top_p"),
        (serde_json::json!({"prompt": "x", "max_tokens": 0}), 400, "max_tokens"),
        (serde_json::json!({"prompt": [2, 999999]}), 400, "prompt"),
        (serde_json::json!({"prompt": "x", "model": "nope"}), 404, "model"),
        (serde_json::json!({"prompt": "x", "n": 2}), 400, "n"),
    ] {
        let (code, text) = post(body.clone()).await;
        assert_eq!(code, status, "{body}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{text}");
    }
    let (code, text) = post(serde_json::json!({"no_prompt": true})).await;
    assert_eq!(code, 400, "{text}");
}
