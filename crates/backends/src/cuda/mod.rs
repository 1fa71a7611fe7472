//! The CUDA backend: one binary runs with or without a GPU.
//!
//! cudarc loads the driver, NVRTC and cuBLAS at run time; [`device::unavailable_reason`] says,
//! without panicking, why a machine cannot run it. Kernels (`kernels/*.cu`) are embedded and
//! compiled by NVRTC for the device's architecture at start-up ([`kernels`]). Weights are f16
//! (GGUF matrices, dequantized at load) or bf16 (dummy weights), or as asked ([`GemmDtype`]); GEMMs
//! run on cuBLAS with f32 accumulation and output, the paged KV cache is f16 (as on the CPU
//! backend), and activations are f32 ([`ops`]).
#![allow(unsafe_code)]

pub mod device;
pub mod dtype;
pub mod graph;
pub mod kernels;
pub mod layout;
pub mod ops;
mod profile;

use hearth_core::{Backend, BackendCaps, BackendError, KvLayout, LogitsWanted, StepOutput, StepPlan, WarmupReport};
use hearth_models::ops::split_greedy;
use hearth_models::{ArchConfig, GgufFile, Model, ModelError, Ops, SafetensorsDir};

pub use device::{Gpu, free_memory, libraries, unavailable_reason};
pub use dtype::GemmDtype;
pub use ops::{CudaAct, CudaMatrix, CudaOps};

/// Sizing of the CUDA backend.
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes for the KV cache (K and V, all layers, f16); rounded down to whole blocks.
    pub kv_cache_bytes: usize,
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    /// Replay decode steps as CUDA graphs (captured per padded batch and block-table width).
    pub cuda_graphs: bool,
    /// Largest decode batch run as a graph; bigger batches run kernel by kernel.
    pub max_graph_batch: usize,
    /// Weight and GEMM-input element type; `None` picks f16 for GGUF files (dequantized block
    /// formats fit f16's 11 significant bits better than bf16's 8, as llama.cpp's CUDA backend also
    /// uses f16) and bf16 for dummy weights (what bf16 checkpoints hold).
    pub dtype: Option<GemmDtype>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            device: 0,
            block_size: 16,
            kv_cache_bytes: 1 << 30,
            max_batch_tokens: 8192,
            cuda_graphs: true,
            max_graph_batch: 256,
            dtype: None,
        }
    }
}

pub struct CudaBackend {
    ops: CudaOps,
    model: Model<CudaOps>,
    caps: BackendCaps,
    config: ArchConfig,
    graphs: Graphs,
}

/// A captured decode graph and its input buffers.
struct Captured {
    graph: SendGraph,
    inputs: graph::GraphInputs,
}

/// A captured graph that may move between threads with its backend.
struct SendGraph(cudarc::driver::CudaGraph);

// SAFETY: a graph exec is a driver object, not bound to the thread that made it; cudarc makes the
// context current before each launch. The backend (and so each graph) is used by one thread at a
// time: it is `Send`, not `Sync`.
unsafe impl Send for SendGraph {}

/// Where every graph writes its results (graphs never run at once, so they share it).
struct GraphOut {
    rows: usize,
    /// `rows × vocab` logits of the last replay.
    logits: cudarc::driver::CudaSlice<f32>,
    /// Argmax of each row of `logits`.
    ids: cudarc::driver::CudaSlice<u32>,
}

struct Graphs {
    enabled: bool,
    max_rows: usize,
    captured: std::collections::HashMap<graph::GraphKey, Captured>,
    /// Keys whose capture or launch failed: they run kernel by kernel.
    failed: std::collections::HashSet<graph::GraphKey>,
    out: Option<GraphOut>,
    /// The ops' buffer generation the captured graphs were recorded against.
    generation: u64,
    host: graph::HostInputs,
}

/// Most graphs kept (each holds its input buffers and its own intermediates).
const MAX_GRAPHS: usize = 48;

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("gpu", self.ops.gpu()).field("caps", &self.caps).finish_non_exhaustive()
    }
}

/// KV blocks that fit `bytes` (f16 K and V over all layers).
pub fn kv_blocks(config: &ArchConfig, bytes: usize, block_size: usize) -> usize {
    bytes.checked_div(config.kv_spec().bytes_per_token(2) * block_size).unwrap_or(0)
}

impl CudaBackend {
    pub fn load(g: &GgufFile, opts: &CudaOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_gguf(g)?;
        let dtype = opts.dtype.unwrap_or(GemmDtype::F16);
        Self::build(config, opts, dtype, |ops, cfg| Model::load(g, cfg, ops))
    }

