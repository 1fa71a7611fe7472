//! NeuronBackend against mock-nrt (`tests/mock_nrt/lib.rs`), a std-only stand-in for libnrt built
//! here with rustc. These tests check the plumbing only — call order, tensor binding, padding,
//! retries and error mapping — over SYNTHETIC NEFFs (a NEFF header plus a JSON body the mock
//! reads). They are not Neuron tests and prove nothing about Trainium or Inferentia hardware.
//!
//! Isolation: each test copies the mock library to its own directory, so the dynamic loader gives
//! it fresh state; tests still run one at a time because `NEURON_RT_VISIBLE_CORES` is process
//! environment.
#![allow(unsafe_code)] // opens mock-nrt's test controls through libloading

use std::ffi::{CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use hearth_core::{Backend, BackendError, KvLayout, LogitsWanted, SamplingSupport, ShapePolicy, StepPlan, argmax};
use hearth_neuron::neff::synthetic_header;
use hearth_neuron::{NeuronBackend, NeuronError, NeuronOptions};
use serde_json::json;

const VOCAB: usize = 32;
const NUM_SLOTS: usize = 4;
const MAX_LEN: usize = 32;
const PAD: usize = NUM_SLOTS;
/// Bytes of the synthetic "kv" state: one u32 counter per slot, pad slot included.
const KV_BYTES: usize = (NUM_SLOTS + 1) * 4;
const PREFILL: [(usize, usize); 2] = [(8, 1), (16, 1)]; // (tokens, batch)
const DECODE: [(usize, usize); 4] = [(1, 16), (1, 32), (4, 16), (4, 32)]; // (batch, kv_len)

/// Builds mock-nrt once per test binary.
fn mock_library() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mock-nrt-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libmock_nrt.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mock_nrt/lib.rs");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let res = Command::new(&rustc)
            .args(["--edition", "2024", "--crate-type", "cdylib", "-O", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
        assert!(res.status.success(), "building mock-nrt failed:\n{}", String::from_utf8_lossy(&res.stderr));
        out
    })
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy)]
struct Toy {
    /// On-device greedy: a "tokens" output instead of "logits".
    tokens_out: bool,
    /// The lnc the manifest claims (the synthetic NEFFs record 1).
    manifest_lnc: u32,
    /// The "kv" size the manifest claims.
    manifest_kv_bytes: usize,
}

const TOY: Toy = Toy { tokens_out: false, manifest_lnc: 1, manifest_kv_bytes: KV_BYTES };

/// A temp dir with a private copy of mock-nrt, SYNTHETIC NEFFs and a manifest; and the mock's
/// test controls.
struct Fixture {
    dir: PathBuf,
    lib: PathBuf,
    ctl: libloading::Library,
    _serial: MutexGuard<'static, ()>,
}

fn tensor(name: &str, usage: u32, size: usize, dtype: u32, shape: &[usize]) -> serde_json::Value {
    json!({ "name": name, "usage": usage, "size": size, "dtype": dtype, "shape": shape })
}

/// A SYNTHETIC NEFF for the mock: a header naming `name` plus a JSON body with the toy graph.
fn synthetic_neff(name: &str, prefill: bool, batch: usize, tokens: usize, toy: Toy) -> Vec<u8> {
    let (i32_, u32_, f32_, u8_) = (8, 9, 10, 3);
    let mut ts = vec![
        tensor("input_ids", 0, batch * tokens * 4, i32_, &[batch, tokens]),
        tensor("position_ids", 0, batch * tokens * 4, i32_, &[batch, tokens]),
        tensor("seq_ids", 0, batch * 4, i32_, &[batch]),
        tensor("kv", 0, KV_BYTES, u32_, &[NUM_SLOTS + 1]),
        tensor("weights", 0, 16, u8_, &[16]),
        tensor("kv", 1, KV_BYTES, u32_, &[NUM_SLOTS + 1]),
    ];
    if prefill {
        ts.push(tensor("last_index", 0, batch * 4, i32_, &[batch]));
    }
    let out = if toy.tokens_out {
        ts.push(tensor("next_token", 1, batch * 4, i32_, &[batch]));
        "next_token"
    } else {
        ts.push(tensor("logits", 1, batch * VOCAB * 4, f32_, &[batch, VOCAB]));
        "logits"
    };
    let body = json!({
        "kind": if prefill { "prefill" } else { "decode" },
        "batch": batch, "tokens": tokens, "vocab": VOCAB,
        "out_kind": if toy.tokens_out { "tokens" } else { "logits" },
        "roles": { "input_ids": "input_ids", "last_index": "last_index", "seq_ids": "seq_ids", "kv": "kv", "out": out },
        "tensors": ts,
    })
    .to_string();
    let mut f = synthetic_header(name, body.len() as u64, 1).to_vec();
    f.extend_from_slice(body.as_bytes());
    f
}

