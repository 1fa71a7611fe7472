//! `hearth bench`: load a server (hearth over gRPC, or any OpenAI-compatible server over HTTP) and
//! report throughput, latency percentiles and goodput, per load level of a sweep.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hearth_bench::load::{Load, Runner};
use hearth_bench::report::{self, RunReport};
use hearth_bench::stats::{Slo, summarize};
use hearth_bench::target::Target;
use hearth_bench::workload::{self, Len, Workload};

use crate::models::ModelArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// hearth's native API (hearth.v1.Generation/GenerateStream).
    Grpc,
    /// `POST /v1/completions`, streamed (hearth's HTTP port, llama-server, vLLM, …).
    Openai,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadKind {
    /// Independent prompts of random words, of exactly --input-len tokens.
    Synthetic,
    /// Prompts sharing a --prefix-len-token prefix, then --input-len unique tokens.
    SharedPrefix,
    /// Prompts from --prompts-file (JSONL: {"prompt": "...", "max_tokens": 128}).
    File,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The server's API.
    #[arg(long, value_enum, default_value_t = Api::Grpc)]
    pub api: Api,
    /// Server address. Default: http://127.0.0.1:50051 (grpc) or http://127.0.0.1:8000 (openai).
    #[arg(long)]
    pub addr: Option<String>,
    /// Model name to put in OpenAI requests (some servers require it).
    #[arg(long)]
    pub served_model: Option<String>,
    /// The tokenizer for prompts: the same model the server runs.
    #[command(flatten)]
    pub model: ModelArgs,
    /// No tokenizer: prompts of random token ids below this vocabulary size (a server on dummy
    /// weights, e.g. `--model-config models/llama-3.1-8b.json --dummy-weights`: 128256).
    #[arg(long, conflicts_with = "prompts_file")]
    pub random_ids: Option<usize>,
    /// Closed loop: clients sending back to back; a list sweeps (`1,4,16,32`).
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second; a list sweeps (`1,2,4`).
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Open loop arrival burstiness: gamma shape (1: Poisson; below 1: burstier).
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Requests per load level.
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Stop a load level after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, value_enum, default_value_t = WorkloadKind::Synthetic)]
    pub workload: WorkloadKind,
    /// Prompt tokens: `128`, or a uniform range `64:192`.
    #[arg(long, default_value = "128")]
    pub input_len: Len,
    /// Generated tokens (exact: requests ignore EOS).
    #[arg(long, default_value = "128")]
    pub output_len: Len,
    /// Shared prefix tokens (shared-prefix workload).
    #[arg(long, default_value_t = 1024)]
    pub prefix_len: usize,
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Replace one request, a quarter of the way into each load level, by one with a prompt of
    /// this many tokens (how a long prefill disturbs everyone else's latency).
    #[arg(long)]
    pub mix_long: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Goodput: time-to-first-token objective in seconds.
    #[arg(long)]
    pub slo_ttft: Option<f64>,
    /// Goodput: time-per-output-token objective in seconds.
    #[arg(long)]
    pub slo_tpot: Option<f64>,
    /// Requests sent (and not measured) before each load level.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Write the configuration, environment and every result as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG of latency against throughput over the sweep.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    let tok = match args.random_ids {
        Some(_) => None,
        None => Some(crate::models::tokenizer(&args.model)?),
    };
    let vocab = match (&tok, args.random_ids) {
        (Some(t), _) => workload::Vocab::from_tokenizer(t),
        (None, n) => workload::Vocab::ids(n.expect("random_ids is set when there is no tokenizer. This is a bug.")),
    };
    let workload = match args.workload {
        WorkloadKind::Synthetic => Workload::Synthetic { input: args.input_len, output: args.output_len },
        WorkloadKind::SharedPrefix => {
            Workload::SharedPrefix { prefix: args.prefix_len, suffix: args.input_len, output: args.output_len }
        }
        WorkloadKind::File => Workload::File {
            path: args.prompts_file.clone().context("--workload file needs --prompts-file")?,
            output: args.output_len,
        },
    };
    let target = match args.api {
        Api::Grpc => Target::grpc(args.addr.as_deref().unwrap_or("http://127.0.0.1:50051")).await?,
        Api::Openai => {
            Target::openai(args.addr.as_deref().unwrap_or("http://127.0.0.1:8000"), args.served_model.clone())?
        }
    };
    let loads: Vec<Load> = if !args.rate.is_empty() {
        args.rate.iter().map(|&rate| Load::Open { rate, burstiness: args.burstiness }).collect()
    } else if args.concurrency.is_empty() {
        vec![Load::Closed { concurrency: 1 }]
    } else {
        args.concurrency.iter().map(|&concurrency| Load::Closed { concurrency }).collect()
    };
    let slo = Slo { ttft: args.slo_ttft, tpot: args.slo_tpot };

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: finishing the requests in flight, then reporting what was measured");
            let _ = stop_tx.send(true);
        }
    });
    let mut runs = Vec::new();
    for (i, &load) in loads.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        let mut requests = workload::make(&workload, args.requests, &vocab, args.seed.wrapping_add(i as u64))?;
        if let Some(len) = args.mix_long {
            workload::mix_in_long_prompt(&mut requests, len, &vocab, args.seed);
        }
        let warm = workload::make(&workload, args.warmup, &vocab, args.seed.wrapping_add(1000 + i as u64))?;
        let quiet =
            Runner { target: target.clone(), time_limit: None, stop: stop.clone(), on_done: None, seed: args.seed };
        let warmed = quiet.run(warm, Load::Closed { concurrency: args.warmup.max(1) }).await;
        if let Some((kind, _)) = warmed.errors.iter().next() {
            anyhow::bail!("warm-up request failed ({kind}): is the server at the address, with the same model?");
        }
        let bar = progress(args.no_progress, args.requests, &load);
        let tokens = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now();
        let on_done: hearth_bench::load::OnDone = {
            let (bar, tokens) = (bar.clone(), tokens.clone());
            Arc::new(move |r| {
                if let Ok(rec) = r {
                    tokens.fetch_add(rec.output_tokens as u64, Ordering::Relaxed);
                }
                let tps = tokens.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!("{tps:.1} out tok/s"));
                bar.inc(1);
            })
        };
        let runner = Runner {
            target: target.clone(),
            time_limit: args.duration.map(Duration::from_secs_f64),
            stop: stop.clone(),
            on_done: Some(on_done),
            seed: args.seed,
        };
        let result = runner.run(requests, load).await;
        bar.finish_and_clear();
        runs.push(RunReport { load, summary: summarize(&result, slo) });
        eprint!("{}", report::table(std::slice::from_ref(runs.last().expect("just pushed. This is a bug."))));
    }
    println!("{}", report::table(&runs));
    let config = serde_json::json!({
        "api": format!("{:?}", args.api).to_lowercase(),
        "addr": args.addr,
        "model": args.model.model_path.as_ref().map_or(args.model.model.clone(), |p| p.display().to_string()),
        "workload": format!("{workload:?}"),
        "mix_long": args.mix_long,
        "requests": args.requests,
        "duration_s": args.duration,
        "warmup": args.warmup,
        "seed": args.seed,
        "slo": slo,
    });
    if let Some(path) = &args.json {
        report::write_json(path, &config, &runs)?;
        eprintln!("results: {}", path.display());
    }
    if let Some(path) = &args.plot {
        report::write_plot(path, &format!("hearth bench: {:?} over {:?}", args.workload, args.api), &runs)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

fn progress(off: bool, n: usize, load: &Load) -> indicatif::ProgressBar {
    if off {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    let style = indicatif::ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
        .expect("a valid progress template. This is a bug.")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(load.to_string());
    bar
}
