//! [`NeuronBackend`]: runs hearth steps on per-bucket NEFFs through libnrt.
//!
//! Written from the documented API; checked only against mock-nrt here. Never run on Trainium or
//! Inferentia hardware: KV aliasing, weight layout and the real runtime's tensor-set rules are
//! hardware validation items (see README.md).
//!
//! Design (after NxD Inference's continuous batching, `shared/reference/neuron.md` §2): the KV
//! cache is one slot per sequence ([`KvLayout::Slots`]) plus one padding slot (`pad_slot ==
//! num_slots`); a step is either all prefill or all decode and runs on the first compiled bucket
//! that fits, chosen by [`plan_shape`] (the same function the scheduler admits with, so the two
//! cannot disagree) and laid out by [`PaddedBatch`] (rows sorted by slot, padding rows on the pad
//! slot). Persistent tensors (weights, KV) are allocated once and bound by name into every
//! bucket's input and output sets, the way NxD aliases KV outputs onto inputs.
//!
//! Ownership: every runtime handle lives in one of the `tensors`, `sets` or `models` vectors as
//! soon as it exists, so a load that fails half-way releases what it made. [`Drop`] frees the
//! tensors, destroys the sets, unloads the models, then calls `nrt_close` — in that order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_core::{
    Backend, BackendCaps, BackendError, Bucket, KvLayout, LogitsWanted, PaddedBatch, SamplingSupport, ShapePolicy,
    StepOutput, StepPlan, WarmupReport, argmax, plan_shape,
};

use crate::error::NeuronError;
use crate::manifest::{BucketEntry, Manifest, Outputs, Sampling};
use crate::neff::NeffHeader;
use crate::status::{ErrorClass, NrtError};
use crate::sys::{
    Model, NRT_DTYPE_FLOAT32, NRT_DTYPE_INT32, NRT_TENSOR_PLACEMENT_DEVICE, NRT_TENSOR_USAGE_INPUT,
    NRT_TENSOR_USAGE_OUTPUT, Nrt, Tensor, TensorInfo, TensorSet,
};

/// How to load the backend (what `hearth serve --backend neuron` passes).
#[derive(Clone, Debug)]
pub struct NeuronOptions {
    /// The operator-written `manifest.json`.
    pub manifest: PathBuf,
    /// libnrt to open; `None` tries `libnrt.so.1`, then `libnrt.so`.
    pub library: Option<PathBuf>,
    /// Extra attempts of `nrt_execute` after a retryable status (`RESOURCE`, `QUEUE_FULL`,
    /// `EXEC_NC_BUSY`).
    pub exec_retries: usize,
}

impl NeuronOptions {
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        NeuronOptions { manifest: manifest.into(), library: None, exec_retries: 3 }
    }
}

/// Checks a `NEURON_RT_VISIBLE_CORES` value: `"N"` or `"A-B"` with `A <= B` (the runtime needs
/// a contiguous set). Returns the `(first, last)` core.
pub fn parse_visible_cores(s: &str) -> Result<(u32, u32), NeuronError> {
    let bad = || {
        NeuronError::Options(format!(
            "visible cores '{s}': expected one core (\"3\") or a contiguous range (\"3-6\"); lists are not contiguous"
        ))
    };
    let num = |t: &str| t.trim().parse::<u32>().map_err(|_| bad());
    match s.split_once('-') {
        None => num(s).map(|n| (n, n)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a <= b { Ok((a, b)) } else { Err(bad()) }
        }
    }
}

/// One compiled bucket: its model, its per-bucket tensors and its two sets (indices into
/// [`NeuronBackend`]'s handle vectors).
#[derive(Debug)]
struct Graph {
    bucket: Bucket,
    batch: usize,
    tokens: usize,
    model: usize,
    ids: usize,
    positions: usize,
    seq_ids: usize,
    /// Prefill graphs only.
    last_index: Option<usize>,
    output: usize,
    inputs: usize,
    outputs: usize,
}