impl Fixture {
    fn new(tag: &str, toy: Toy) -> Self {
        let guard = serial();
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mock-nrt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libnrt.so.1");
        std::fs::copy(mock_library(), &lib).unwrap();

        let mut buckets = Vec::new();
        for (tokens, batch) in PREFILL {
            let file = format!("prefill_t{tokens}_b{batch}.neff");
            let name = format!("synthetic_prefill_t{tokens}_b{batch}");
            std::fs::write(dir.join(&file), synthetic_neff(&name, true, batch, tokens, toy)).unwrap();
            buckets.push(json!({ "kind": "prefill", "tokens": tokens, "batch": batch, "neff": file }));
        }
        for (batch, kv_len) in DECODE {
            let file = format!("decode_b{batch}_kv{kv_len}.neff");
            let name = format!("synthetic_decode_b{batch}_kv{kv_len}");
            std::fs::write(dir.join(&file), synthetic_neff(&name, false, batch, 1, toy)).unwrap();
            buckets.push(json!({ "kind": "decode", "batch": batch, "kv_len": kv_len, "neff": file }));
        }
        std::fs::write(dir.join("weights.bin"), (0u8..16).collect::<Vec<_>>()).unwrap();
        let manifest = json!({
            "format": 1, "model": "synthetic-toy", "vocab_size": VOCAB, "num_slots": NUM_SLOTS,
            "max_len": MAX_LEN, "pad_slot": PAD, "tp_degree": 1, "lnc": toy.manifest_lnc,
            "sampling": if toy.tokens_out { "greedy" } else { "logits" }, "fit": "at_least",
            "buckets": buckets,
            "inputs": { "input_ids": "input_ids", "positions": "position_ids", "seq_ids": "seq_ids", "last_index": "last_index" },
            "outputs": if toy.tokens_out { json!({ "tokens": "next_token" }) } else { json!({ "logits": "logits" }) },
            "state": [ { "name": "kv", "bytes": toy.manifest_kv_bytes }, { "name": "weights", "file": "weights.bin", "bytes": 16 } ],
        });
        std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
        // SAFETY: the library is mock-nrt, built above from this crate's test sources.
        let ctl = unsafe { libloading::Library::new(&lib) }.unwrap();
        Fixture { dir, lib, ctl, _serial: guard }
    }

    fn options(&self) -> NeuronOptions {
        NeuronOptions { library: Some(self.lib.clone()), ..NeuronOptions::new(self.dir.join("manifest.json")) }
    }

    fn load(&self) -> NeuronBackend {
        NeuronBackend::load(&self.options()).expect("load over mock-nrt")
    }

