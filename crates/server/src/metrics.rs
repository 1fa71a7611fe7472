//! Prometheus metrics: names (DESIGN.md's), buckets (defined here only), the recorder, and what is
//! recorded where.
//!
//! - Per request (the serving layer, [`crate::generate`]): outcome, queue time, time to first
//!   token, inter-token latency, end-to-end latency, prompt and generated tokens.
//! - Per step (the engine thread, through [`step_observer`]): step duration by kind, batch tokens.
//! - At scrape (`/metrics`, [`render`]): queue and KV gauges from `EngineHandle::stats` (one round
//!   trip to the engine thread, answered between steps), prefix-cache and preemption counters,
//!   process RSS, and the model/KV configuration as an info gauge.
//!
//! The recorder is process-global (the `metrics` facade); [`install`] is idempotent.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

pub const REQUESTS_TOTAL: &str = "hearth_requests_total";
pub const NUM_REQUESTS_WAITING: &str = "hearth_num_requests_waiting";
pub const NUM_REQUESTS_RUNNING: &str = "hearth_num_requests_running";
pub const REQUESTS_IN_FLIGHT: &str = "hearth_requests_in_flight";
pub const KV_CACHE_USAGE_RATIO: &str = "hearth_kv_cache_usage_ratio";
pub const KV_CACHE_BLOCKS: &str = "hearth_kv_cache_blocks";
pub const PREFIX_CACHE_QUERIES_TOTAL: &str = "hearth_prefix_cache_queries_total";
pub const PREFIX_CACHE_HITS_TOTAL: &str = "hearth_prefix_cache_hits_total";
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "hearth_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "hearth_inter_token_latency_seconds";
pub const E2E_REQUEST_LATENCY_SECONDS: &str = "hearth_e2e_request_latency_seconds";
pub const REQUEST_QUEUE_TIME_SECONDS: &str = "hearth_request_queue_time_seconds";
pub const PROMPT_TOKENS_TOTAL: &str = "hearth_prompt_tokens_total";
pub const GENERATION_TOKENS_TOTAL: &str = "hearth_generation_tokens_total";
pub const PREEMPTIONS_TOTAL: &str = "hearth_preemptions_total";
pub const STEP_DURATION_SECONDS: &str = "hearth_step_duration_seconds";
pub const BATCH_TOKENS: &str = "hearth_batch_tokens";
/// Tokens computed only to fill a compiled shape (static-shape backends; 0 elsewhere).
pub const PADDING_TOKENS_TOTAL: &str = "hearth_padding_tokens_total";
/// Tokens the backend computed, padding included.
pub const COMPUTED_TOKENS_TOTAL: &str = "hearth_computed_tokens_total";
pub const MODEL_INFO: &str = "hearth_model_info";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";

/// Histogram buckets, all in one place.
pub mod buckets {
    /// Request latencies a person waits on: 1 ms to 60 s.
    pub const LATENCY: &[f64] =
        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];
    /// Whole requests and queueing: 10 ms to 10 min.
    pub const REQUEST: &[f64] =
        &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
    /// Engine steps: 0.5 ms to 10 s.
    pub const STEP: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    /// Tokens per step: powers of two to 8192.
    pub const BATCH_TOKENS: &[f64] =
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder (once per process) and describes the metrics.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let with = |b: PrometheusBuilder, name: &str, buckets: &[f64]| {
                b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
                    .expect("bucket lists are non-empty. This is a bug.")
            };
            let mut b = PrometheusBuilder::new();
            b = with(b, TIME_TO_FIRST_TOKEN_SECONDS, buckets::LATENCY);
            b = with(b, INTER_TOKEN_LATENCY_SECONDS, buckets::LATENCY);
            b = with(b, E2E_REQUEST_LATENCY_SECONDS, buckets::REQUEST);
            b = with(b, REQUEST_QUEUE_TIME_SECONDS, buckets::REQUEST);
            b = with(b, STEP_DURATION_SECONDS, buckets::STEP);
            b = with(b, BATCH_TOKENS, buckets::BATCH_TOKENS);
            let handle = match b.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    // Another recorder is installed (only possible if an embedding program did it):
                    // keep a private one so /metrics still answers.
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Generation requests by outcome (stop, length, aborted, deadline, error, invalid, rejected)."
    );
    describe_gauge!(NUM_REQUESTS_WAITING, "Requests queued in the engine, not yet scheduled.");
    describe_gauge!(NUM_REQUESTS_RUNNING, "Requests holding KV blocks in the engine.");
    describe_gauge!(REQUESTS_IN_FLIGHT, "Generation RPCs in progress.");
    describe_gauge!(KV_CACHE_USAGE_RATIO, "Fraction of KV blocks held by running requests.");
    describe_gauge!(KV_CACHE_BLOCKS, "KV blocks by state (free, used, cached).");
    describe_counter!(COMPUTED_TOKENS_TOTAL, Unit::Count, "Tokens the backend computed, padding included.");
    describe_counter!(
        PADDING_TOKENS_TOTAL,
        Unit::Count,
        "Tokens computed only to fill a compiled shape (static-shape backends)."
    );
    describe_counter!(PREFIX_CACHE_QUERIES_TOTAL, Unit::Count, "Prompt tokens looked up in the prefix cache.");
    describe_counter!(PREFIX_CACHE_HITS_TOTAL, Unit::Count, "Prompt tokens served from the prefix cache.");
    describe_histogram!(TIME_TO_FIRST_TOKEN_SECONDS, Unit::Seconds, "Arrival to first generated token.");
    describe_histogram!(INTER_TOKEN_LATENCY_SECONDS, Unit::Seconds, "Time between generated tokens as delivered.");
    describe_histogram!(E2E_REQUEST_LATENCY_SECONDS, Unit::Seconds, "Arrival to the end of the request.");
    describe_histogram!(REQUEST_QUEUE_TIME_SECONDS, Unit::Seconds, "Arrival to the first engine step.");
    describe_counter!(PROMPT_TOKENS_TOTAL, Unit::Count, "Prompt tokens of finished requests.");
    describe_counter!(GENERATION_TOKENS_TOTAL, Unit::Count, "Tokens generated.");
    describe_counter!(PREEMPTIONS_TOTAL, Unit::Count, "Requests preempted (recomputed later) for KV blocks.");
    describe_histogram!(STEP_DURATION_SECONDS, Unit::Seconds, "Engine step time by kind (prefill, decode, mixed).");
    describe_histogram!(BATCH_TOKENS, Unit::Count, "Tokens per engine step.");
    describe_gauge!(MODEL_INFO, "The served model and KV configuration (value 1).");
    describe_gauge!(PROCESS_RESIDENT_MEMORY_BYTES, Unit::Bytes, "Resident set size of this process.");
}

