//! `manifest.json`: what an operator exports next to the per-bucket NEFFs on a Neuron SDK host.
//!
//! The Rust side never parses NxD Inference's TorchScript `model.pt`. Instead the operator, after
//! compiling with AWS's tools (`neuronx-cc` / NxD Inference compile-only), copies one NEFF per
//! bucket and writes this manifest, naming each graph input and output by role. See README.md for
//! an example. Written from the documented API; checked only against mock-nrt here.
//!
//! Guarantees after [`Manifest::load`] / [`Manifest::from_json`]: sizes are positive; every
//! bucket file (and every state file) exists relative to the manifest's directory; no bucket is
//! listed twice; the prefill buckets and the decode buckets each form a full cross product (the
//! only grid [`BucketGrid`] can express: `cross(tokens × batches, batches × kv_lens)` — a sparse
//! grid is refused with an error that says so); no bucket exceeds `max_len`; `pad_slot ==
//! num_slots` (the extra KV row padding rows write); `tp_degree == 1`; tensor names are non-empty,
//! NUL-free and distinct.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use hearth_core::{Bucket, BucketGrid, DecodeBucket, FitRule, PrefillBucket};
use serde::Deserialize;

/// The only manifest format this crate reads.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Model name, for logs.
    pub model: String,
    pub vocab_size: usize,
    /// KV slots live sequences may use (`0..num_slots`).
    pub num_slots: usize,
    /// Positions per slot: the longest context.
    pub max_len: usize,
    /// The extra KV row padding rows write to; must equal `num_slots`.
    pub pad_slot: usize,
    /// Tensor-parallel degree; only 1 is supported here.
    pub tp_degree: u32,
    /// Logical NeuronCore size the NEFFs were compiled for (`--lnc`).
    pub lnc: u32,
    pub sampling: Sampling,
    pub fit: Fit,
    pub buckets: Vec<BucketEntry>,
    pub inputs: Inputs,
    pub outputs: Outputs,
    /// Persistent tensors (weights, KV caches): allocated once, bound under their name in every
    /// bucket's input and output tensor set.
    #[serde(default)]
    pub state: Vec<StateEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The graphs return logits; the host samples.
    Logits,
    /// Greedy only (host argmax over logits, or an on-device `tokens` output).
    Greedy,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Fit {
    AtLeast,
    StrictlyAbove,
}

