//! The operation set on a CUDA device: weights bf16 (GGUF matrices dequantized at load),
//! activations f32, the paged KV cache f16, matmuls on cuBLAS (bf16 inputs, f32 accumulation and
//! output), everything else our kernels in `kernels/`.

use std::ffi::c_void;

use candle_core::quantized::QTensor;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DriverError, LaunchConfig, PushKernelArg};
use hearth_core::{BackendError, StepPlan};
use hearth_models::ops::{AttnParams, KvSpec, OpResult, Ops, RopeParams};

use super::device::Gpu;
use super::dtype::{GemmDtype, WeightBuf, to_bf16_bits, to_f16_bits};
use super::graph::{GraphInputs, GraphKey, HostInputs};
use super::kernels::{
    ATTN_MAX_HEAD_DIM, ATTN_THREADS, attention_kernel, attention_splits, block_threads, elementwise_blocks,
};
use super::layout::StepLayout;
use super::profile::{OpTimer, ProfileSink};

/// An activation `[rows, cols]` f32 on the device. Each value of an activation has a unique id
/// (changed by every op that writes it in place), so a matmul can tell that its bf16 input copy is
/// already made (q, k and v, or gate and up, share one input).
pub struct CudaAct {
    buf: CudaSlice<f32>,
    rows: usize,
    cols: usize,
    id: u64,
}

impl CudaAct {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn new(buf: CudaSlice<f32>, rows: usize, cols: usize) -> Self {
        CudaAct { buf, rows, cols, id: next_id() }
    }