/// The Neuron backend. Written from the documented libnrt API; checked only against mock-nrt here.
pub struct NeuronBackend {
    caps: BackendCaps,
    manifest: Manifest,
    graphs: Vec<Graph>,
    by_bucket: HashMap<Bucket, usize>,
    exec_retries: usize,
    // Handles, released in this order by `Drop`.
    tensors: Vec<Tensor>,
    sets: Vec<TensorSet>,
    models: Vec<Model>,
    initialized: bool,
    // Last: the library must outlive every handle.
    nrt: Nrt,
}

impl std::fmt::Debug for NeuronBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NeuronBackend")
            .field("library", &self.nrt.path)
            .field("model", &self.manifest.model)
            .field("graphs", &self.graphs.len())
            .finish_non_exhaustive()
    }
}

fn i32_bytes(values: impl IntoIterator<Item = u32>) -> Vec<u8> {
    // Values are token ids, positions and slots, bounded by the manifest's i32-sized limits.
    values.into_iter().flat_map(|v| (v as i32).to_le_bytes()).collect()
}

impl NeuronBackend {
    /// Opens libnrt, reads the manifest and the NEFFs, loads every bucket, checks each graph's
    /// tensors against the manifest, and allocates device tensors and tensor sets.
    ///
    /// NeuronCores are chosen the Neuron way: libnrt reads `NEURON_RT_VISIBLE_CORES` from the
    /// process environment at `nrt_init` (set it where the server starts; hearth never changes its
    /// own environment, which is unsound once threads run). Its syntax is checked here.
    pub fn load(opts: &NeuronOptions) -> Result<Self, NeuronError> {
        let (manifest, dir) = Manifest::load(&opts.manifest)?;
        let grid = manifest.grid()?;
        if let Ok(v) = std::env::var("NEURON_RT_VISIBLE_CORES") {
            parse_visible_cores(&v)?;
        }
        let nrt = Nrt::open(opts.library.as_deref())?;
        tracing::info!(library = %nrt.path, model = %manifest.model, buckets = manifest.buckets.len(), "loading neuron backend");

        let mut neffs = Vec::with_capacity(manifest.buckets.len());
        for entry in &manifest.buckets {
            let path = manifest.neff_path(&dir, entry);
            let (h, bytes) =
                NeffHeader::read(&path).map_err(|source| NeuronError::NeffIo { path: path.clone(), source })?;
            h.check_lnc(manifest.lnc).map_err(|source| NeuronError::Neff { path: path.clone(), source })?;
            tracing::info!(bucket = %entry.bucket(), neff = %h.name, version = ?h.version, build = %h.build_version, lnc = h.lnc_size, "NEFF header");
            neffs.push(bytes);
        }

        let sampling = match manifest.sampling {
            Sampling::Logits => SamplingSupport::Logits,
            Sampling::Greedy => SamplingSupport::GreedyOnly,
        };
        let max_batch_tokens = manifest
            .buckets
            .iter()
            .map(|b| match b.bucket() {
                Bucket::Prefill(p) => p.tokens * p.batch,
                Bucket::Decode(d) => d.batch,
            })
            .max()
            .unwrap_or(0);
        let caps = BackendCaps {
            name: "neuron",
            kv: KvLayout::Slots { num_slots: manifest.num_slots, max_len: manifest.max_len },
            max_context: manifest.max_len,
            max_batch_tokens,
            mixed_prefill_decode: false,
            vocab_size: manifest.vocab_size,
            shapes: ShapePolicy::Bucketed(grid),
            chunked_prefill: false,
            prefix_cache: false,
            preemption: false,
            sampling,
            prompt_logits: false,
        };

        let mut b = NeuronBackend {
            caps,
            manifest,
            graphs: Vec::new(),
            by_bucket: HashMap::new(),
            exec_retries: opts.exec_retries,
            tensors: Vec::new(),
            sets: Vec::new(),
            models: Vec::new(),
            initialized: false,
            nrt,
        };
        b.nrt.init()?;
        b.initialized = true;
        match b.nrt.visible_vnc_count() {
            Ok(n) => tracing::info!(visible_cores = n, "nrt initialized"),
            Err(e) => tracing::warn!(error = %e, "nrt_get_visible_vnc_count failed"),
        }

        for (entry, neff) in b.manifest.buckets.iter().zip(&neffs) {
            let model = b.nrt.load(neff, -1, -1)?;
            b.models.push(model);
            let info = b.nrt.tensor_info(b.models.last().expect("just pushed. This is a bug."))?;
            b.check_tensors(entry, &info)?;
        }
        drop(neffs);

        let state = b.allocate_state(&dir)?;
        for i in 0..b.manifest.buckets.len() {
            b.build_graph(i, &state)?;
        }
        Ok(b)
    }

