//! What every handler shares: the served model (set once loading finishes), the limits, the
//! concurrency permits, and the lifecycle (loading → serving → draining → stopped).
//!
//! Ownership: [`AppState`] is behind an `Arc` held by every service and by `serve`. The model slot
//! is written once by the loader; `draining` is set once by the shutdown path; `abort_all` is a
//! `watch` channel whose sender `serve` holds: when it flips to true, every in-flight generation
//! ends with `UNAVAILABLE` and drops its engine stream, which aborts it in the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hearth_engine::EngineHandle;
use hearth_models::Tokenizer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::error::{ApiError, ErrorKind};

/// Request limits. Defaults suit the default model on a small machine; see `hearth serve --help`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request message in bytes.
    pub max_message_bytes: usize,
    /// Most prompt tokens (also bounded by the model's context).
    pub max_prompt_tokens: usize,
    /// Most tokens one request may generate.
    pub max_tokens_cap: usize,
    /// `max_tokens` when a request leaves it unset (also bounded by what the context leaves).
    pub default_max_tokens: usize,
    /// Generation requests in flight (queued or running) at once; more are refused at once.
    pub max_concurrent_requests: usize,
    /// Stop strings per request, and bytes per stop string.
    pub max_stop_strings: usize,
    pub max_stop_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_prompt_tokens: 32_768,
            max_tokens_cap: 4096,
            default_max_tokens: 256,
            max_concurrent_requests: 1024,
            max_stop_strings: 16,
            max_stop_bytes: 256,
        }
    }
}

/// The model as clients see it (`Models.ModelInfo`, the `hearth_model_info` gauge).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDesc {
    pub name: String,
    pub architecture: String,
    pub quantization: String,
    pub context_length: usize,
    pub vocab_size: usize,
    /// sha256 verified at load; `None` when no checksum is known (a file given by path).
    pub checksum_sha256: Option<String>,
    pub backend: String,
    pub kv_cache_tokens: usize,
    pub kv_block_size: usize,
}

/// A loaded model behind its engine.
#[derive(Clone)]
pub struct Served {
    pub engine: EngineHandle,
    /// `None` for dummy weights: prompts must then be token ids, and responses carry no text.
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub desc: ModelDesc,
}

#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    pub limits: Limits,
    /// Log prompts and outputs (at info level). Off by default: prompts are never logged.
    pub log_requests: bool,
    /// How long in-flight requests may run after SIGTERM/SIGINT before they are aborted.
    pub shutdown_grace: Duration,
}

pub struct AppState {
    pub opts: ServerOptions,
    served: OnceLock<Served>,
    draining: AtomicBool,
    permits: Arc<Semaphore>,
    abort_all: watch::Sender<bool>,
    pub(crate) health: tonic_health::server::HealthReporter,
}

impl AppState {
    pub fn new(opts: ServerOptions, health: tonic_health::server::HealthReporter) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(opts.limits.max_concurrent_requests.max(1)));
        Arc::new(AppState {
            opts,
            served: OnceLock::new(),
            draining: AtomicBool::new(false),
            permits,
            abort_all: watch::channel(false).0,
            health,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.opts.limits
    }

    /// Installs the loaded model (once) and reports SERVING.
    pub async fn set_served(&self, served: Served) {
        if self.served.set(served).is_err() {
            panic!("the model is set once. This is a bug.");
        }
        if !self.is_draining() {
            crate::grpc::set_health(&self.health, true).await;
            if self.is_draining() {
                // A drain began meanwhile: its NOT_SERVING may have landed first.
                crate::grpc::set_health(&self.health, false).await;
            }
        }
    }

    /// The model, or `UNAVAILABLE` while loading or draining.
    pub fn served(&self) -> Result<&Served, ApiError> {
        if self.is_draining() {
            return Err(ApiError::new(ErrorKind::Unavailable, "the server is shutting down"));
        }
        self.served.get().ok_or_else(|| ApiError::new(ErrorKind::Unavailable, "the model is still loading"))
    }

    /// The model whatever the lifecycle (model metadata stays answerable while draining).
    pub fn model(&self) -> Option<&Served> {
        self.served.get()
    }

    pub fn is_ready(&self) -> bool {
        self.served.get().is_some() && !self.is_draining()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// One in-flight generation slot, or `RESOURCE_EXHAUSTED` at once.
    pub fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                ErrorKind::Exhausted,
                format!("{} requests are in flight, the limit; retry later", self.opts.limits.max_concurrent_requests),
            )
        })
    }

    /// Generations in flight now.
    pub fn in_flight(&self) -> usize {
        self.opts.limits.max_concurrent_requests.max(1) - self.permits.available_permits()
    }

    /// Stops taking new generations and reports NOT_SERVING.
    pub async fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        crate::grpc::set_health(&self.health, false).await;
    }

    /// Ends every in-flight generation with `UNAVAILABLE`.
    pub fn abort_all(&self) {
        self.abort_all.send_replace(true);
    }

    /// Resolves when [`AppState::abort_all`] is called.
    pub fn aborted(&self) -> watch::Receiver<bool> {
        self.abort_all.subscribe()
    }
}