    /// A Hugging Face checkpoint (Llama family), bf16 on the device unless `opts.dtype` says otherwise.
    pub fn load_safetensors(d: &SafetensorsDir, opts: &CudaOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_hf_dir(d.dir())?;
        let dtype = opts.dtype.unwrap_or(GemmDtype::Bf16);
        Self::build(config, opts, dtype, |ops, cfg| Model::load_safetensors(d, cfg, ops))
    }

    /// Seeded random bf16 weights at the configuration's shapes, for performance work.
    pub fn dummy(config: ArchConfig, opts: &CudaOptions, seed: u64) -> Result<Self, ModelError> {
        let dtype = opts.dtype.unwrap_or(GemmDtype::Bf16);
        Self::build(config, opts, dtype, |ops, cfg| Model::dummy(cfg, ops, seed))
    }

    fn build(
        config: ArchConfig,
        opts: &CudaOptions,
        dtype: GemmDtype,
        weights: impl FnOnce(&mut CudaOps, &ArchConfig) -> Result<Model<CudaOps>, ModelError>,
    ) -> Result<Self, ModelError> {
        if opts.block_size == 0 {
            return Err(BackendError::Unavailable("KV block size must be at least 1 token".into()).into());
        }
        let num_blocks = kv_blocks(&config, opts.kv_cache_bytes, opts.block_size);
        if num_blocks == 0 {
            return Err(BackendError::Unavailable(format!(
                "KV cache budget of {} bytes holds no {}-token block",
                opts.kv_cache_bytes, opts.block_size
            ))
            .into());
        }
        let gpu = Gpu::open(opts.device)?;
        let mut ops = CudaOps::new(gpu, config.kv_spec(), opts.block_size, num_blocks, dtype)?;
        let model = weights(&mut ops, &config)?;
        let caps = BackendCaps::dynamic(
            "cuda",
            KvLayout::Paged { block_size: opts.block_size, num_blocks },
            config.context_length().min(num_blocks * opts.block_size),
            opts.max_batch_tokens,
            config.vocab_size(),
        );
        let graphs = Graphs {
            enabled: opts.cuda_graphs,
            max_rows: opts.max_graph_batch,
            captured: Default::default(),
            failed: Default::default(),
            out: None,
            generation: 0,
            host: Default::default(),
        };
        Ok(CudaBackend { ops, model, caps, config, graphs })
    }

    pub fn config(&self) -> &ArchConfig {
        &self.config
    }

    pub fn ops_mut(&mut self) -> &mut CudaOps {
        &mut self.ops
    }