    /// Marks the contents as changed.
    fn touched(&mut self) {
        self.id = next_id();
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A weight matrix `[out, in]` on the device, in the ops' [`GemmDtype`].
pub struct CudaMatrix {
    pub label: String,
    w: WeightBuf,
    out: usize,
    k: usize,
}

impl CudaMatrix {
    pub fn out(&self) -> usize {
        self.out
    }

    pub fn k(&self) -> usize {
        self.k
    }
}

/// A weight vector (norm weights), f32 on the device.
pub struct CudaVector {
    w: CudaSlice<f32>,
}

struct LayerKv {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
}

/// The step layout last uploaded, and its device copies.
struct DeviceLayout {
    host: StepLayout,
    row_pos: CudaSlice<u32>,
    row_table: CudaSlice<u32>,
    tables: CudaSlice<u32>,
    slots: CudaSlice<u32>,
}

pub struct CudaOps {
    gpu: Gpu,
    profile: Option<ProfileSink>,
    dtype: GemmDtype,
    spec: KvSpec,
    block_size: usize,
    num_blocks: usize,
    kv: Vec<LayerKv>,
    /// bf16 copy of a matmul's input; grows to the largest seen.
    gemm_in: Option<CudaSlice<u16>>,
    /// Id of the activation `gemm_in` holds.
    gemm_in_of: Option<u64>,
    /// Bumped whenever a buffer that captured graphs point at is replaced.
    buffers_generation: u64,
    layout: Option<DeviceLayout>,
    scratch_layout: StepLayout,
    /// Positions last uploaded for RoPE.
    rope_pos: Option<(Vec<u32>, CudaSlice<u32>)>,
    /// RoPE frequency divisors last uploaded (a model's, so uploaded once; graphs point at them).
    rope_factors: Option<(Vec<f32>, CudaSlice<f32>)>,
    /// Passed for kernel pointer arguments a launch does not use.
    unused: CudaSlice<f32>,
    /// While capturing a decode graph: the static inputs embed, rope and attention read instead of
    /// uploading the step's values.
    bound: Option<GraphInputs>,
    multiprocessors: usize,
}

fn drv(what: &str) -> impl Fn(DriverError) -> BackendError + '_ {
    move |e| BackendError::Internal(format!("CUDA {what}: {e}"))
}

fn shape_err(op: &str, detail: String) -> BackendError {
    BackendError::Internal(format!("{op}: shape mismatch ({detail}). This is a bug."))
}

fn cfg(grid: (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

impl CudaOps {
    /// Opens the device and allocates `num_blocks` KV blocks of `block_size` tokens for every layer.
    pub fn new(
        gpu: Gpu,
        spec: KvSpec,
        block_size: usize,
        num_blocks: usize,
        dtype: GemmDtype,
    ) -> Result<Self, BackendError> {
        if block_size == 0 || (num_blocks + 1).checked_mul(block_size).is_none_or(|t| t > u32::MAX as usize) {
            return Err(BackendError::Unavailable(format!(
                "{num_blocks} KV blocks of {block_size} tokens: slots must be addressable by u32"
            )));
        }
        if !spec.head_dim.is_multiple_of(32) || spec.head_dim > ATTN_MAX_HEAD_DIM {
            return Err(BackendError::Unavailable(format!(
                "CUDA attention needs head_dim a multiple of 32 up to {ATTN_MAX_HEAD_DIM}, not {}",
                spec.head_dim
            )));
        }
        // One block more than the pool: the scratch block that graph padding rows write.
        let n = (num_blocks + 1) * block_size * spec.kv_heads * spec.head_dim;
        let mut kv = Vec::with_capacity(spec.layers);
        for _ in 0..spec.layers {
            let k = gpu.stream.alloc_zeros::<u16>(n).map_err(drv("KV cache allocation"))?;
            let v = gpu.stream.alloc_zeros::<u16>(n).map_err(drv("KV cache allocation"))?;
            kv.push(LayerKv { k, v });
        }
        let unused = gpu.stream.alloc_zeros::<f32>(1).map_err(drv("allocation"))?;
        let multiprocessors = gpu.multiprocessors;
        Ok(CudaOps {
            profile: None,
            unused,
            bound: None,
            multiprocessors,
            gpu,
            dtype,
            spec,
            block_size,
            num_blocks,
            kv,
            gemm_in: None,
            gemm_in_of: None,
            buffers_generation: 0,
            layout: None,
            scratch_layout: StepLayout::default(),
            rope_pos: None,
            rope_factors: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Uploads a host activation (tests, and the CPU-reference comparisons).
    pub fn upload(&self, data: &[f32], rows: usize, cols: usize) -> OpResult<CudaAct> {
        if data.len() != rows * cols {
            return Err(shape_err("upload", format!("{} values for {rows}x{cols}", data.len())));
        }
        Ok(CudaAct::new(self.gpu.stream.clone_htod(data).map_err(drv("upload"))?, rows, cols))
    }

    /// Uploads a matrix `[out, k]` given in f32, converted to the ops' dtype.
    pub fn load_weights(&mut self, name: &str, values: &[f32], out: usize, k: usize) -> OpResult<CudaMatrix> {
        if values.len() != out * k {
            return Err(shape_err("load_weights", format!("{} values for {out}x{k}", values.len())));
        }
        let s = &self.gpu.stream;
        let w = match self.dtype {
            GemmDtype::Bf16 => WeightBuf::Half(s.clone_htod(&to_bf16_bits(values)).map_err(drv("weight upload"))?),
            GemmDtype::F16 => WeightBuf::Half(s.clone_htod(&to_f16_bits(values)).map_err(drv("weight upload"))?),
            GemmDtype::F32 => WeightBuf::F32(s.clone_htod(values).map_err(drv("weight upload"))?),
        };
        Ok(CudaMatrix { label: name.to_string(), w, out, k })
    }

    pub fn dtype(&self) -> GemmDtype {
        self.dtype
    }

    /// Starts (or, with `false`, stops) timing every op, draining the stream around each one (so
    /// a profiled step runs slower than a real one; the split between ops is what it shows).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(Default::default);
    }

    /// Per-op `(label, total time, calls)` recorded since profiling started or was last taken.
    pub fn take_profile(&mut self) -> Vec<(String, std::time::Duration, u64)> {
        let Some(p) = &self.profile else { return Vec::new() };
        let mut m = p.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *m).into_iter().map(|(k, (d, n))| (k, d, n)).collect()
    }

    fn timer(&self, label: impl FnOnce() -> String) -> Option<OpTimer> {
        // Never while recording a graph: draining the stream would invalidate the capture.
        if self.bound.is_some() {
            return None;
        }
        let sink = self.profile.clone()?;
        self.gpu.stream.synchronize().ok()?;
        Some(OpTimer::start(self.gpu.stream.clone(), label(), sink))
    }

    /// The KV block past the pool that graph padding rows write (never given to a sequence).
    pub fn scratch_block(&self) -> u32 {
        self.num_blocks as u32
    }

    /// Device buffers for the inputs of a graph with `key`.
    pub(super) fn graph_inputs(&self, key: GraphKey) -> OpResult<GraphInputs> {
        let s = &self.gpu.stream;
        let z = |n: usize| s.alloc_zeros::<u32>(n).map_err(drv("allocation"));
        Ok(GraphInputs {
            key,
            max_keys: key.width * self.block_size,
            tokens: z(key.rows)?,
            positions: z(key.rows)?,
            slots: z(key.rows)?,
            row_table: z(key.rows)?,
            tables: z(key.rows * key.width)?,
        })
    }

    /// Copies host values into a graph's input buffers (outside any capture).
    pub(super) fn write_graph_inputs(&self, g: &mut GraphInputs, h: &HostInputs) -> OpResult<()> {
        let s = &self.gpu.stream;
        s.memcpy_htod(&h.tokens, &mut g.tokens).map_err(drv("graph input upload"))?;
        s.memcpy_htod(&h.positions, &mut g.positions).map_err(drv("graph input upload"))?;
        s.memcpy_htod(&h.slots, &mut g.slots).map_err(drv("graph input upload"))?;
        s.memcpy_htod(&h.row_table, &mut g.row_table).map_err(drv("graph input upload"))?;
        s.memcpy_htod(&h.tables, &mut g.tables).map_err(drv("graph input upload"))?;
        Ok(())
    }

    /// From now on embed, rope and attention read `g` instead of the step's host values.
    pub(super) fn bind(&mut self, g: GraphInputs) {
        self.bound = Some(g);
    }

    pub(super) fn unbind(&mut self) -> Option<GraphInputs> {
        self.bound.take()
    }

    /// Changes whenever a persistent scratch buffer is replaced (graphs captured before are stale).
    pub(super) fn buffers_generation(&self) -> u64 {
        self.buffers_generation
    }

    /// A graph replay overwrote the GEMM input buffer: forget whose copy it held.
    pub(super) fn forget_gemm_input(&mut self) {
        self.gemm_in_of = None;
    }

    /// Copies an activation into a buffer of at least its size (capturable).
    pub(super) fn copy_into(&self, x: &CudaAct, dst: &mut CudaSlice<f32>) -> OpResult<()> {
        let n = x.rows * x.cols;
        let mut d = dst.slice_mut(..n);
        self.gpu.stream.memcpy_dtod(&x.buf.slice(..n), &mut d).map_err(drv("copy"))
    }

    /// Argmax of each row of `logits` into `out` (capturable; no copy back).
    pub(super) fn argmax_into(&self, logits: &CudaAct, out: &mut CudaSlice<u32>) -> OpResult<()> {
        let vocab = logits.cols as i32;
        let mut l = self.gpu.stream.launch_builder(self.gpu.function("argmax_f32"));
        l.arg(&mut *out).arg(&logits.buf).arg(&vocab);
        // SAFETY: logits holds rows * vocab values; out holds at least rows.
        unsafe { l.launch(cfg((logits.rows as u32, 1), 1024)) }.map_err(drv("argmax"))?;
        Ok(())
    }

    pub(super) fn stream(&self) -> &std::sync::Arc<cudarc::driver::CudaStream> {
        &self.gpu.stream
    }

    /// Waits for every queued kernel (timing, tests).
    pub fn synchronize(&self) -> OpResult<()> {
        self.gpu.stream.synchronize().map_err(drv("synchronize"))
    }

    fn alloc(&self, n: usize) -> OpResult<CudaSlice<f32>> {
        // SAFETY: every op writes all of its output before anything reads it.
        unsafe { self.gpu.stream.alloc::<f32>(n.max(1)) }.map_err(drv("allocation"))
    }

    fn upload_u32(&self, v: &[u32]) -> OpResult<CudaSlice<u32>> {
        if v.is_empty() {
            return self.gpu.stream.alloc_zeros::<u32>(1).map_err(drv("upload"));
        }
        self.gpu.stream.clone_htod(v).map_err(drv("upload"))
    }

    /// Device copies of this step's layout, uploaded once and reused while the step is the same.
    fn layout_for(&mut self, step: &StepPlan) -> OpResult<()> {
        self.scratch_layout.build(step, self.block_size);
        if self.layout.as_ref().is_some_and(|l| l.host == self.scratch_layout) {
            return Ok(());
        }
        let h = std::mem::take(&mut self.scratch_layout);
        let dl = DeviceLayout {
            row_pos: self.upload_u32(&h.row_pos)?,
            row_table: self.upload_u32(&h.row_table)?,
            tables: self.upload_u32(&h.tables)?,
            slots: self.upload_u32(&h.slots)?,
            host: h,
        };
        self.layout = Some(dl);
        Ok(())
    }

    fn elementwise(&mut self, kernel: &str, a: &CudaAct, b: &CudaAct) -> OpResult<CudaAct> {
        let _timer = self.timer(|| kernel.trim_end_matches("_f32").to_string());
        if a.rows != b.rows || a.cols != b.cols {
            return Err(shape_err(kernel, format!("{}x{} vs {}x{}", a.rows, a.cols, b.rows, b.cols)));
        }
        let n = a.rows * a.cols;
        let mut out = self.alloc(n)?;
        let n64 = n as i64;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function(kernel));
        l.arg(&mut out).arg(&a.buf).arg(&b.buf).arg(&n64);
        // SAFETY: argument list matches the kernel's signature; all buffers hold n values.
        unsafe { l.launch(cfg((elementwise_blocks(n, 256), 1), 256)) }.map_err(drv(kernel))?;
        Ok(CudaAct::new(out, a.rows, a.cols))
    }
}

impl Ops for CudaOps {
    type Act = CudaAct;
    type Matrix = CudaMatrix;
    type Vector = CudaVector;

    fn load_matrix(&mut self, name: &str, t: QTensor) -> OpResult<CudaMatrix> {
        let (out, k) = t.shape().dims2().map_err(|e| BackendError::Internal(format!("{name}: {e}")))?;
        let w = t
            .dequantize(&candle_core::Device::Cpu)
            .and_then(|w| w.flatten_all())
            .and_then(|w| w.to_vec1::<f32>())
            .map_err(|e| BackendError::Internal(format!("dequantizing {name}: {e}")))?;
        self.load_weights(name, &w, out, k)
    }

    fn load_matrix_f32(&mut self, name: &str, w: Vec<f32>, out: usize, k: usize) -> OpResult<CudaMatrix> {
        self.load_weights(name, &w, out, k)
    }

    fn load_vector(&mut self, _name: &str, v: Vec<f32>) -> OpResult<CudaVector> {
        Ok(CudaVector { w: self.gpu.stream.clone_htod(&v).map_err(drv("weight upload"))? })
    }

    fn embed(&mut self, table: &CudaMatrix, ids: &[u32], scale: f32) -> OpResult<CudaAct> {
        let _timer = self.timer(|| "embed".into());
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.out) {
            return Err(shape_err("embed", format!("token {id} of {}", table.out)));
        }
        let cols = table.k;
        let mut out = self.alloc(ids.len() * cols)?;
        if ids.is_empty() {
            return Ok(CudaAct::new(out, 0, cols));
        }
        let uploaded;
        let dev_ids = match &self.bound {
            Some(g) if g.key.rows == ids.len() => &g.tokens,
            Some(g) => return Err(shape_err("embed", format!("{} ids for a graph of {} rows", ids.len(), g.key.rows))),
            None => {
                uploaded = self.upload_u32(ids)?;
                &uploaded
            }
        };
        let cols_i = cols as i32;
        let s = &self.gpu.stream;
        let kernel = match self.dtype {
            GemmDtype::Bf16 => "embed_bf16",
            GemmDtype::F16 => "embed_f16",
            GemmDtype::F32 => "embed_f32",
        };
        let mut l = s.launch_builder(self.gpu.function(kernel));
        l.arg(&mut out);
        match &table.w {
            WeightBuf::Half(w) => l.arg(w),
            WeightBuf::F32(w) => l.arg(w),
        };
        l.arg(dev_ids).arg(&cols_i).arg(&scale);
        // SAFETY: ids are checked against the table; out holds ids.len() rows of cols.
        unsafe { l.launch(cfg((ids.len() as u32, 1), block_threads(cols, 256))) }.map_err(drv("embed"))?;
        Ok(CudaAct::new(out, ids.len(), cols))
    }

    fn matmul(&mut self, x: &CudaAct, w: &CudaMatrix) -> OpResult<CudaAct> {
        let _timer = self.timer(|| format!("matmul {}", hearth_models::ops::op_label(&w.label)));
        if x.cols != w.k {
            return Err(shape_err("matmul", format!("{}x{} · [{}x{}]ᵀ ({})", x.rows, x.cols, w.out, w.k, w.label)));
        }
        let n = x.rows * x.cols;
        let mut out = self.alloc(x.rows * w.out)?;
        if x.rows == 0 {
            return Ok(CudaAct::new(out, 0, w.out));
        }
        let stream = &self.gpu.stream;
        let dtype = self.dtype;
        // B: the input as the GEMM reads it (f32 as is; halves through a converted copy).
        let b_ptr = if dtype == GemmDtype::F32 {
            let (p, _g) = x.buf.device_ptr(stream);
            p
        } else {
            if self.gemm_in.as_ref().is_none_or(|b| b.len() < n) {
                self.gemm_in = Some(stream.alloc_zeros::<u16>(n).map_err(drv("allocation"))?);
                self.gemm_in_of = None;
                // Captured graphs hold the old buffer's address: they must be captured again.
                self.buffers_generation += 1;
            }
            let gemm_in = self.gemm_in.as_mut().expect("gemm input buffer was just allocated. This is a bug.");
            if self.gemm_in_of != Some(x.id) {
                let n64 = n as i64;
                let kernel = if dtype == GemmDtype::F16 { "cast_f32_f16" } else { "cast_f32_bf16" };
                let mut l = stream.launch_builder(self.gpu.function(kernel));
                l.arg(&mut *gemm_in).arg(&x.buf).arg(&n64);
                // SAFETY: gemm_in holds at least n values, x holds n.
                unsafe { l.launch(cfg((elementwise_blocks(n, 256), 1), 256)) }.map_err(drv("cast"))?;
                self.gemm_in_of = Some(x.id);
            }
            let (p, _g) = gemm_in.device_ptr(stream);
            p
        };
        let a_ptr = match &w.w {
            WeightBuf::Half(h) => h.device_ptr(stream).0,
            WeightBuf::F32(f) => f.device_ptr(stream).0,
        };

        // Row-major Y[rows, out] = X[rows, k] · W[out, k]ᵀ is, column-major, Yᵀ[out, rows] =
        // op(A)·B with A = W seen as [k, out] (transposed) and B = X seen as [k, rows].
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (m, nn, k) = (w.out as i32, x.rows as i32, w.k as i32);
        let (c_ptr, _gc) = out.device_ptr_mut(stream);
        // SAFETY: pointers are live device buffers of the stated shapes and types on the handle's
        // stream (event tracking is off, so the guards above carry no synchronisation).
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.gpu.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                nn,
                k,
                (&alpha) as *const f32 as *const c_void,
                a_ptr as *const c_void,
                dtype.cuda_type(),
                k,
                b_ptr as *const c_void,
                dtype.cuda_type(),
                k,
                (&beta) as *const f32 as *const c_void,
                c_ptr as *mut c_void,
                cudaDataType::CUDA_R_32F,
                m,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| BackendError::Internal(format!("cuBLAS GEMM {}: {e}", w.label)))?;
        drop(_gc);
        Ok(CudaAct::new(out, x.rows, w.out))
    }

    fn rms_norm(&mut self, x: &CudaAct, w: &CudaVector, eps: f32) -> OpResult<CudaAct> {
        let _timer = self.timer(|| "rms_norm".into());
        let g = w.w.len();
        if g == 0 || !x.cols.is_multiple_of(g) {
            return Err(shape_err("rms_norm", format!("{} columns in groups of {g}", x.cols)));
        }
        let groups = x.rows * x.cols / g;
        let mut out = self.alloc(x.rows * x.cols)?;
        if groups == 0 {
            return Ok(CudaAct::new(out, x.rows, x.cols));
        }
        let gi = g as i32;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("rms_norm_f32"));
        l.arg(&mut out).arg(&x.buf).arg(&w.w).arg(&gi).arg(&eps);
        // SAFETY: x and out hold groups * g values, w holds g.
        unsafe { l.launch(cfg((groups as u32, 1), block_threads(g, 256))) }.map_err(drv("rms_norm"))?;
        Ok(CudaAct::new(out, x.rows, x.cols))
    }

