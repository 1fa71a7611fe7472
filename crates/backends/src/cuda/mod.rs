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
pub mod graph;
pub mod kernels;
pub mod layout;
pub mod ops;

use hearth_core::{Backend, BackendCaps, BackendError, KvLayout, LogitsWanted, StepOutput, StepPlan, WarmupReport};
use hearth_models::ops::split_greedy;
use hearth_models::{ArchConfig, GgufFile, Model, ModelError, Ops};

pub use device::{Gpu, free_memory, libraries, unavailable_reason};
pub use ops::{CudaAct, CudaMatrix, CudaOps, GemmDtype};

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

/// Captured decode graphs and what they write.
struct Captured {
    graph: SendGraph,
    inputs: graph::GraphInputs,
    /// `rows × vocab` logits of the last replay.
    logits: cudarc::driver::CudaSlice<f32>,
    /// Argmax of each row of `logits`.
    ids: cudarc::driver::CudaSlice<u32>,
}

/// A captured graph that may move between threads with its backend.
struct SendGraph(cudarc::driver::CudaGraph);

// SAFETY: a graph exec is a driver object, not bound to the thread that made it; cudarc makes the
// context current before each launch. The backend (and so each graph) is used by one thread at a
// time: it is `Send`, not `Sync`.
unsafe impl Send for SendGraph {}

struct Graphs {
    enabled: bool,
    max_rows: usize,
    captured: std::collections::HashMap<graph::GraphKey, Captured>,
    /// Keys whose capture failed: they run kernel by kernel.
    failed: std::collections::HashSet<graph::GraphKey>,
    host: graph::HostInputs,
}

/// Most graphs kept (each holds a `rows × vocab` logits buffer and its own intermediates).
const MAX_GRAPHS: usize = 48;

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("gpu", self.ops.gpu()).field("caps", &self.caps).finish_non_exhaustive()
    }
}

/// KV blocks that fit `bytes` (f16 K and V over all layers).
pub fn kv_blocks(config: &ArchConfig, bytes: usize, block_size: usize) -> usize {
    bytes / (config.kv_spec().bytes_per_token(2) * block_size)
}

impl CudaBackend {
    pub fn load(g: &GgufFile, opts: &CudaOptions) -> Result<Self, ModelError> {
        let config = ArchConfig::from_gguf(g)?;
        let dtype = opts.dtype.unwrap_or(GemmDtype::F16);
        Self::build(config, opts, dtype, |ops, cfg| Model::load(g, cfg, ops))
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
        let caps = BackendCaps {
            name: "cuda",
            kv: KvLayout::Paged { block_size: opts.block_size, num_blocks },
            max_context: config.context_length().min(num_blocks * opts.block_size),
            max_batch_tokens: opts.max_batch_tokens,
            mixed_prefill_decode: true,
            vocab_size: config.vocab_size(),
        };
        let graphs = Graphs {
            enabled: opts.cuda_graphs,
            max_rows: opts.max_graph_batch,
            captured: Default::default(),
            failed: Default::default(),
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
        let ops = &mut self.ops;
        let vocab = self.caps.vocab_size;
        let scratch = ops.scratch_block();
        let plan = graph::HostInputs::capture_plan(key, scratch);
        let mut inputs = ops.graph_inputs(key)?;
        let mut host = graph::HostInputs::default();
        host.fill(&plan, key, ops.block_size(), scratch);
        ops.write_graph_inputs(&mut inputs, &host)?;
        let stream = ops.stream().clone();
        let mut logits = stream.alloc_zeros::<f32>(key.rows * vocab).map_err(cuda_err("graph output"))?;
        let mut ids = stream.alloc_zeros::<u32>(key.rows).map_err(cuda_err("graph output"))?;
        ops.bind(inputs);
        let warm = self.model.forward(ops, &plan).map(drop);
        let recorded = warm.and_then(|()| {
            stream
                .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(cuda_err("begin capture"))?;
            let run = self.model.forward(ops, &plan).and_then(|out| {
                ops.copy_into(&out, &mut logits)?;
                ops.argmax_into(&out, &mut ids)
            });
            // End the capture whatever happened, so the stream is usable again.
            let graph = stream
                .end_capture(
                    cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                )
                .map_err(cuda_err("end capture"));
            run?;
            graph?.ok_or_else(|| BackendError::Internal("CUDA graph capture recorded nothing".into()))
        });
        let inputs = ops.unbind().expect("graph inputs were bound above. This is a bug.");
        Ok(Captured { graph: SendGraph(recorded?), inputs, logits, ids })
    }

    /// Runs a decode step by replaying its graph; `None` when the step does not qualify or its
    /// graph cannot be captured.
    fn replay(&mut self, step: &StepPlan) -> Result<Option<StepOutput>, BackendError> {
        let g = &mut self.graphs;
        let Some(key) = graph::graph_key(step, g.max_rows).filter(|_| g.enabled) else { return Ok(None) };
        if g.failed.contains(&key) {
            return Ok(None);
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
        c.graph.0.launch().map_err(cuda_err("graph launch"))?;
        self.ops.forget_gemm_input();
        let stream = self.ops.stream();
        let vocab = self.caps.vocab_size;
        let all_ids = stream.clone_dtoh(&c.ids).map_err(cuda_err("copy to host"))?;
        let mut out = StepOutput { logits: Vec::new(), vocab, greedy: Vec::new() };
        for (r, s) in step.seqs.iter().enumerate() {
            if s.logits == LogitsWanted::Greedy {
                out.greedy.push(all_ids[r]);
            } else {
                let row =
                    stream.clone_dtoh(&c.logits.slice(r * vocab..(r + 1) * vocab)).map_err(cuda_err("copy to host"))?;
                out.logits.extend_from_slice(&row);
            }
        }
        Ok(Some(out))
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
