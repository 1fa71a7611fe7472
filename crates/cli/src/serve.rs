//! `hearth serve`: the gRPC server (hearth.v1, health, reflection) and the HTTP port (metrics,
//! probes) on one model.
//!
//! Start-up order: bind both listeners and start serving at once (health NOT_SERVING, generations
//! `UNAVAILABLE`), load and warm the model on a blocking thread, then report SERVING. Prints one
//! line per milestone on stderr (`hearth: listening …`, `hearth: ready …`) for people and scripts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use hearth_engine::Engine;
use hearth_server::{Limits, ModelDesc, Served, ServerOptions};

use crate::backend::BackendArgs;
use crate::engine_args::{EngineArgs, parse_bytes};
use crate::models::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Listening, limits and lifecycle.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// A TOML file of `hearth serve` settings: keys are the long flag names (`listen = "…"`,
    /// `max-tokens-cap = 2048`). Flags and environment variables override the file.
    #[arg(long, env = "HEARTH_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// gRPC address. The default listens on this machine only; use `0.0.0.0:50051` to serve others.
    #[arg(long, env = "HEARTH_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// HTTP address for `/metrics`, `/health` and `/ready`.
    #[arg(long, env = "HEARTH_HTTP_LISTEN", default_value = "127.0.0.1:8000")]
    pub http_listen: SocketAddr,
    /// Serve no HTTP port.
    #[arg(long, env = "HEARTH_NO_HTTP")]
    pub no_http: bool,
    /// Largest request message (e.g. `4MiB`); larger ones are refused with OUT_OF_RANGE.
    #[arg(long, env = "HEARTH_MAX_MESSAGE_SIZE", default_value = "4MiB", value_parser = parse_bytes)]
    pub max_message_size: usize,
    /// Most prompt tokens per request (also bounded by the model's context).
    #[arg(long, env = "HEARTH_MAX_PROMPT_TOKENS", default_value_t = 32_768)]
    pub max_prompt_tokens: usize,
    /// Most tokens one request may ask to generate.
    #[arg(long, env = "HEARTH_MAX_TOKENS_CAP", default_value_t = 4096)]
    pub max_tokens_cap: usize,
    /// Tokens generated when a request does not say.
    #[arg(long, env = "HEARTH_DEFAULT_MAX_TOKENS", default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Generation requests in flight at once (queued or running); more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "HEARTH_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT before they are aborted.
    #[arg(long, env = "HEARTH_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Log prompts and outputs (info level). Off by default: prompts are never logged.
    #[arg(long, env = "HEARTH_LOG_REQUESTS")]
    pub log_requests: bool,
}

impl ServerArgs {
    pub fn options(&self) -> anyhow::Result<ServerOptions> {
        anyhow::ensure!(
            self.shutdown_grace.is_finite() && (0.0..=86_400.0).contains(&self.shutdown_grace),
            "--shutdown-grace must be 0 to 86400 seconds"
        );
        anyhow::ensure!(self.max_tokens_cap > 0 && self.default_max_tokens > 0, "token limits must be positive");
        Ok(ServerOptions {
            limits: Limits {
                max_message_bytes: self.max_message_size,
                max_prompt_tokens: self.max_prompt_tokens,
                max_tokens_cap: self.max_tokens_cap,
                default_max_tokens: self.default_max_tokens,
                max_concurrent_requests: self.max_concurrent_requests.max(1),
                ..Limits::default()
            },
            log_requests: self.log_requests,
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace),
        })
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let opts = args.server.options()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("hearth-rt").build()?;
    rt.block_on(async move {
        hearth_server::metrics::install();
        let grpc = tokio::net::TcpListener::bind(args.server.listen)
            .await
            .with_context(|| format!("binding the gRPC address {}", args.server.listen))?;
        let http = match args.server.no_http {
            true => None,
            false => Some(
                tokio::net::TcpListener::bind(args.server.http_listen)
                    .await
                    .with_context(|| format!("binding the HTTP address {}", args.server.http_listen))?,
            ),
        };
        let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
        eprintln!(
            "hearth: listening: gRPC {}{} (loading the model)",
            grpc.local_addr()?,
            http_addr.map(|a| format!(", HTTP {a}")).unwrap_or_default()
        );
        let (state, router) = hearth_server::build(opts).await?;
        let mut server = tokio::spawn(hearth_server::serve(state.clone(), router, grpc, http, hearth_server::signal()));

        let t0 = Instant::now();
        let (model, engine, backend) = (args.model, args.engine, args.backend);
        let loading = tokio::task::spawn_blocking(move || load(&backend, &model, &engine));
        let served = tokio::select! {
            r = loading => r??,
            r = &mut server => {
                // SIGTERM/SIGINT while loading: nothing is in flight; do not wait for the load.
                r??;
                eprintln!("hearth: stopped while loading");
                std::process::exit(0);
            }
        };
        let d = served.desc.clone();
        state.set_served(served).await;
        eprintln!(
            "hearth: ready: {} ({}, {}) on {} in {:.1}s; KV cache {} tokens",
            d.name,
            d.architecture,
            d.quantization,
            d.backend,
            t0.elapsed().as_secs_f64(),
            d.kv_cache_tokens
        );
        server.await??;
        eprintln!("hearth: stopped");
        Ok(())
    })
}

/// Loads the model, warms the backend up and starts the engine.
fn load(b: &BackendArgs, model: &ModelArgs, engine: &EngineArgs) -> anyhow::Result<Served> {
    let mut loaded = crate::backend::load(b, model, engine)?;
    let warm = loaded.backend.warmup().context("warming the backend up")?;
    tracing::info!(steps = warm.steps, seconds = warm.seconds, "warmed up");
    let caps = loaded.backend.caps().clone();
    let (block_size, num_blocks) = caps.kv.pool();
    let eog = loaded.tokenizer.as_ref().map(|t| t.eog_tokens().to_vec()).unwrap_or_default();
    let (handle, _thread) =
        Engine::spawn(loaded.backend, engine.engine_config(eog), Some(hearth_server::metrics::step_observer()));
    let m = loaded.meta;
    Ok(Served {
        engine: handle,
        tokenizer: loaded.tokenizer.map(Arc::new),
        desc: ModelDesc {
            name: m.name,
            architecture: m.architecture.into(),
            quantization: m.quantization,
            context_length: m.context_length.min(caps.max_context),
            vocab_size: caps.vocab_size,
            checksum_sha256: m.checksum_sha256,
            backend: caps.name.into(),
            kv_cache_tokens: block_size * num_blocks,
            kv_block_size: block_size,
        },
    })
}