    /// The manifest the backend was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn role_sizes(&self, bucket: Bucket) -> (usize, usize, bool) {
        match bucket {
            Bucket::Prefill(p) => (p.batch, p.tokens, true),
            Bucket::Decode(d) => (d.batch, 1, false),
        }
    }

    /// Checks a graph's inputs and outputs against the manifest: every role present with the
    /// right dtype and byte size, every state present with its size, nothing unnamed.
    fn check_tensors(&self, entry: &BucketEntry, info: &[TensorInfo]) -> Result<(), NeuronError> {
        let bucket = entry.bucket();
        let (batch, tokens, prefill) = self.role_sizes(bucket);
        let m = &self.manifest;
        let find = |name: &str, usage: i32| info.iter().find(|t| t.name == name && t.usage == usage);
        let mut want: Vec<(&str, i32, i32, usize)> = vec![
            (&m.inputs.input_ids, NRT_TENSOR_USAGE_INPUT, NRT_DTYPE_INT32, batch * tokens * 4),
            (&m.inputs.positions, NRT_TENSOR_USAGE_INPUT, NRT_DTYPE_INT32, batch * tokens * 4),
            (&m.inputs.seq_ids, NRT_TENSOR_USAGE_INPUT, NRT_DTYPE_INT32, batch * 4),
        ];
        if prefill {
            want.push((&m.inputs.last_index, NRT_TENSOR_USAGE_INPUT, NRT_DTYPE_INT32, batch * 4));
        }
        match &m.outputs {
            Outputs::Logits(n) => want.push((n, NRT_TENSOR_USAGE_OUTPUT, NRT_DTYPE_FLOAT32, batch * m.vocab_size * 4)),
            Outputs::Tokens(n) => want.push((n, NRT_TENSOR_USAGE_OUTPUT, NRT_DTYPE_INT32, batch * 4)),
        }
        for (name, usage, dtype, size) in want {
            let what = if usage == NRT_TENSOR_USAGE_INPUT { "input" } else { "output" };
            let t = find(name, usage)
                .ok_or_else(|| NeuronError::Artifact(format!("{bucket}: the graph has no {what} named '{name}'")))?;
            if t.dtype != dtype || t.size != size {
                return Err(NeuronError::Artifact(format!(
                    "{bucket}: {what} '{name}' is dtype {:#x} of {} bytes, expected dtype {dtype:#x} of {size} bytes",
                    t.dtype, t.size
                )));
            }
        }
        for s in &m.state {
            let matching: Vec<_> = info.iter().filter(|t| t.name == s.name).collect();
            if matching.is_empty() {
                return Err(NeuronError::Artifact(format!(
                    "{bucket}: state '{}' is not a tensor of the graph",
                    s.name
                )));
            }
            if let Some(t) = matching.iter().find(|t| t.size != s.bytes) {
                return Err(NeuronError::Artifact(format!(
                    "{bucket}: state '{}' is {} bytes in the graph, the manifest says {}",
                    s.name, t.size, s.bytes
                )));
            }
        }
        for t in info {
            let bound = if t.usage == NRT_TENSOR_USAGE_INPUT {
                t.name == m.inputs.input_ids
                    || t.name == m.inputs.positions
                    || t.name == m.inputs.seq_ids
                    || (prefill && t.name == m.inputs.last_index)
            } else {
                t.name == m.outputs.name()
            };
            if !bound && !m.state.iter().any(|s| s.name == t.name) {
                return Err(NeuronError::Artifact(format!(
                    "{bucket}: graph tensor '{}' (usage {}) is not named in the manifest",
                    t.name, t.usage
                )));
            }
        }
        Ok(())
    }

    fn allocate(&mut self, size: usize, name: &str) -> Result<usize, NeuronError> {
        let t = self.nrt.tensor_allocate(NRT_TENSOR_PLACEMENT_DEVICE, 0, size, name)?;
        self.tensors.push(t);
        Ok(self.tensors.len() - 1)
    }

    /// Allocates the persistent tensors once and writes their files. Returns `(name, tensor)`.
    fn allocate_state(&mut self, dir: &std::path::Path) -> Result<Vec<(String, usize)>, NeuronError> {
        let mut out = Vec::new();
        for s in self.manifest.state.clone() {
            let t = self.allocate(s.bytes, &s.name)?;
            if let Some(f) = &s.file {
                let path = dir.join(f);
                let bytes = std::fs::read(&path).map_err(|e| {
                    NeuronError::Artifact(format!("state '{}': cannot read {}: {e}", s.name, path.display()))
                })?;
                if bytes.len() != s.bytes {
                    return Err(NeuronError::Artifact(format!(
                        "state '{}': {} holds {} bytes, expected {}",
                        s.name,
                        path.display(),
                        bytes.len(),
                        s.bytes
                    )));
                }
                self.nrt.tensor_write(&self.tensors[t], 0, &bytes)?;
            }
            out.push((s.name, t));
        }
        Ok(out)
    }

    /// Allocates bucket `i`'s tensors and builds its input and output sets.
    fn build_graph(&mut self, i: usize, state: &[(String, usize)]) -> Result<(), NeuronError> {
        let bucket = self.manifest.buckets[i].bucket();
        let (batch, tokens, prefill) = self.role_sizes(bucket);
        let m = self.manifest.clone();
        let ids = self.allocate(batch * tokens * 4, &m.inputs.input_ids)?;
        let positions = self.allocate(batch * tokens * 4, &m.inputs.positions)?;
        let seq_ids = self.allocate(batch * 4, &m.inputs.seq_ids)?;
        let last_index = if prefill { Some(self.allocate(batch * 4, &m.inputs.last_index)?) } else { None };
        let out_size = match m.outputs {
            Outputs::Logits(_) => batch * m.vocab_size * 4,
            Outputs::Tokens(_) => batch * 4,
        };
        let output = self.allocate(out_size, m.outputs.name())?;

        let inputs = self.nrt.allocate_tensor_set()?;
        self.sets.push(inputs);
        let inputs = self.sets.len() - 1;
        let outputs = self.nrt.allocate_tensor_set()?;
        self.sets.push(outputs);
        let outputs = self.sets.len() - 1;

        let mut bind_in: Vec<(&str, usize)> =
            vec![(&m.inputs.input_ids, ids), (&m.inputs.positions, positions), (&m.inputs.seq_ids, seq_ids)];
        if let Some(t) = last_index {
            bind_in.push((&m.inputs.last_index, t));
        }
        let mut bind_out: Vec<(&str, usize)> = vec![(m.outputs.name(), output)];
        for (name, t) in state {
            bind_in.push((name, *t));
            bind_out.push((name, *t));
        }
        for (name, t) in bind_in {
            self.nrt.add_tensor_to_tensor_set(&self.sets[inputs], name, &self.tensors[t])?;
        }
        for (name, t) in bind_out {
            self.nrt.add_tensor_to_tensor_set(&self.sets[outputs], name, &self.tensors[t])?;
        }
        self.by_bucket.insert(bucket, self.graphs.len());
        self.graphs.push(Graph {
            bucket,
            batch,
            tokens,
            model: i,
            ids,
            positions,
            seq_ids,
            last_index,
            output,
            inputs,
            outputs,
        });
        Ok(())
    }

    /// `nrt_execute`, retried up to `exec_retries` times on a retryable status.
    fn run(&self, g: &Graph) -> Result<(), NrtError> {
        let mut attempt = 0;
        loop {
            match self.nrt.execute(&self.models[g.model], &self.sets[g.inputs], &self.sets[g.outputs]) {
                Ok(()) => return Ok(()),
                Err(e) if e.class == ErrorClass::Retryable && attempt < self.exec_retries => {
                    attempt += 1;
                    tracing::warn!(
                        call = e.call,
                        code = e.code,
                        status = e.name,
                        detail = ?self.nrt.status_text(e.code),
                        bucket = %g.bucket,
                        attempt,
                        "retrying nrt_execute"
                    );
                    std::thread::sleep(Duration::from_millis(attempt as u64));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes one step's inputs into graph `g`'s tensors (`lens` gives `last_index = len - 1`).
    fn write_inputs(
        &self,
        g: &Graph,
        ids: &[u32],
        positions: &[u32],
        seq_ids: &[u32],
        lens: &[u32],
    ) -> Result<(), NrtError> {
        self.nrt.tensor_write(&self.tensors[g.ids], 0, &i32_bytes(ids.iter().copied()))?;
        self.nrt.tensor_write(&self.tensors[g.positions], 0, &i32_bytes(positions.iter().copied()))?;
        self.nrt.tensor_write(&self.tensors[g.seq_ids], 0, &i32_bytes(seq_ids.iter().copied()))?;
        if let Some(t) = g.last_index {
            self.nrt.tensor_write(&self.tensors[t], 0, &i32_bytes(lens.iter().map(|&l| l.saturating_sub(1))))?;
        }
        Ok(())
    }

    /// Reads graph `g`'s output: logits `batch × vocab` or token ids `batch`.
    fn read_output(&self, g: &Graph) -> Result<Vec<u8>, NrtError> {
        let size = match self.manifest.outputs {
            Outputs::Logits(_) => g.batch * self.manifest.vocab_size * 4,
            Outputs::Tokens(_) => g.batch * 4,
        };
        let mut buf = vec![0u8; size];
        self.nrt.tensor_read(&self.tensors[g.output], 0, &mut buf)?;
        Ok(buf)
    }

    /// Refuses what the graphs cannot return before any device work.
    fn check_logits_wanted(&self, plan: &StepPlan) -> Result<(), BackendError> {
        let tokens_out = matches!(self.manifest.outputs, Outputs::Tokens(_));
        for (i, s) in plan.seqs.iter().enumerate() {
            match s.logits {
                LogitsWanted::All if s.len > 1 => {
                    return Err(BackendError::Internal(format!(
                        "sequence {i}: logits for every token were asked, but the neuron graphs return only the last \
                         token's row (prompt_logits is false)"
                    )));
                }
                LogitsWanted::Last | LogitsWanted::All if tokens_out => {
                    return Err(BackendError::Internal(format!(
                        "sequence {i}: logits were asked, but the graphs sample on device and return token ids only \
                         (greedy)"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Backend for NeuronBackend {
    fn caps(&self) -> &BackendCaps {
        &self.caps
    }

    /// Executes every bucket once with dummy inputs (ids 0, positions from 0, every row on the pad
    /// slot, so no live slot's KV is touched), as NxD Inference's warmup does.
    fn warmup(&mut self) -> Result<WarmupReport, BackendError> {
        let start = Instant::now();
        let pad = self.manifest.pad_slot as u32;
        for g in &self.graphs {
            let ids = vec![0u32; g.batch * g.tokens];
            let positions: Vec<u32> = (0..g.batch).flat_map(|_| 0..g.tokens as u32).collect();
            let seq_ids = vec![pad; g.batch];
            let lens = vec![g.tokens as u32; g.batch];
            self.write_inputs(g, &ids, &positions, &seq_ids, &lens)?;
            self.run(g)?;
            self.read_output(g)?;
        }
        let report = WarmupReport { steps: self.graphs.len(), seconds: start.elapsed().as_secs_f64() };
        tracing::info!(steps = report.steps, seconds = report.seconds, "neuron warmup done");
        Ok(report)
    }

    fn execute(&mut self, plan: &StepPlan) -> Result<StepOutput, BackendError> {
        let (num_slots, max_len, vocab) = (self.manifest.num_slots, self.manifest.max_len, self.manifest.vocab_size);
        plan.validate(max_len, num_slots + 1, max_len, vocab)?;
        // `validate` admits the pad slot (the pool has num_slots + 1 rows); a live sequence there
        // would share its KV row with every padding row, so refuse it.
        if let Some((seq, s)) = plan.seqs.iter().enumerate().find(|(_, s)| s.block_table.contains(&(num_slots as u32)))
        {
            return Err(hearth_core::PlanError::BlockOutOfRange {
                seq,
                block: s.block_table[0],
                num_blocks: num_slots,
            }
            .into());
        }
        self.check_logits_wanted(plan)?;
        let choice = plan_shape(&self.caps, plan)?;
        let padded = PaddedBatch::new(plan, &choice, self.manifest.pad_slot as u32)?;
        let gi = *self.by_bucket.get(&padded.bucket).ok_or_else(|| {
            BackendError::Internal(format!("no graph loaded for {} (grid and graphs disagree)", padded.bucket))
        })?;
        let g = &self.graphs[gi];
        self.write_inputs(g, &padded.input_ids, &padded.positions, &padded.seq_ids, &padded.lens)?;
        self.run(g)?;
        let raw = self.read_output(g)?;
        let rows = padded.row_of_seq();
        let mut out = StepOutput { logits: Vec::new(), vocab, greedy: Vec::new() };
        match self.manifest.outputs {
            Outputs::Logits(_) => {
                let floats: Vec<f32> =
                    raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
                for (i, s) in plan.seqs.iter().enumerate() {
                    let row = &floats[rows[i] * vocab..(rows[i] + 1) * vocab];
                    match s.logits {
                        LogitsWanted::None => {}
                        LogitsWanted::Last | LogitsWanted::All => out.logits.extend_from_slice(row),
                        LogitsWanted::Greedy => out.greedy.push(argmax(row)),
                    }
                }
            }
            Outputs::Tokens(_) => {
                for (i, s) in plan.seqs.iter().enumerate() {
                    if s.logits == LogitsWanted::Greedy {
                        let at = rows[i] * 4;
                        let id = i32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
                        if id < 0 || id as usize >= vocab {
                            return Err(BackendError::Internal(format!(
                                "the graph returned token id {id} (vocab {vocab})"
                            )));
                        }
                        out.greedy.push(id as u32);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Drop for NeuronBackend {
    /// Sets first (they reference tensors), then models, then tensors, then the runtime.
    fn drop(&mut self) {
        for s in self.sets.drain(..) {
            self.nrt.destroy_tensor_set(s);
        }
        for m in self.models.drain(..) {
            if let Err(e) = self.nrt.unload(m) {
                tracing::warn!(error = %e, "nrt_unload failed");
            }
        }
        for t in self.tensors.drain(..) {
            self.nrt.tensor_free(t);
        }
        if self.initialized {
            self.nrt.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_cores_must_be_one_core_or_a_contiguous_range() {
        assert_eq!(parse_visible_cores("3").unwrap(), (3, 3));
        assert_eq!(parse_visible_cores("3-6").unwrap(), (3, 6));
        for bad in ["", "a", "6-3", "1,2", "1-", "-2", "1-2-3"] {
            assert!(matches!(parse_visible_cores(bad), Err(NeuronError::Options(_))), "{bad}");
        }
    }

    #[test]
    fn ids_are_written_as_little_endian_int32() {
        assert_eq!(i32_bytes([1, 258]), vec![1, 0, 0, 0, 2, 1, 0, 0]);
    }
}