impl From<Fit> for FitRule {
    fn from(f: Fit) -> Self {
        match f {
            Fit::AtLeast => FitRule::AtLeast,
            Fit::StrictlyAbove => FitRule::StrictlyAbove,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BucketEntry {
    Prefill { tokens: usize, batch: usize, neff: PathBuf },
    Decode { batch: usize, kv_len: usize, neff: PathBuf },
}

impl BucketEntry {
    pub fn bucket(&self) -> Bucket {
        match *self {
            BucketEntry::Prefill { tokens, batch, .. } => Bucket::Prefill(PrefillBucket { tokens, batch }),
            BucketEntry::Decode { batch, kv_len, .. } => Bucket::Decode(DecodeBucket { batch, kv_len }),
        }
    }

    /// The NEFF path as written in the manifest (relative to its directory).
    pub fn neff(&self) -> &Path {
        match self {
            BucketEntry::Prefill { neff, .. } | BucketEntry::Decode { neff, .. } => neff,
        }
    }
}

/// Graph input names by role. All are int32 tensors.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// `[batch, tokens]` token ids.
    pub input_ids: String,
    /// `[batch, tokens]` positions.
    pub positions: String,
    /// `[batch]` KV slot of each row.
    pub seq_ids: String,
    /// `[batch]` index of each row's last real token (prefill graphs only).
    pub last_index: String,
}

/// The graph output by role: `{"logits": name}` (`[batch, vocab]` float32, the last token's row)
/// or `{"tokens": name}` (`[batch]` int32, on-device greedy).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outputs {
    Logits(String),
    Tokens(String),
}

impl Outputs {
    pub fn name(&self) -> &str {
        match self {
            Outputs::Logits(n) | Outputs::Tokens(n) => n,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StateEntry {
    pub name: String,
    /// Raw bytes written once at load (weights, KV initial value), relative to the manifest.
    #[serde(default)]
    pub file: Option<PathBuf>,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("manifest format {0} is not supported (this build reads format {MANIFEST_FORMAT})")]
    Format(u32),
    #[error("tp_degree {0} is not supported: this backend drives one NeuronCore group per process (tp_degree 1)")]
    TpDegree(u32),
    #[error("{0} must be positive")]
    Zero(String),
    #[error("{0} does not fit the graphs' int32 inputs")]
    TooLarge(&'static str),
    #[error("pad_slot must equal num_slots ({num_slots}, the extra KV row), got {pad_slot}")]
    PadSlot { pad_slot: usize, num_slots: usize },
    #[error("the manifest lists no {0} bucket")]
    NoBuckets(&'static str),
    #[error("bucket {0} is listed twice")]
    DuplicateBucket(Bucket),
    #[error("{bucket} exceeds max_len {max_len}")]
    BeyondMaxLen { bucket: Bucket, max_len: usize },
    #[error("{what} file {path} does not exist")]
    MissingFile { what: String, path: PathBuf },
    #[error(
        "the {kind} buckets are not a full cross product ({missing} is missing): hearth's bucket grid is \
         `lengths × batches`, so compile every combination or drop the odd bucket"
    )]
    NotCross { kind: &'static str, missing: Bucket },
    #[error("tensor name '{0}' is invalid (empty or holds a NUL)")]
    BadName(String),
    #[error("tensor name '{0}' is used for two roles")]
    DuplicateName(String),
    #[error("state '{name}': file {path} holds {found} bytes, the manifest says {bytes}")]
    StateFileSize { name: String, path: PathBuf, found: u64, bytes: usize },
    #[error("sampling \"logits\" needs a \"logits\" output (an on-device \"tokens\" output is greedy only)")]
    SamplingOutput,
    #[error("grid: {0}")]
    Grid(#[from] hearth_core::GridError),
}

impl Manifest {
    /// Reads and validates `path`; relative paths resolve against its directory.
    pub fn load(path: &Path) -> Result<(Manifest, PathBuf), ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io { path: path.into(), source })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let m = Self::from_json(&text, &dir).map_err(|e| match e {
            ManifestError::Json { source, .. } => ManifestError::Json { path: path.into(), source },
            e => e,
        })?;
        Ok((m, dir))
    }

    /// Parses and validates manifest text whose relative paths resolve against `dir`.
    pub fn from_json(text: &str, dir: &Path) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_str(text)
            .map_err(|source| ManifestError::Json { path: PathBuf::from("manifest"), source })?;
        m.validate(dir)?;
        Ok(m)
    }

    fn validate(&self, dir: &Path) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        if self.tp_degree != 1 {
            return Err(ManifestError::TpDegree(self.tp_degree));
        }
        for (what, v) in [
            ("vocab_size", self.vocab_size),
            ("num_slots", self.num_slots),
            ("max_len", self.max_len),
            ("lnc", self.lnc as usize),
        ] {
            if v == 0 {
                return Err(ManifestError::Zero(what.into()));
            }
        }
        for (what, v) in [("vocab_size", self.vocab_size), ("max_len", self.max_len), ("num_slots", self.num_slots)] {
            if v >= i32::MAX as usize {
                return Err(ManifestError::TooLarge(what));
            }
        }
        if self.pad_slot != self.num_slots {
            return Err(ManifestError::PadSlot { pad_slot: self.pad_slot, num_slots: self.num_slots });
        }
        if self.sampling == Sampling::Logits && matches!(self.outputs, Outputs::Tokens(_)) {
            return Err(ManifestError::SamplingOutput);
        }
        self.validate_buckets(dir)?;
        self.validate_names()?;
        for s in &self.state {
            if s.bytes == 0 {
                return Err(ManifestError::Zero(format!("state '{}' bytes", s.name)));
            }
            if let Some(f) = &s.file {
                let path = dir.join(f);
                let found = std::fs::metadata(&path)
                    .map_err(|_| ManifestError::MissingFile {
                        what: format!("state '{}'", s.name),
                        path: path.clone(),
                    })?
                    .len();
                if found != s.bytes as u64 {
                    return Err(ManifestError::StateFileSize { name: s.name.clone(), path, found, bytes: s.bytes });
                }
            }
        }
        self.grid()?;
        Ok(())
    }

