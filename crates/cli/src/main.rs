//! `hearth`: the command-line entry point. Subcommands: `serve` (the gRPC server), `generate` (one
//! prompt, streamed to stdout), `bench` (load generator), `health` (probe a server) and `models` (pull, list, verify,
//! export-tokenizer).

mod backend;
mod bench;
mod config_file;
mod engine_args;
mod generate;
mod health;
mod models;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hearth", version, about = "LLM inference serving for your own hardware")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the model over gRPC (hearth.v1, health, reflection) with Prometheus metrics over HTTP.
    Serve(Box<serve::ServeArgs>),
    /// Load a server (hearth over gRPC, or any OpenAI-compatible server) and report throughput,
    /// latency percentiles and goodput.
    Bench(Box<bench::BenchArgs>),
    /// Ask a server whether it is serving (exit status 0) or not (1): a health probe.
    Health(health::HealthArgs),
    /// Generate a continuation of one prompt (CPU, CUDA or static-cpu backend) and stream it to stdout.
    Generate(Box<generate::GenerateArgs>),
    /// Manage the local model store.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let argv = config_file::apply::<Cli>(std::env::args_os().collect())?;
    let ok = std::process::ExitCode::SUCCESS;
    match Cli::parse_from(argv).command {
        Command::Serve(args) => serve::run(*args).map(|()| ok),
        Command::Health(args) => health::run(args),
        Command::Bench(args) => bench::run(*args).map(|()| ok),
        Command::Generate(args) => generate::run(*args).map(|()| ok),
        Command::Models(cmd) => models::run(cmd).map(|()| ok),
    }
}
