//! Where requests go: hearth's native gRPC API (`hearth.v1.Generation/GenerateStream`) or any
//! OpenAI-compatible server (`POST /v1/completions` with `stream: true`: hearth, llama.cpp's
//! `llama-server`, vLLM). Both report when each token arrived, so latencies are the client's view.

use std::time::{Duration, Instant};

use hearth_proto::v1;
use hearth_proto::v1::generation_client::GenerationClient;
use tonic::transport::Channel;

use crate::BenchError;
use crate::workload::BenchRequest;

/// One finished request, as the client saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Since the start of the run.
    pub sent_at: Duration,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub ttft: Duration,
    pub e2e: Duration,
    /// Gaps between token arrivals after the first (a message of n tokens counts n gaps of 1/n).
    pub itl: Vec<Duration>,
}

impl Record {
    /// Time per output token after the first (vLLM's TPOT); `None` for one-token outputs.
    pub fn tpot(&self) -> Option<Duration> {
        (self.output_tokens > 1).then(|| (self.e2e - self.ttft) / (self.output_tokens - 1))
    }
}

#[derive(Clone, Debug)]
pub enum Target {
    Grpc { client: GenerationClient<Channel> },
    OpenAi { http: reqwest::Client, url: String, model: Option<String> },
}

/// Tracks token arrivals of one request.
struct Clock {
    start: Instant,
    first: Option<Duration>,
    last: Duration,
    tokens: u32,
    itl: Vec<Duration>,
}

impl Clock {
    fn new() -> Self {
        Clock { start: Instant::now(), first: None, last: Duration::ZERO, tokens: 0, itl: Vec::new() }
    }

    fn tokens(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        let now = self.start.elapsed();
        match self.first {
            None => {
                self.first = Some(now);
                // The rest of a first message's tokens arrived with it.
                self.itl.extend(std::iter::repeat_n(Duration::ZERO, n as usize - 1));
            }
            Some(_) => {
                let gap = (now - self.last) / n;
                self.itl.extend(std::iter::repeat_n(gap, n as usize));
            }
        }
        self.last = now;
        self.tokens += n;
    }
}

impl Target {
    pub async fn grpc(addr: &str) -> Result<Target, BenchError> {
        let client = GenerationClient::connect(addr.to_string())
            .await
            .map_err(|e| BenchError::Connect(format!("{addr}: {e}")))?
            .max_decoding_message_size(64 << 20);
        Ok(Target::Grpc { client })
    }

    pub fn openai(base_url: &str, model: Option<String>) -> Result<Target, BenchError> {
        // A fresh connection per request: a pooled one the server closed while idle would fail
        // the next send (seen with llama-server); connecting to a local server costs microseconds.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| BenchError::Connect(e.to_string()))?;
        Ok(Target::OpenAi { http, url: format!("{}/v1/completions", base_url.trim_end_matches('/')), model })
    }

    /// Sends one request and waits for its last token. `Err` carries an error kind for the report.
    pub async fn send(&self, req: &BenchRequest, run_start: Instant) -> Result<Record, String> {
        let sent_at = run_start.elapsed();
        let mut clock = Clock::new();
        let usage_tokens = match self {
            Target::Grpc { client } => grpc_send(client.clone(), req, &mut clock).await?,
            Target::OpenAi { http, url, model } => openai_send(http, url, model.as_deref(), req, &mut clock).await?,
        };
        let e2e = clock.start.elapsed();
        let ttft = clock.first.ok_or("no_tokens")?;
        Ok(Record {
            sent_at,
            input_tokens: req.prompt.len() as u32,
            output_tokens: usage_tokens.unwrap_or(clock.tokens),
            ttft,
            e2e,
            itl: clock.itl,
        })
    }
}

async fn grpc_send(
    mut client: GenerationClient<Channel>,
    req: &BenchRequest,
    clock: &mut Clock,
) -> Result<Option<u32>, String> {
    let r = v1::GenerateRequest {
        prompt: Some(v1::generate_request::Prompt::TokenIds(v1::TokenIds { ids: req.prompt.clone() })),
        sampling: Some(v1::SamplingParams { temperature: Some(0.0), ..Default::default() }),
        stopping: Some(v1::StoppingCriteria {
            max_tokens: Some(req.max_tokens),
            ignore_eos: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let status_kind = |s: tonic::Status| format!("grpc_{:?}", s.code()).to_lowercase();
    let mut stream = client.generate_stream(r).await.map_err(status_kind)?.into_inner();
    let mut usage = None;
    while let Some(m) = stream.message().await.map_err(status_kind)? {
        clock.tokens(m.token_ids.len() as u32);
        if let Some(u) = m.usage {
            usage = Some(u.completion_tokens);
        }
    }
    Ok(usage)
}

async fn openai_send(
    http: &reqwest::Client,
    url: &str,
    model: Option<&str>,
    req: &BenchRequest,
    clock: &mut Clock,
) -> Result<Option<u32>, String> {
    let mut body = serde_json::json!({
        "prompt": req.prompt, "max_tokens": req.max_tokens, "temperature": 0.0, "ignore_eos": true,
        "stream": true, "stream_options": {"include_usage": true},
    });
    if let Some(m) = model {
        body["model"] = m.into();
    }
    let mut resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| if e.is_connect() { "connect".to_string() } else { "http_send".to_string() })?;
    if !resp.status().is_success() {
        return Err(format!("http_{}", resp.status().as_u16()));
    }
    // Server-sent events: `data: {...}\n\n`; a chunk with text is one token (llama-server, vLLM and
    // hearth send one per token); the usage chunk, when the server sends one, gives the exact count.
    let mut buf = Vec::new();
    let mut usage = None;
    while let Some(bytes) = resp.chunk().await.map_err(|_| "http_stream".to_string())? {
        buf.extend_from_slice(&bytes);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let line = String::from_utf8_lossy(&event);
            for data in line.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim) {
                if data == "[DONE]" {
                    return Ok(usage);
                }
                let v: serde_json::Value = serde_json::from_str(data).map_err(|_| "http_bad_event".to_string())?;
                if v.get("error").is_some() {
                    return Err("http_stream_error".into());
                }
                if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                    usage = Some(n as u32);
                }
                if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                    clock.tokens(1);
                }
            }
        }
    }
    Ok(usage)
}