    fn validate_buckets(&self, dir: &Path) -> Result<(), ManifestError> {
        let mut seen = HashSet::new();
        for b in &self.buckets {
            let bucket = b.bucket();
            let (x, y) = match bucket {
                Bucket::Prefill(p) => (p.tokens, p.batch),
                Bucket::Decode(d) => (d.batch, d.kv_len),
            };
            if x == 0 || y == 0 {
                return Err(ManifestError::Zero(format!("every size of {bucket}")));
            }
            let len = match bucket {
                Bucket::Prefill(p) => p.tokens,
                Bucket::Decode(d) => d.kv_len,
            };
            if len > self.max_len {
                return Err(ManifestError::BeyondMaxLen { bucket, max_len: self.max_len });
            }
            if !seen.insert(bucket) {
                return Err(ManifestError::DuplicateBucket(bucket));
            }
            let path = dir.join(b.neff());
            if !path.is_file() {
                return Err(ManifestError::MissingFile { what: format!("NEFF of {bucket}"), path });
            }
        }
        Ok(())
    }

    fn validate_names(&self) -> Result<(), ManifestError> {
        let roles = [
            self.inputs.input_ids.as_str(),
            &self.inputs.positions,
            &self.inputs.seq_ids,
            &self.inputs.last_index,
            self.outputs.name(),
        ];
        let mut seen = HashSet::new();
        for name in roles.into_iter().chain(self.state.iter().map(|s| s.name.as_str())) {
            if name.is_empty() || name.contains('\0') || name.len() >= crate::sys::NRT_TENSOR_NAME_MAX {
                return Err(ManifestError::BadName(name.into()));
            }
            if !seen.insert(name) {
                return Err(ManifestError::DuplicateName(name.into()));
            }
        }
        Ok(())
    }

    /// Absolute (or cwd-relative) path of a bucket's NEFF.
    pub fn neff_path(&self, dir: &Path, entry: &BucketEntry) -> PathBuf {
        dir.join(entry.neff())
    }