/// The engine's per-step callback: step duration by kind and batch size.
pub fn step_observer() -> hearth_engine::StepObserver {
    Box::new(|s: &hearth_engine::StepRecord| {
        let kind = match (s.prefill_tokens > 0, s.decode_tokens > 0) {
            (true, false) => "prefill",
            (false, _) => "decode",
            (true, true) => "mixed",
        };
        histogram!(STEP_DURATION_SECONDS, "kind" => kind).record(s.duration.as_secs_f64());
        let real = s.prefill_tokens + s.decode_tokens;
        histogram!(BATCH_TOKENS).record(real as f64);
        counter!(COMPUTED_TOKENS_TOTAL).increment(s.padded_tokens.max(real) as u64);
        counter!(PADDING_TOKENS_TOTAL).increment(s.padded_tokens.saturating_sub(real) as u64);
    })
}

/// How one request ended, for the per-request metrics.
#[derive(Debug, Default)]
pub struct RequestRecord {
    pub outcome: &'static str,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub queue_time: Option<Duration>,
    pub time_to_first_token: Option<Duration>,
    pub total_time: Option<Duration>,
}

pub fn record_request(r: &RequestRecord) {
    counter!(REQUESTS_TOTAL, "outcome" => r.outcome).increment(1);
    counter!(PROMPT_TOKENS_TOTAL).increment(r.prompt_tokens as u64);
    counter!(GENERATION_TOKENS_TOTAL).increment(r.generated_tokens as u64);
    if let Some(t) = r.queue_time {
        histogram!(REQUEST_QUEUE_TIME_SECONDS).record(t.as_secs_f64());
    }
    if let Some(t) = r.time_to_first_token {
        histogram!(TIME_TO_FIRST_TOKEN_SECONDS).record(t.as_secs_f64());
    }
    if let Some(t) = r.total_time {
        histogram!(E2E_REQUEST_LATENCY_SECONDS).record(t.as_secs_f64());
    }
}

/// A refused request (never reached the engine).
pub fn record_refused(outcome: &'static str) {
    counter!(REQUESTS_TOTAL, "outcome" => outcome).increment(1);
}

pub fn record_inter_token(gap: Duration, tokens: usize) {
    // A coalesced event of n tokens spreads its gap over them.
    let per = gap.as_secs_f64() / tokens.max(1) as f64;
    for _ in 0..tokens {
        histogram!(INTER_TOKEN_LATENCY_SECONDS).record(per);
    }
}

/// Prometheus text with the scrape-time gauges refreshed.
pub async fn render(state: &AppState) -> String {
    let handle = install();
    gauge!(REQUESTS_IN_FLIGHT).set(state.in_flight() as f64);
    if let Some(rss) = resident_bytes() {
        gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(rss as f64);
    }
    if let Some(served) = state.model() {
        let d = &served.desc;
        gauge!(MODEL_INFO,
            "model" => d.name.clone(), "architecture" => d.architecture.clone(),
            "quantization" => d.quantization.clone(), "backend" => d.backend.clone(),
            "context_length" => d.context_length.to_string(), "kv_cache_tokens" => d.kv_cache_tokens.to_string(),
            "kv_block_size" => d.kv_block_size.to_string())
        .set(1.0);
        let engine = served.engine.clone();
        let stats =
            tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || engine.stats())).await;
        if let Ok(Ok(Ok(s))) = stats {
            gauge!(NUM_REQUESTS_WAITING).set(s.waiting as f64);
            gauge!(NUM_REQUESTS_RUNNING).set(s.running as f64);
            let total = (s.kv.free + s.kv.used + s.kv.cached).max(1);
            gauge!(KV_CACHE_USAGE_RATIO).set(s.kv.used as f64 / total as f64);
            gauge!(KV_CACHE_BLOCKS, "state" => "free").set(s.kv.free as f64);
            gauge!(KV_CACHE_BLOCKS, "state" => "used").set(s.kv.used as f64);
            gauge!(KV_CACHE_BLOCKS, "state" => "cached").set(s.kv.cached as f64);
            counter!(PREFIX_CACHE_QUERIES_TOTAL).absolute(s.kv.prefix_query_tokens);
            counter!(PREFIX_CACHE_HITS_TOTAL).absolute(s.kv.prefix_hit_tokens);
            counter!(PREEMPTIONS_TOTAL).absolute(s.preemptions);
        }
    }
    handle.run_upkeep();
    handle.render()
}

/// Resident set size from `/proc/self/statm` (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