    fn add_rms_norm(&mut self, acc: &mut CudaAct, x: &CudaAct, w: &CudaVector, eps: f32) -> OpResult<()> {
        let _timer = self.timer(|| "add_rms_norm".into());
        if acc.rows != x.rows || acc.cols != x.cols || w.w.len() != x.cols {
            return Err(shape_err("add_rms_norm", format!("{}x{} += {}x{}", acc.rows, acc.cols, x.rows, x.cols)));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let cols = x.cols as i32;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("add_rms_norm_f32"));
        l.arg(&mut acc.buf).arg(&x.buf).arg(&w.w).arg(&cols).arg(&eps);
        // SAFETY: acc and x hold rows * cols values, w holds cols.
        unsafe { l.launch(cfg((x.rows as u32, 1), block_threads(x.cols, 256))) }.map_err(drv("add_rms_norm"))?;
        acc.touched();
        Ok(())
    }

    fn rope(&mut self, x: &mut CudaAct, positions: &[u32], p: &RopeParams<'_>) -> OpResult<()> {
        let _timer = self.timer(|| "rope".into());
        let d = p.head_dim;
        if positions.len() != x.rows || d == 0 || !d.is_multiple_of(2) || !x.cols.is_multiple_of(d) {
            return Err(shape_err("rope", format!("{} rows, {} positions, head_dim {d}", x.rows, positions.len())));
        }
        if x.rows == 0 {
            return Ok(());
        }
        let pos = if let Some(g) = &self.bound {
            &g.positions
        } else {
            if self.rope_pos.as_ref().is_none_or(|(h, _)| h[..] != *positions) {
                let dev = self.upload_u32(positions)?;
                self.rope_pos = Some((positions.to_vec(), dev));
            }
            &self.rope_pos.as_ref().expect("rope positions were just uploaded. This is a bug.").1
        };
        let factors = match p.freq_factors {
            None => &self.unused,
            Some(f) => {
                if f.len() != d / 2 {
                    return Err(shape_err("rope", format!("{} frequency factors, head_dim {d}", f.len())));
                }
                if self.rope_factors.as_ref().is_none_or(|(h, _)| h[..] != *f) {
                    let dev = self.gpu.stream.clone_htod(f).map_err(drv("upload"))?;
                    self.rope_factors = Some((f.to_vec(), dev));
                    // Captured graphs hold the old buffer's address: they must be captured again.
                    self.buffers_generation += 1;
                }
                &self.rope_factors.as_ref().expect("rope factors were just uploaded. This is a bug.").1
            }
        };
        let (heads, di, inter) = ((x.cols / d) as i32, d as i32, p.interleaved as i32);
        let has_factors = p.freq_factors.is_some() as i32;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("rope_neox_f32"));
        l.arg(&mut x.buf).arg(pos).arg(&heads).arg(&di).arg(&p.base).arg(&p.position_scale).arg(&inter);
        l.arg(&has_factors).arg(factors);
        // SAFETY: x holds rows * heads * d values; positions holds rows; factors holds d / 2 values
        // when has_factors is set (checked above).
        unsafe { l.launch(cfg((x.rows as u32, heads as u32), block_threads(d / 2, 128))) }.map_err(drv("rope"))?;
        x.touched();
        Ok(())
    }

    fn gelu_mul(&mut self, gate: &CudaAct, up: &CudaAct) -> OpResult<CudaAct> {
        self.elementwise("gelu_mul_f32", gate, up)
    }

    fn silu_mul(&mut self, gate: &CudaAct, up: &CudaAct) -> OpResult<CudaAct> {
        self.elementwise("silu_mul_f32", gate, up)
    }

    fn add(&mut self, acc: &mut CudaAct, x: &CudaAct) -> OpResult<()> {
        let _timer = self.timer(|| "add".into());
        if acc.rows != x.rows || acc.cols != x.cols {
            return Err(shape_err("add", format!("{}x{} += {}x{}", acc.rows, acc.cols, x.rows, x.cols)));
        }
        let n = x.rows * x.cols;
        let n64 = n as i64;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("add_f32"));
        l.arg(&mut acc.buf).arg(&x.buf).arg(&n64);
        // SAFETY: both hold n values.
        unsafe { l.launch(cfg((elementwise_blocks(n, 256), 1), 256)) }.map_err(drv("add"))?;
        acc.touched();
        Ok(())
    }

    fn add_bias(&mut self, x: &mut CudaAct, b: &CudaVector) -> OpResult<()> {
        let _timer = self.timer(|| "add_bias".into());
        if b.w.len() != x.cols {
            return Err(shape_err("add_bias", format!("{} columns, bias of {}", x.cols, b.w.len())));
        }
        let n = x.rows * x.cols;
        let (n64, cols) = (n as i64, x.cols as i32);
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("add_bias_f32"));
        l.arg(&mut x.buf).arg(&b.w).arg(&cols).arg(&n64);
        // SAFETY: x holds n = rows * cols values, b holds cols.
        unsafe { l.launch(cfg((elementwise_blocks(n, 256), 1), 256)) }.map_err(drv("add_bias"))?;
        x.touched();
        Ok(())
    }

    fn dummy_matrix(&mut self, name: &str, out: usize, k: usize, seed: u64) -> OpResult<CudaMatrix> {
        use rayon::prelude::*;
        // Chunks with their own derived seeds, generated in parallel: an 8B model takes seconds.
        let a = 1.0 / (k as f32).sqrt();
        let chunk = 1 << 20;
        let mut values = vec![0f32; out * k];
        values.par_chunks_mut(chunk).enumerate().for_each(|(c, dst)| {
            let mut rng = hearth_models::dummy::SeededRng::new(seed ^ (c as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            dst.iter_mut().for_each(|v| *v = a * rng.next_f32());
        });
        self.load_weights(name, &values, out, k)
    }

    fn attention(
        &mut self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        step: &StepPlan,
        p: &AttnParams,
    ) -> OpResult<CudaAct> {
        let _timer = self.timer(|| "attention (KV write + attend)".into());
        let (d, kvd) = (p.head_dim, p.n_kv_heads * p.head_dim);
        let rows = step.tokens.len();
        if q.cols != p.n_heads * d
            || k.cols != kvd
            || v.cols != kvd
            || q.rows != rows
            || k.rows != rows
            || v.rows != rows
            || kvd != self.spec.kv_heads * self.spec.head_dim
            || p.layer >= self.kv.len()
            || p.n_kv_heads == 0
            || !p.n_heads.is_multiple_of(p.n_kv_heads)
            || !d.is_multiple_of(32)
            || attention_kernel(p.n_heads / p.n_kv_heads, d).is_none()
        {
            return Err(shape_err(
                "attention",
                format!(
                    "q {}x{}, k {}x{}, v {}x{}, {rows} rows, {p:?}",
                    q.rows, q.cols, k.rows, k.cols, v.rows, v.cols
                ),
            ));
        }
        let mut out = self.alloc(rows * q.cols)?;
        if rows == 0 {
            return Ok(CudaAct::new(out, rows, q.cols));
        }
        // The step's layout: uploaded once per step, or a graph's static inputs.
        let (slots, row_pos, row_table, tables, max_keys) = match &self.bound {
            Some(g) => {
                let keys = p.window.map_or(g.max_keys, |w| w.min(g.max_keys));
                (&g.slots, &g.positions, &g.row_table, &g.tables, keys)
            }
            None => {
                self.layout_for(step)?;
                let l = self.layout.as_ref().expect("layout was just built. This is a bug.");
                (&l.slots, &l.row_pos, &l.row_table, &l.tables, l.host.max_keys(p.window))
            }
        };
        let kv = &mut self.kv[p.layer];
        let s = &self.gpu.stream;
        let kvd_i = kvd as i32;
        let mut l = s.launch_builder(self.gpu.function("kv_write_f16"));
        l.arg(&mut kv.k).arg(&mut kv.v).arg(&k.buf).arg(&v.buf).arg(slots).arg(&kvd_i);
        // SAFETY: slots come from a validated plan (blocks inside the pool, or the scratch block
        // past it); k, v hold rows * kvd.
        unsafe { l.launch(cfg((rows as u32, 1), block_threads(kvd, 256))) }.map_err(drv("kv_write"))?;

        let splits = attention_splits(rows, p.n_kv_heads, max_keys, self.multiprocessors);
        let parts = if splits > 1 {
            let n = rows * p.n_heads * splits;
            // SAFETY: attention_f32 writes every partial (empty splits write max -inf, sum 0).
            let acc = unsafe { s.alloc::<f32>(n * d) }.map_err(drv("allocation"))?;
            let ml = unsafe { s.alloc::<f32>(n * 2) }.map_err(drv("allocation"))?;
            Some((acc, ml))
        } else {
            None
        };
        let (heads, kv_heads, hd, bs) = (p.n_heads as i32, p.n_kv_heads as i32, d as i32, self.block_size as i32);
        let window = p.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
        let softcap = p.softcap.unwrap_or(0.0);
        let splits_i = splits as i32;
        let kernel = attention_kernel(p.n_heads / p.n_kv_heads, d)
            .expect("group size and head_dim were checked above. This is a bug.");
        let mut l = s.launch_builder(self.gpu.function(kernel));
        l.arg(&mut out);
        // With one split the partial buffers are never touched; a one-value buffer stands in.
        match &parts {
            Some((a, m)) => l.arg(a).arg(m),
            None => l.arg(&self.unused).arg(&self.unused),
        };
        l.arg(&q.buf)
            .arg(&kv.k)
            .arg(&kv.v)
            .arg(row_pos)
            .arg(row_table)
            .arg(tables)
            .arg(&heads)
            .arg(&kv_heads)
            .arg(&hd)
            .arg(&bs)
            .arg(&p.scale)
            .arg(&window)
            .arg(&softcap)
            .arg(&splits_i);
        let grid = LaunchConfig {
            grid_dim: (rows as u32, p.n_kv_heads as u32, splits as u32),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every row's keys are at positions < context_len, covered by its block table; the
        // partial buffers hold rows * heads * splits entries.
        unsafe { l.launch(grid) }.map_err(drv("attention"))?;
        if let Some((a, m)) = &parts {
            let mut l = s.launch_builder(self.gpu.function("attention_combine_f32"));
            l.arg(&mut out).arg(a).arg(m).arg(&heads).arg(&hd).arg(&splits_i);
            // SAFETY: the partials were written by the launch above, in stream order.
            unsafe { l.launch(cfg((rows as u32, p.n_heads as u32), block_threads(d, 256))) }
                .map_err(drv("attention combine"))?;
        }
        Ok(CudaAct::new(out, rows, q.cols))
    }

    fn select_rows(&mut self, x: &CudaAct, rows: &[usize]) -> OpResult<CudaAct> {
        let _timer = self.timer(|| "select_rows".into());
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(shape_err("select_rows", format!("row {r} of {}", x.rows)));
        }
        let mut out = self.alloc(rows.len() * x.cols)?;
        if rows.is_empty() {
            return Ok(CudaAct::new(out, 0, x.cols));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let dev = self.upload_u32(&idx)?;
        let cols = x.cols as i32;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("select_rows_f32"));
        l.arg(&mut out).arg(&x.buf).arg(&dev).arg(&cols);
        // SAFETY: every index is checked against x.rows.
        unsafe { l.launch(cfg((rows.len() as u32, 1), block_threads(x.cols, 256))) }.map_err(drv("select_rows"))?;
        Ok(CudaAct::new(out, rows.len(), x.cols))
    }

    fn to_host(&mut self, x: &CudaAct) -> OpResult<Vec<f32>> {
        let _timer = self.timer(|| "copy to host".into());
        let mut v = self.gpu.stream.clone_dtoh(&x.buf).map_err(drv("copy to host"))?;
        v.truncate(x.rows * x.cols);
        Ok(v)
    }
}

impl CudaOps {
    /// Index of each row's largest value (greedy sampling on the device).
    pub fn argmax(&mut self, logits: &CudaAct) -> OpResult<Vec<u32>> {
        if logits.rows == 0 {
            return Ok(Vec::new());
        }
        let mut out = self.gpu.stream.alloc_zeros::<u32>(logits.rows).map_err(drv("allocation"))?;
        let vocab = logits.cols as i32;
        let s = &self.gpu.stream;
        let mut l = s.launch_builder(self.gpu.function("argmax_f32"));
        l.arg(&mut out).arg(&logits.buf).arg(&vocab);
        // SAFETY: logits holds rows * vocab values; out holds rows.
        unsafe { l.launch(cfg((logits.rows as u32, 1), 1024)) }.map_err(drv("argmax"))?;
        self.gpu.stream.clone_dtoh(&out).map_err(drv("copy to host"))
    }
}