    fn take_log(&self) -> Vec<String> {
        // SAFETY: mock-nrt's documented signature.
        let f = unsafe { self.ctl.get::<unsafe extern "C" fn(*mut u8, usize) -> usize>(b"mock_nrt_take_log") }.unwrap();
        // SAFETY: a null buffer only asks for the size.
        let n = unsafe { f(std::ptr::null_mut(), 0) };
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` holds `n` writable bytes.
        unsafe { f(buf.as_mut_ptr(), n) };
        String::from_utf8(buf).unwrap().lines().map(str::to_string).collect()
    }

    fn inject(&self, call: &str, status: c_int, times: u32) {
        // SAFETY: mock-nrt's documented signature.
        let f = unsafe { self.ctl.get::<unsafe extern "C" fn(*const c_char, c_int, u32)>(b"mock_nrt_inject") }.unwrap();
        let c = CString::new(call).unwrap();
        // SAFETY: `c` is NUL-terminated and outlives the call.
        unsafe { f(c.as_ptr(), status, times) }
    }

    fn read_tensor(&self, name: &str) -> Option<Vec<u8>> {
        type ReadFn = unsafe extern "C" fn(*const c_char, *mut u8, usize) -> isize;
        // SAFETY: mock-nrt's documented signature.
        let f = unsafe { self.ctl.get::<ReadFn>(b"mock_nrt_read_tensor") }.unwrap();
        let c = CString::new(name).unwrap();
        // SAFETY: a null buffer only asks for the size.
        let n = usize::try_from(unsafe { f(c.as_ptr(), std::ptr::null_mut(), 0) }).ok()?;
        let mut buf = vec![0u8; n];
        // SAFETY: `buf` holds `n` writable bytes.
        unsafe { f(c.as_ptr(), buf.as_mut_ptr(), n) };
        Some(buf)
    }

    fn kv_counters(&self) -> Vec<u32> {
        let b = self.read_tensor("kv").expect("kv state tensor");
        b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn visible_cores(&self) -> Option<String> {
        // SAFETY: mock-nrt's documented signature.
        let f = unsafe { self.ctl.get::<unsafe extern "C" fn(*mut u8, usize) -> isize>(b"mock_nrt_visible_cores") }
            .unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: `buf` holds 64 writable bytes.
        let n = usize::try_from(unsafe { f(buf.as_mut_ptr(), buf.len()) }).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    fn live_handles(&self) -> usize {
        // SAFETY: mock-nrt's documented signature.
        let f = unsafe { self.ctl.get::<unsafe extern "C" fn() -> usize>(b"mock_nrt_live_handles") }.unwrap();
        // SAFETY: no arguments.
        unsafe { f() }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn call(line: &str) -> &str {
    line.split(['!', ' ']).next().unwrap()
}

fn count(log: &[String], name: &str) -> usize {
    log.iter().filter(|l| call(l) == name).count()
}

fn first(log: &[String], name: &str) -> usize {
    log.iter().position(|l| call(l) == name).unwrap_or_else(|| panic!("{name} not in log"))
}

fn last(log: &[String], name: &str) -> usize {
    log.iter().rposition(|l| call(l) == name).unwrap_or_else(|| panic!("{name} not in log"))
}

fn unavailable(e: BackendError) -> String {
    match e {
        BackendError::Unavailable(m) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

fn decode_plan(seqs: &[(u32, usize, u32)], want: LogitsWanted) -> StepPlan {
    let mut p = StepPlan::default();
    for &(token, cached, slot) in seqs {
        p.push(&[token], cached, vec![slot], want);
    }
    p
}

#[test]
fn call_sequence_runs_from_init_to_close() {
    let fx = Fixture::new("sequence", TOY);
    // SAFETY: the mock tests run one at a time (`serial`), and nothing else in this test binary
    // reads the environment meanwhile.
    unsafe { std::env::set_var("NEURON_RT_VISIBLE_CORES", "1-2") };
    let loaded = NeuronBackend::load(&fx.options());
    unsafe { std::env::remove_var("NEURON_RT_VISIBLE_CORES") };
    let mut be = loaded.unwrap();
    assert_eq!(fx.visible_cores().as_deref(), Some("1-2"), "NEURON_RT_VISIBLE_CORES is set before nrt_init");

    let caps = be.caps().clone();
    assert_eq!(caps.name, "neuron");
    assert_eq!(caps.kv, KvLayout::Slots { num_slots: NUM_SLOTS, max_len: MAX_LEN });
    assert_eq!((caps.max_context, caps.max_batch_tokens, caps.vocab_size), (MAX_LEN, 16, VOCAB));
    assert!(!caps.mixed_prefill_decode && !caps.chunked_prefill && !caps.prefix_cache && !caps.preemption);
    assert!(!caps.prompt_logits);
    assert_eq!(caps.sampling, SamplingSupport::Logits);
    let ShapePolicy::Bucketed(grid) = &caps.shapes else { panic!("bucketed") };
    assert_eq!(grid.buckets().count(), 6);
    assert_eq!(fx.read_tensor("weights").unwrap(), (0u8..16).collect::<Vec<_>>(), "state file written at load");

    let report = be.warmup().unwrap();
    assert_eq!(report.steps, 6);
    be.execute(&StepPlan::single(vec![1, 2, 3], 0, vec![0], LogitsWanted::Last)).unwrap();
    drop(be);
    assert_eq!(fx.live_handles(), 0, "every tensor, set, model and info array is released");

    let log = fx.take_log();
    assert!(log.iter().all(|l| !l.contains('!')), "no call failed: {log:?}");
    assert_eq!(call(&log[0]), "nrt_init");
    assert_eq!(call(log.last().unwrap()), "nrt_close");
    assert_eq!(count(&log, "nrt_load"), 6);
    assert_eq!(count(&log, "nrt_get_model_tensor_info"), 6);
    assert_eq!(count(&log, "nrt_free_model_tensor_info"), 6);
    // 2 state tensors once + per bucket ids, positions, seq_ids, output (+ last_index for prefill).
    assert_eq!(count(&log, "nrt_tensor_allocate"), 2 + 2 * 5 + 4 * 4);
    assert_eq!(count(&log, "nrt_allocate_tensor_set"), 12);
    // Inputs: 3 (+1 prefill) roles + 2 states; outputs: 1 + 2 states.
    assert_eq!(count(&log, "nrt_add_tensor_to_tensor_set"), 2 * (6 + 3) + 4 * (5 + 3));
    assert_eq!(count(&log, "nrt_execute"), 7);
    assert_eq!(count(&log, "nrt_unload"), 6);
    assert_eq!(count(&log, "nrt_tensor_free"), 28);
    assert_eq!(count(&log, "nrt_destroy_tensor_set"), 12);
    for i in 0..log.len() {
        if call(&log[i]) == "nrt_load" {
            assert_eq!(call(&log[i + 1]), "nrt_get_model_tensor_info", "tensor info right after each load");
        }
    }
    assert!(last(&log, "nrt_load") < first(&log, "nrt_tensor_allocate"));
    assert!(last(&log, "nrt_tensor_allocate") < first(&log, "nrt_execute"));
    assert!(last(&log, "nrt_add_tensor_to_tensor_set") < first(&log, "nrt_execute"));
    // Warmup runs every bucket once, then the step runs the 8-token prefill.
    let execs: Vec<&str> = log.iter().filter(|l| call(l) == "nrt_execute").map(|l| &l[12..]).collect();
    let mut warm: Vec<&str> = execs[..6].to_vec();
    warm.sort();
    let mut all: Vec<String> = PREFILL
        .iter()
        .map(|(t, b)| format!("synthetic_prefill_t{t}_b{b}"))
        .chain(DECODE.iter().map(|(b, k)| format!("synthetic_decode_b{b}_kv{k}")))
        .collect();
    all.sort();
    assert_eq!(warm, all);
    assert_eq!(execs[6], "synthetic_prefill_t8_b1");
    let exec = last(&log, "nrt_execute");
    assert_eq!(call(&log[exec + 1]), "nrt_tensor_read", "the output is read after execute");
    // Teardown order: destroy sets (they reference tensors), unload models, free tensors, close.
    assert!(last(&log, "nrt_tensor_read") < first(&log, "nrt_destroy_tensor_set"));
    assert!(last(&log, "nrt_destroy_tensor_set") < first(&log, "nrt_unload"));
    assert!(last(&log, "nrt_unload") < first(&log, "nrt_tensor_free"));
    assert!(last(&log, "nrt_tensor_free") < first(&log, "nrt_close"));
}

#[test]
fn greedy_generation_follows_the_toy_model() {
    let fx = Fixture::new("greedy", TOY);
    let mut be = fx.load();
    be.warmup().unwrap();
    fx.take_log();

    let prompt = [3, 9, 4, 7, 20];
    let out = be.execute(&StepPlan::single(prompt.to_vec(), 0, vec![2], LogitsWanted::Greedy)).unwrap();
    assert_eq!(out.greedy, vec![21], "prefill: last prompt token + 1");
    assert!(out.logits.is_empty());
    let mut tokens = vec![out.greedy[0]];
    // Each decode feeds the last token; `cached` is the context before it.
    for cached in prompt.len()..prompt.len() + 12 {
        let t = *tokens.last().unwrap();
        let out = be.execute(&decode_plan(&[(t, cached, 2)], LogitsWanted::Greedy)).unwrap();
        tokens.push(out.greedy[0]);
    }
    let expected: Vec<u32> = (0..13).map(|i| (21 + i) % VOCAB as u32).collect();
    assert_eq!(tokens, expected);

    let log = fx.take_log();
    let execs: Vec<&str> = log.iter().filter(|l| call(l) == "nrt_execute").map(|l| &l[12..]).collect();
    assert_eq!(execs[0], "synthetic_prefill_t8_b1");
    // Contexts 6..=16 fit kv_len 16; 17 and 18 need the 32 bucket.
    assert!(execs[1..12].iter().all(|e| *e == "synthetic_decode_b1_kv16"), "{execs:?}");
    assert!(execs[12..].iter().all(|e| *e == "synthetic_decode_b1_kv32"), "{execs:?}");
    let kv = fx.kv_counters();
    assert_eq!(kv[2], 13, "slot 2 written by the prefill and 12 decodes");
    assert_eq!((kv[0], kv[1], kv[3]), (0, 0, 0));
}

#[test]
fn padding_rows_write_only_the_pad_slot_and_outputs_return_in_plan_order() {
    let fx = Fixture::new("padding", TOY);
    let mut be = fx.load();
    be.warmup().unwrap();
    let warm_pad: u32 = (PREFILL.iter().map(|p| p.1).sum::<usize>() + DECODE.iter().map(|d| d.0).sum::<usize>()) as u32;
    assert_eq!(fx.kv_counters(), vec![0, 0, 0, 0, warm_pad], "warmup touches only the pad slot");

    // Slot 3 first in plan order, slot 0 second: rows are sorted by slot and padded to batch 4.
    let out = be.execute(&decode_plan(&[(10, 6, 3), (4, 2, 0)], LogitsWanted::Last)).unwrap();
    assert_eq!(out.rows(), 2);
    assert_eq!(argmax(out.row(0)), 11, "row 0 belongs to plan sequence 0 (slot 3)");
    assert_eq!(argmax(out.row(1)), 5);
    assert_eq!(out.row(0).iter().filter(|&&v| v != 0.0).count(), 1, "one-hot");
    assert_eq!(fx.kv_counters(), vec![1, 0, 0, 1, warm_pad + 2], "2 padding rows hit only the pad slot");

    // None gives no row; Greedy and Last mix.
    let mut p = decode_plan(&[(1, 3, 1)], LogitsWanted::None);
    p.push(&[7], 3, vec![2], LogitsWanted::Greedy);
    p.push(&[8], 3, vec![0], LogitsWanted::Last);
    let out = be.execute(&p).unwrap();
    assert_eq!((out.rows(), out.greedy.clone()), (1, vec![8]));
    assert_eq!(argmax(out.row(0)), 9);
}

#[test]
fn steps_without_a_compiled_shape_or_outside_the_contract_are_errors() {
    let fx = Fixture::new("noshape", TOY);
    let mut be = fx.load();
    let mut two = StepPlan::default();
    two.push(&[1, 2], 0, vec![0], LogitsWanted::Last);
    two.push(&[3], 0, vec![1], LogitsWanted::Last);
    assert!(matches!(be.execute(&two), Err(BackendError::Shape(_))), "no prefill bucket of batch 2");
    let long = StepPlan::single(vec![1; 17], 0, vec![0], LogitsWanted::Last);
    assert!(matches!(be.execute(&long), Err(BackendError::Shape(_))), "no prefill bucket of 17 tokens");
    let five = decode_plan(&[(1, 2, 0), (1, 2, 1), (1, 2, 2), (1, 2, 3), (1, 2, 0)], LogitsWanted::Last);
    assert!(be.execute(&five).is_err());
    let pad = StepPlan::single(vec![1], 0, vec![PAD as u32], LogitsWanted::Last);
    assert!(matches!(be.execute(&pad), Err(BackendError::Plan(_))), "live sequences never use the pad slot");
    let all = StepPlan::single(vec![1, 2, 3], 0, vec![0], LogitsWanted::All);
    match be.execute(&all) {
        Err(BackendError::Internal(m)) => assert!(m.contains("last token"), "{m}"),
        other => panic!("{other:?}"),
    }
    let oov = StepPlan::single(vec![VOCAB as u32], 0, vec![0], LogitsWanted::Last);
    assert!(matches!(be.execute(&oov), Err(BackendError::Plan(_))));
    let log = fx.take_log();
    assert_eq!(count(&log, "nrt_execute"), 0, "refused before any device work");
}

#[test]
fn resource_exhaustion_at_allocate_fails_load_as_unavailable_and_releases_everything() {
    let fx = Fixture::new("resource", TOY);
    fx.inject("nrt_tensor_allocate", 4, 1);
    let err = NeuronBackend::load(&fx.options()).unwrap_err();
    assert!(matches!(err, NeuronError::Nrt(_)));
    let m = unavailable(err.into());
    assert!(m.contains("nrt_tensor_allocate") && m.contains("NRT_RESOURCE") && m.contains('4'), "{m}");
    assert_eq!(fx.live_handles(), 0);
    let log = fx.take_log();
    assert_eq!(call(log.last().unwrap()), "nrt_close", "a failed load still closes the runtime");
    assert_eq!(count(&log, "nrt_unload"), 6);
}

#[test]
fn a_busy_core_is_retried_and_the_step_succeeds() {
    let fx = Fixture::new("busy", TOY);
    let mut be = fx.load();
    be.warmup().unwrap();
    fx.take_log();
    fx.inject("nrt_execute", 1005, 1);
    let out = be.execute(&StepPlan::single(vec![5, 6], 0, vec![1], LogitsWanted::Greedy)).unwrap();
    assert_eq!(out.greedy, vec![7]);
    let log = fx.take_log();
    let execs: Vec<&String> = log.iter().filter(|l| call(l) == "nrt_execute").collect();
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[0], "nrt_execute!1005");

    fx.inject("nrt_execute", 1005, 10);
    let m = unavailable(be.execute(&StepPlan::single(vec![5], 0, vec![1], LogitsWanted::Greedy)).unwrap_err());
    assert!(m.contains("NRT_EXEC_NC_BUSY"), "{m}");
    assert_eq!(count(&fx.take_log(), "nrt_execute"), 4, "1 try + 3 retries by default");
}

#[test]
fn a_timeout_fails_the_step_as_unavailable_without_retry() {
    let fx = Fixture::new("timeout", TOY);
    let mut be = fx.load();
    fx.take_log();
    fx.inject("nrt_execute", 5, 1);
    let m = unavailable(be.execute(&StepPlan::single(vec![5, 6], 0, vec![1], LogitsWanted::Last)).unwrap_err());
    assert!(m.contains("nrt_execute") && m.contains("NRT_TIMEOUT") && m.contains('5'), "{m}");
    assert_eq!(count(&fx.take_log(), "nrt_execute"), 1);
}

#[test]
fn on_device_greedy_returns_ids_and_refuses_logits() {
    let fx = Fixture::new("tokens", Toy { tokens_out: true, ..TOY });
    let mut be = fx.load();
    assert_eq!(be.caps().sampling, SamplingSupport::GreedyOnly);
    be.warmup().unwrap();
    let out = be.execute(&StepPlan::single(vec![30, 31], 0, vec![0], LogitsWanted::Greedy)).unwrap();
    assert_eq!(out.greedy, vec![0], "(31 + 1) % 32");
    let out = be.execute(&decode_plan(&[(0, 2, 0), (9, 4, 3)], LogitsWanted::Greedy)).unwrap();
    assert_eq!(out.greedy, vec![1, 10]);
    assert!(matches!(
        be.execute(&StepPlan::single(vec![1], 0, vec![0], LogitsWanted::Last)),
        Err(BackendError::Internal(_))
    ));
}

#[test]
fn artifacts_that_disagree_with_the_manifest_are_refused() {
    let fx = Fixture::new("lnc", Toy { manifest_lnc: 2, ..TOY });
    let e = NeuronBackend::load(&fx.options()).unwrap_err();
    assert!(matches!(e, NeuronError::Neff { .. }) && e.to_string().contains("logical NeuronCore size 1"), "{e}");
    assert!(fx.take_log().is_empty(), "refused before nrt_init");
    drop(fx);

    let fx = Fixture::new("kvsize", Toy { manifest_kv_bytes: KV_BYTES + 4, ..TOY });
    let e = NeuronBackend::load(&fx.options()).unwrap_err();
    assert!(matches!(e, NeuronError::Artifact(_)) && e.to_string().contains("state 'kv'"), "{e}");
    assert_eq!(fx.live_handles(), 0);
}

#[test]
fn a_missing_library_lists_the_names_tried() {
    let fx = Fixture::new("nolib", TOY);
    let missing = fx.dir.join("no-such-libnrt.so");
    let opts = NeuronOptions { library: Some(missing.clone()), ..fx.options() };
    let e = NeuronBackend::load(&opts).unwrap_err();
    let m = e.to_string();
    assert!(m.contains(&missing.display().to_string()), "{m}");
    assert!(matches!(BackendError::from(e), BackendError::Unavailable(_)));
    // Without a path the loader's search path is tried; on hosts without the Neuron SDK both
    // default names fail and are listed.
    if let Err(e) = NeuronBackend::load(&NeuronOptions { library: None, ..fx.options() }) {
        let m = e.to_string();
        assert!(m.contains("libnrt.so.1") && m.contains("'libnrt.so'"), "{m}");
    }
}
