//! hearth-bench: the load generator behind `hearth bench`.
//!
//! - [`workload`]: prompts of exact token lengths, a shared-prefix workload, JSONL prompt files.
//! - [`target`]: hearth's gRPC API or any OpenAI-compatible `/v1/completions` (streamed), timing
//!   every token as the client sees it.
//! - [`load`]: closed loop at a concurrency, open loop at a rate (Poisson or gamma arrivals).
//! - [`stats`]: HDR histograms → mean/p50/p90/p99, throughput, goodput under SLOs.
//! - [`report`]: table, `--json`, `--plot`.
//!
//! Design after vLLM's `benchmark_serving.py` (metrics and their definitions: TTFT, ITL, TPOT,
//! goodput) and text-generation-inference's benchmark (a tool that ships with the server).

pub mod load;
pub mod report;
pub mod stats;
pub mod target;
pub mod workload;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot reach the server: {0}")]
    Connect(String),
    #[error("{0}")]
    Config(String),
    #[error("writing results: {0}")]
    Output(String),
}
