//! `hearth`: the command-line entry point. Subcommands: `generate` (one prompt, streamed to
//! stdout) and `models` (pull, list, verify, export-tokenizer).

mod backend;
mod engine_args;
mod generate;
mod models;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hearth", version, about = "LLM inference serving for your own hardware")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a continuation of one prompt (CPU or CUDA backend) and stream it to stdout.
    Generate(generate::GenerateArgs),
    /// Manage the local model store.
    #[command(subcommand)]
    Models(models::ModelsCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("HEARTH_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Models(cmd) => models::run(cmd),
    }
}