    /// The bucket grid; refuses buckets that are not a full cross product per kind.
    pub fn grid(&self) -> Result<BucketGrid, ManifestError> {
        let mut p_tokens = BTreeSet::new();
        let mut p_batches = BTreeSet::new();
        let mut d_batches = BTreeSet::new();
        let mut kv_lens = BTreeSet::new();
        let listed: HashSet<Bucket> = self.buckets.iter().map(BucketEntry::bucket).collect();
        for b in &listed {
            match *b {
                Bucket::Prefill(p) => {
                    p_tokens.insert(p.tokens);
                    p_batches.insert(p.batch);
                }
                Bucket::Decode(d) => {
                    d_batches.insert(d.batch);
                    kv_lens.insert(d.kv_len);
                }
            }
        }
        if p_tokens.is_empty() {
            return Err(ManifestError::NoBuckets("prefill"));
        }
        if d_batches.is_empty() {
            return Err(ManifestError::NoBuckets("decode"));
        }
        for &batch in &p_batches {
            for &tokens in &p_tokens {
                let missing = Bucket::Prefill(PrefillBucket { tokens, batch });
                if !listed.contains(&missing) {
                    return Err(ManifestError::NotCross { kind: "prefill", missing });
                }
            }
        }
        for &batch in &d_batches {
            for &kv_len in &kv_lens {
                let missing = Bucket::Decode(DecodeBucket { batch, kv_len });
                if !listed.contains(&missing) {
                    return Err(ManifestError::NotCross { kind: "decode", missing });
                }
            }
        }
        let v = |s: &BTreeSet<usize>| s.iter().copied().collect::<Vec<_>>();
        Ok(BucketGrid::cross(&v(&p_tokens), &v(&p_batches), &v(&d_batches), &v(&kv_lens), self.fit.into())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A temp dir holding empty placeholder files for the synthetic manifests below (the manifest
    /// only checks that bucket files exist; their contents are checked at load).
    fn dir(tag: &str, files: &[&str]) -> Dir {
        let d = std::env::temp_dir().join(format!("hearth-neuron-manifest-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for f in files {
            std::fs::write(d.join(f), b"").unwrap();
        }
        Dir(d)
    }

    fn synthetic(buckets: &str, extra: &str) -> String {
        format!(
            r#"{{ "format": 1, "model": "synthetic", "vocab_size": 32, "num_slots": 4, "max_len": 64,
                "pad_slot": 4, "tp_degree": 1, "lnc": 1, "sampling": "logits", "fit": "at_least",
                "buckets": [{buckets}],
                "inputs": {{ "input_ids": "ids", "positions": "pos", "seq_ids": "seq", "last_index": "last" }},
                "outputs": {{ "logits": "logits" }}{extra} }}"#
        )
    }

    const FULL: &str = r#"
        { "kind": "prefill", "tokens": 16, "batch": 1, "neff": "p16.neff" },
        { "kind": "prefill", "tokens": 32, "batch": 1, "neff": "p32.neff" },
        { "kind": "decode", "batch": 1, "kv_len": 32, "neff": "d1_32.neff" },
        { "kind": "decode", "batch": 1, "kv_len": 64, "neff": "d1_64.neff" },
        { "kind": "decode", "batch": 4, "kv_len": 32, "neff": "d4_32.neff" },
        { "kind": "decode", "batch": 4, "kv_len": 64, "neff": "d4_64.neff" }"#;

    const FILES: &[&str] = &["p16.neff", "p32.neff", "d1_32.neff", "d1_64.neff", "d4_32.neff", "d4_64.neff"];

    #[test]
    fn a_full_grid_parses() {
        let d = dir("full", FILES);
        let m = Manifest::from_json(&synthetic(FULL, ""), &d.0).unwrap();
        let g = m.grid().unwrap();
        assert_eq!(g.buckets().count(), 6);
        assert_eq!((g.max_prefill_tokens(), g.max_decode_batch(), g.max_kv_len()), (32, 4, 64));
        assert_eq!(m.outputs, Outputs::Logits("logits".into()));
        assert_eq!(m.neff_path(&d.0, &m.buckets[0]), d.0.join("p16.neff"));
    }

    #[test]
    fn load_resolves_paths_against_the_manifest_directory() {
        let d = dir("load", FILES);
        std::fs::write(d.0.join("weights.bin"), [0u8; 8]).unwrap();
        let text = synthetic(FULL, r#", "state": [ { "name": "w", "file": "weights.bin", "bytes": 8 } ]"#);
        std::fs::write(d.0.join("manifest.json"), text).unwrap();
        let (m, base) = Manifest::load(&d.0.join("manifest.json")).unwrap();
        assert_eq!(base, d.0);
        assert_eq!(m.state[0].file.as_deref(), Some(Path::new("weights.bin")));
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let d = dir("refuse", FILES);
        let err = |text: String| Manifest::from_json(&text, &d.0).unwrap_err();
        let e = err(synthetic(&FULL.replace("d4_64.neff", "missing.neff"), ""));
        assert!(matches!(e, ManifestError::MissingFile { .. }), "{e}");
        let e = err(synthetic(
            &format!("{FULL}, {{ \"kind\": \"decode\", \"batch\": 4, \"kv_len\": 64, \"neff\": \"p16.neff\" }}"),
            "",
        ));
        assert!(matches!(e, ManifestError::DuplicateBucket(_)), "{e}");
        let e = err(synthetic(&FULL.replace("\"tokens\": 32", "\"tokens\": 0"), ""));
        assert!(matches!(e, ManifestError::Zero(_)), "{e}");
        let e = err(synthetic(&FULL.replace("\"kv_len\": 64", "\"kv_len\": 128"), ""));
        assert!(matches!(e, ManifestError::BeyondMaxLen { max_len: 64, .. }), "{e}");
        let e = err(synthetic(FULL, "").replace("\"tp_degree\": 1", "\"tp_degree\": 8"));
        assert!(matches!(e, ManifestError::TpDegree(8)), "{e}");
        assert!(e.to_string().contains("tp_degree 1"));
        let e = err(synthetic(FULL, "").replace("\"pad_slot\": 4", "\"pad_slot\": 0"));
        assert!(matches!(e, ManifestError::PadSlot { .. }), "{e}");
        let e = err(synthetic(FULL, "").replace("\"format\": 1", "\"format\": 2"));
        assert!(matches!(e, ManifestError::Format(2)), "{e}");
        let e = err(synthetic(FULL, "").replace("\"pos\"", "\"ids\""));
        assert!(matches!(e, ManifestError::DuplicateName(_)), "{e}");
        let e = err(synthetic(FULL, "").replace("{ \"logits\": \"logits\" }", "{ \"tokens\": \"t\" }"));
        assert!(matches!(e, ManifestError::SamplingOutput), "{e}");
        let e = err(synthetic(FULL, ", \"state\": [ { \"name\": \"kv\", \"bytes\": 0 } ]"));
        assert!(matches!(e, ManifestError::Zero(_)), "{e}");
        let e = err(synthetic(FULL, ", \"state\": [ { \"name\": \"w\", \"file\": \"p16.neff\", \"bytes\": 4 } ]"));
        assert!(matches!(e, ManifestError::StateFileSize { found: 0, bytes: 4, .. }), "{e}");
        let e = err(synthetic(FULL, ", \"typo\": 1"));
        assert!(matches!(e, ManifestError::Json { .. }), "{e}");
        let only_prefill = r#"{ "kind": "prefill", "tokens": 16, "batch": 1, "neff": "p16.neff" }"#;
        assert!(matches!(err(synthetic(only_prefill, "")), ManifestError::NoBuckets("decode")));
    }

    #[test]
    fn a_sparse_grid_is_refused_with_a_reason() {
        let d = dir("sparse", FILES);
        let sparse = FULL.replace(
            r#",
        { "kind": "decode", "batch": 4, "kv_len": 64, "neff": "d4_64.neff" }"#,
            "",
        );
        let e = Manifest::from_json(&synthetic(&sparse, ""), &d.0).unwrap_err();
        match &e {
            ManifestError::NotCross { kind: "decode", missing } => {
                assert_eq!(*missing, Bucket::Decode(DecodeBucket { batch: 4, kv_len: 64 }))
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("cross product"));
    }

    #[test]
    fn greedy_with_on_device_tokens_parses() {
        let d = dir("greedy", FILES);
        let text = synthetic(FULL, "")
            .replace("\"sampling\": \"logits\"", "\"sampling\": \"greedy\"")
            .replace("\"fit\": \"at_least\"", "\"fit\": \"strictly_above\"")
            .replace("{ \"logits\": \"logits\" }", "{ \"tokens\": \"next\" }");
        let m = Manifest::from_json(&text, &d.0).unwrap();
        assert_eq!((m.sampling, m.fit), (Sampling::Greedy, Fit::StrictlyAbove));
        assert_eq!(m.grid().unwrap().fit, FitRule::StrictlyAbove);
    }
}