    /// Turns graph replay of decode steps on or off (captured graphs are kept).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs.enabled = on;
    }

    /// Decode graphs captured so far.
    pub fn graphs_captured(&self) -> usize {
        self.graphs.captured.len()
    }

    /// Captures the graph for `key`: runs the step once kernel by kernel on the static inputs
    /// (sizing every scratch buffer), then records it.
    fn capture(&mut self, key: graph::GraphKey) -> Result<Captured, BackendError> {
        let vocab = self.caps.vocab_size;
        let stream = self.ops.stream().clone();
        if self.graphs.out.as_ref().is_none_or(|o| o.rows < key.rows) {
            // A bigger output buffer: graphs recorded against the old one must go.
            self.graphs.captured.clear();
            self.graphs.out = None;
            let logits = stream.alloc_zeros::<f32>(key.rows * vocab).map_err(cuda_err("graph output"))?;
            let ids = stream.alloc_zeros::<u32>(key.rows).map_err(cuda_err("graph output"))?;
            self.graphs.out = Some(GraphOut { rows: key.rows, logits, ids });
        }
        let ops = &mut self.ops;
        let scratch = ops.scratch_block();
        let plan = graph::HostInputs::capture_plan(key, scratch);
        let mut inputs = ops.graph_inputs(key)?;
        let mut host = graph::HostInputs::default();
        host.fill(&plan, key, ops.block_size(), scratch);
        ops.write_graph_inputs(&mut inputs, &host)?;
        ops.bind(inputs);
        let generation = ops.buffers_generation();
        let warm = self.model.forward(ops, &plan).map(drop);
        if ops.buffers_generation() != generation {
            // The warm-up grew a scratch buffer: older graphs point at the freed one.
            self.graphs.captured.clear();
        }
        self.graphs.generation = ops.buffers_generation();
        let out = self.graphs.out.as_mut().expect("graph output allocated above. This is a bug.");
        let recorded = warm.and_then(|()| {
            stream
                .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(cuda_err("begin capture"))?;
            let run = self.model.forward(ops, &plan).and_then(|logits| {
                ops.copy_into(&logits, &mut out.logits)?;
                ops.argmax_into(&logits, &mut out.ids)
            });
            // Errors recorded while capturing (by frees in drop) would make cudarc's end_capture
            // return early and leave the stream capturing: take them first, then always end it.
            let pending = stream.context().check_err();
            let graph = stream
                .end_capture(
                    cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                )
                .map_err(cuda_err("end capture"));
            run?;
            pending.map_err(cuda_err("capture"))?;
            graph?.ok_or_else(|| BackendError::Internal("CUDA graph capture recorded nothing".into()))
        });
        let inputs = ops.unbind().expect("graph inputs were bound above. This is a bug.");
        Ok(Captured { graph: SendGraph(recorded?), inputs })
    }

    /// Runs a decode step by replaying its graph; `None` when the step does not qualify or its
    /// graph cannot be captured.
    fn replay(&mut self, step: &StepPlan) -> Result<Option<StepOutput>, BackendError> {
        let g = &mut self.graphs;
        let Some(key) = graph::graph_key(step, g.max_rows).filter(|_| g.enabled) else { return Ok(None) };
        if g.failed.contains(&key) {
            return Ok(None);
        }
        if g.generation != self.ops.buffers_generation() {
            // An eager step replaced a buffer the graphs point at: record them again.
            g.captured.clear();
            g.generation = self.ops.buffers_generation();
        }
        if !g.captured.contains_key(&key) {
            if g.captured.len() >= MAX_GRAPHS {
                return Ok(None);
            }
            match self.capture(key) {
                Ok(c) => {
                    tracing::debug!(rows = key.rows, width = key.width, "captured a decode graph");
                    self.graphs.captured.insert(key, c);
                }
                Err(e) => {
                    tracing::warn!(rows = key.rows, width = key.width, error = %e, "CUDA graph capture failed; running this shape kernel by kernel");
                    self.graphs.failed.insert(key);
                    return Ok(None);
                }
            }
        }
        let scratch = self.ops.scratch_block();
        let bs = self.ops.block_size();
        let g = &mut self.graphs;
        let c = g.captured.get_mut(&key).expect("captured above. This is a bug.");
        g.host.fill(step, key, bs, scratch);
        self.ops.write_graph_inputs(&mut c.inputs, &g.host)?;
        if let Err(e) = c.graph.0.launch() {
            g.captured.remove(&key);
            g.failed.insert(key);
            return Err(BackendError::Internal(format!("CUDA graph launch: {e}")));
        }
        self.ops.forget_gemm_input();
        let out = g.out.as_ref().expect("a captured graph has its output buffer. This is a bug.");
        let stream = self.ops.stream();
        let vocab = self.caps.vocab_size;
        let n = step.seqs.len();
        let ids = stream.clone_dtoh(&out.ids.slice(..n)).map_err(cuda_err("copy to host"))?;
        let any_logits = step.seqs.iter().any(|s| s.logits != LogitsWanted::Greedy);
        let rows = if any_logits {
            stream.clone_dtoh(&out.logits.slice(..n * vocab)).map_err(cuda_err("copy to host"))?
        } else {
            Vec::new()
        };
        let mut res = StepOutput { logits: Vec::new(), vocab, greedy: Vec::new() };
        for (r, s) in step.seqs.iter().enumerate() {
            if s.logits == LogitsWanted::Greedy {
                res.greedy.push(ids[r]);
            } else {
                res.logits.extend_from_slice(&rows[r * vocab..(r + 1) * vocab]);
            }
        }
        Ok(Some(res))
    }
}

fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> BackendError + '_ {
    move |e| BackendError::Internal(format!("CUDA {what}: {e}"))
}

impl Backend for CudaBackend {
    fn caps(&self) -> &BackendCaps {
        &self.caps
    }

    fn warmup(&mut self) -> Result<WarmupReport, BackendError> {
        let bs = self.ops.block_size();
        crate::warmup_steps(self, bs)
    }

    fn execute(&mut self, step: &StepPlan) -> Result<StepOutput, BackendError> {
        crate::check_step(step, &self.caps, self.ops.block_size(), self.ops.num_blocks())?;
        if let Some(out) = self.replay(step)? {
            return Ok(out);
        }
        let logits = self.model.forward(&mut self.ops, step)?;
        let (keep, greedy) = split_greedy(step);
        let ops = &mut self.ops;
        // Greedy rows are reduced on the device; only the other rows' logits are copied back.
        let greedy = match (greedy.is_empty(), keep.is_empty()) {
            (true, _) => Vec::new(),
            (false, true) => ops.argmax(&logits)?,
            (false, false) => {
                let g = ops.select_rows(&logits, &greedy)?;
                ops.argmax(&g)?
            }
        };
        let logits = match (keep.is_empty(), greedy.is_empty()) {
            (true, _) => Vec::new(),
            (false, true) => ops.to_host(&logits)?,
            (false, false) => {
                let k = ops.select_rows(&logits, &keep)?;
                ops.to_host(&k)?
            }
        };
        Ok(StepOutput { logits, vocab: self.caps.vocab_size, greedy })
    }
}
