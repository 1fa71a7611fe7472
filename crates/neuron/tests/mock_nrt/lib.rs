//! mock-nrt: a std-only stand-in for libnrt, used only by hearth-neuron's tests.
//!
//! It is NOT the Neuron runtime and runs nothing of AWS's. It exports the `nrt_*` C symbols
//! hearth-neuron binds (signatures as documented for libnrt; written from the documented API) and
//! implements them on the host: tensors are `Vec<u8>`, tensor sets are name → tensor maps, and a
//! "model" is a SYNTHETIC NEFF — the 1024-byte NEFF header followed by a small JSON body that
//! lists the graph's tensors and the roles of a toy function:
//!
//! * each row `r` writes a one-hot f32 logits row (or an int32 token) at
//!   `(input_ids[r * tokens + last_index[r]] + 1) % vocab` (prefill) or
//!   `(input_ids[r] + 1) % vocab` (decode);
//! * it adds 1 to the u32 counter `seq_ids[r]` of the state tensor named by the `kv` role, so a
//!   test can see which KV rows a step touched.
//!
//! Extras for tests (not part of libnrt): a call log (`mock_nrt_take_log`), fault injection
//! (`mock_nrt_inject`), the `NEURON_RT_VISIBLE_CORES` value seen at `nrt_init`
//! (`mock_nrt_visible_cores`), reading a tensor by name (`mock_nrt_read_tensor`) and a count of
//! live handles (`mock_nrt_live_handles`). Handles are opaque integers cast to pointers and are
//! never dereferenced, so a stale handle is reported as `NRT_INVALID_HANDLE`, not undefined
//! behaviour. Built by `tests/mock_nrt.rs` with
//! `rustc --edition 2024 --crate-type cdylib -O`.

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

const SUCCESS: c_int = 0;
const FAILURE: c_int = 1;
const INVALID: c_int = 2;
const INVALID_HANDLE: c_int = 3;
const UNINITIALIZED: c_int = 13;
const EXEC_BAD_INPUT: c_int = 1002;
const EXEC_OOB: c_int = 1006;
const HEADER: usize = 1024;

// ---------------------------------------------------------------------------------------------
// A minimal JSON reader (objects, arrays, strings without escapes beyond \" \\ \n, numbers).

#[allow(dead_code)] // the values of booleans and nulls are parsed but never read
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn num(&self, key: &str) -> Option<usize> {
        match self.get(key)? {
            Json::Num(n) if *n >= 0.0 => Some(*n as usize),
            _ => None,
        }
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }
    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut kv = Vec::new();
                if self.eat(b'}').is_some() {
                    return Some(Json::Obj(kv));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else { return None };
                    self.eat(b':')?;
                    kv.push((k, self.value()?));
                    if self.eat(b',').is_none() {
                        self.eat(b'}')?;
                        return Some(Json::Obj(kv));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut v = Vec::new();
                if self.eat(b']').is_some() {
                    return Some(Json::Arr(v));
                }
                loop {
                    v.push(self.value()?);
                    if self.eat(b',').is_none() {
                        self.eat(b']')?;
                        return Some(Json::Arr(v));
                    }
                }
            }
            b'"' => {
                self.i += 1;
                let mut s = Vec::new();
                loop {
                    let c = *self.b.get(self.i)?;
                    self.i += 1;
                    match c {
                        b'"' => return String::from_utf8(s).ok().map(Json::Str),
                        b'\\' => {
                            let e = *self.b.get(self.i)?;
                            self.i += 1;
                            s.push(if e == b'n' { b'\n' } else { e });
                        }
                        c => s.push(c),
                    }
                }
            }
            b't' if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Some(Json::Bool(true))
            }
            b'f' if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Some(Json::Bool(false))
            }
            b'n' if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Some(Json::Null)
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len() && matches!(self.b[self.i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.i += 1;
                }
                std::str::from_utf8(&self.b[start..self.i]).ok()?.parse().ok().map(Json::Num)
            }
        }
    }
}

fn parse_json(b: &[u8]) -> Option<Json> {
    let mut p = Parser { b, i: 0 };
    let v = p.value()?;
    p.ws();
    (p.i == b.len()).then_some(v)
}

// ---------------------------------------------------------------------------------------------
// State

struct TensorDesc {
    name: String,
    usage: c_int,
    size: usize,
    dtype: c_int,
    shape: Vec<u32>,
}

struct ModelObj {
    name: String,
    prefill: bool,
    batch: usize,
    tokens: usize,
    vocab: usize,
    /// Role → tensor name: input_ids, last_index (prefill), seq_ids, kv, out.
    roles: HashMap<String, String>,
    /// `"logits"` or `"tokens"`.
    out_kind: String,
    tensors: Vec<TensorDesc>,
}

struct InfoBuf {
    _buf: Box<[u64]>,
    _shapes: Vec<Box<[u32]>>,
}

#[derive(Default)]
struct State {
    next: usize,
    initialized: bool,
    tensors: HashMap<usize, (String, Vec<u8>)>,
    sets: HashMap<usize, HashMap<String, usize>>,
    models: HashMap<usize, ModelObj>,
    infos: HashMap<usize, InfoBuf>,
    log: Vec<String>,
    faults: HashMap<String, (c_int, u32)>,
    visible_cores: Option<String>,
}

impl State {
    fn handle(&mut self) -> usize {
        self.next += 1;
        self.next << 4
    }
}

fn state() -> MutexGuard<'static, State> {
    static S: OnceLock<Mutex<State>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(State::default())).lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs the call; returns the injected status if a fault is armed for it.
fn enter(s: &mut State, call: &str) -> Option<c_int> {
    if let Some((status, times)) = s.faults.get_mut(call)
        && *times > 0
    {
        *times -= 1;
        let st = *status;
        s.log.push(format!("{call}!{st}"));
        return Some(st);
    }
    s.log.push(call.to_string());
    None
}

fn fail(s: &mut State, call: &str, st: c_int) -> c_int {
    if let Some(last) = s.log.last_mut()
        && last == call
    {
        last.push_str(&format!("!{st}"));
    }
    st
}

fn text(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: callers pass NUL-terminated strings (the libnrt contract for names).
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn le_u64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn parse_model(bytes: &[u8]) -> Option<ModelObj> {
    if bytes.len() < HEADER || le_u64(bytes, 8) != HEADER as u64 {
        return None;
    }
    let data = le_u64(bytes, 16) as usize;
    let body = bytes.get(HEADER..HEADER.checked_add(data)?)?;
    let name_field = &bytes[220..476];
    let end = name_field.iter().position(|&c| c == 0).unwrap_or(256);
    let name = String::from_utf8_lossy(&name_field[..end]).into_owned();
    let j = parse_json(body)?;
    let mut roles = HashMap::new();
    if let Some(Json::Obj(kv)) = j.get("roles") {
        for (k, v) in kv {
            if let Json::Str(s) = v {
                roles.insert(k.clone(), s.clone());
            }
        }
    }
    let mut tensors = Vec::new();
    if let Some(Json::Arr(ts)) = j.get("tensors") {
        for t in ts {
            let shape = match t.get("shape") {
                Some(Json::Arr(a)) => {
                    a.iter().filter_map(|v| if let Json::Num(n) = v { Some(*n as u32) } else { None }).collect()
                }
                _ => Vec::new(),
            };
            tensors.push(TensorDesc {
                name: t.str("name")?.to_string(),
                usage: t.num("usage")? as c_int,
                size: t.num("size")?,
                dtype: t.num("dtype")? as c_int,
                shape,
            });
        }
    }
    Some(ModelObj {
        name,
        prefill: j.str("kind")? == "prefill",
        batch: j.num("batch")?,
        tokens: j.num("tokens")?,
        vocab: j.num("vocab")?,
        out_kind: j.str("out_kind").unwrap_or("logits").to_string(),
        roles,
        tensors,
    })
}

// ---------------------------------------------------------------------------------------------
// libnrt entry points

#[unsafe(no_mangle)]
pub extern "C" fn nrt_init(framework: c_int, _fw: *const c_char, _fal: *const c_char) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_init") {
        return st;
    }
    if framework != 1 {
        return fail(&mut s, "nrt_init", INVALID);
    }
    s.visible_cores = std::env::var("NEURON_RT_VISIBLE_CORES").ok();
    s.initialized = true;
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_close() {
    let mut s = state();
    s.log.push("nrt_close".into());
    s.initialized = false;
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_get_visible_vnc_count(count: *mut u32) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_get_visible_vnc_count") {
        return st;
    }
    if !s.initialized {
        return fail(&mut s, "nrt_get_visible_vnc_count", UNINITIALIZED);
    }
    let n = match s.visible_cores.as_deref().and_then(|v| v.split_once('-')) {
        Some((a, b)) => b.parse::<u32>().unwrap_or(0).saturating_sub(a.parse().unwrap_or(0)) + 1,
        None => 1,
    };
    // SAFETY: the caller passes a valid out pointer.
    unsafe { *count = n };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_load(
    neff: *const c_void,
    size: usize,
    _vnc: i32,
    _vnc_count: i32,
    model: *mut *mut c_void,
) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_load") {
        return st;
    }
    if !s.initialized {
        return fail(&mut s, "nrt_load", UNINITIALIZED);
    }
    // SAFETY: the caller passes `size` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(neff.cast::<u8>(), size) };
    let Some(m) = parse_model(bytes) else { return fail(&mut s, "nrt_load", INVALID) };
    let h = s.handle();
    if let Some(l) = s.log.last_mut() {
        l.push(' ');
        l.push_str(&m.name);
    }
    s.models.insert(h, m);
    // SAFETY: valid out pointer.
    unsafe { *model = h as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_load_collectives(
    _neff: *const c_void,
    _size: usize,
    _vnc: i32,
    _vnc_count: i32,
    _dev: u32,
    _devs: u32,
    _model: *mut *mut c_void,
) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_load_collectives") {
        return st;
    }
    fail(&mut s, "nrt_load_collectives", FAILURE)
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_unload(model: *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_unload") {
        return st;
    }
    if s.models.remove(&(model as usize)).is_none() {
        return fail(&mut s, "nrt_unload", INVALID_HANDLE);
    }
    SUCCESS
}

#[repr(C)]
struct InfoC {
    name: [c_char; 256],
    usage: c_int,
    size: usize,
    dtype: c_int,
    shape: *mut u32,
    ndim: u32,
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_get_model_tensor_info(model: *mut c_void, info: *mut *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_get_model_tensor_info") {
        return st;
    }
    let Some(m) = s.models.get(&(model as usize)) else {
        return fail(&mut s, "nrt_get_model_tensor_info", INVALID_HANDLE);
    };
    let n = m.tensors.len();
    let entry = size_of::<InfoC>();
    let mut buf = vec![0u64; (8 + n * entry).div_ceil(8)].into_boxed_slice();
    let mut shapes = Vec::new();
    buf[0] = n as u64;
    let base = buf.as_mut_ptr().cast::<u8>();
    for (i, t) in m.tensors.iter().enumerate() {
        let mut shape = t.shape.clone().into_boxed_slice();
        let mut name = [0 as c_char; 256];
        for (d, c) in name.iter_mut().zip(t.name.bytes().take(255)) {
            *d = c as c_char;
        }
        let e = InfoC {
            name,
            usage: t.usage,
            size: t.size,
            dtype: t.dtype,
            shape: if shape.is_empty() { std::ptr::null_mut() } else { shape.as_mut_ptr() },
            ndim: shape.len() as u32,
        };
        // SAFETY: the buffer holds 8 + n * entry bytes, 8-aligned; entry i starts at 8 + i * entry.
        unsafe { base.add(8 + i * entry).cast::<InfoC>().write(e) };
        shapes.push(shape);
    }
    let p = buf.as_mut_ptr() as usize;
    s.infos.insert(p, InfoBuf { _buf: buf, _shapes: shapes });
    // SAFETY: valid out pointer.
    unsafe { *info = p as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_free_model_tensor_info(info: *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_free_model_tensor_info") {
        return st;
    }
    if s.infos.remove(&(info as usize)).is_none() {
        return fail(&mut s, "nrt_free_model_tensor_info", INVALID_HANDLE);
    }
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_allocate_tensor_set(set: *mut *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_allocate_tensor_set") {
        return st;
    }
    let h = s.handle();
    s.sets.insert(h, HashMap::new());
    // SAFETY: valid out pointer.
    unsafe { *set = h as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_destroy_tensor_set(set: *mut *mut c_void) {
    let mut s = state();
    s.log.push("nrt_destroy_tensor_set".into());
    // SAFETY: the caller passes a valid pointer to a set handle.
    let h = unsafe { *set } as usize;
    s.sets.remove(&h);
    // SAFETY: as above.
    unsafe { *set = std::ptr::null_mut() };
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_add_tensor_to_tensor_set(set: *mut c_void, name: *const c_char, tensor: *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_add_tensor_to_tensor_set") {
        return st;
    }
    let Some(name) = text(name) else { return fail(&mut s, "nrt_add_tensor_to_tensor_set", INVALID) };
    if !s.tensors.contains_key(&(tensor as usize)) {
        return fail(&mut s, "nrt_add_tensor_to_tensor_set", INVALID_HANDLE);
    }
    match s.sets.get_mut(&(set as usize)) {
        Some(m) => {
            m.insert(name, tensor as usize);
            SUCCESS
        }
        None => fail(&mut s, "nrt_add_tensor_to_tensor_set", INVALID_HANDLE),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_tensor_allocate(
    placement: c_int,
    _vnc: c_int,
    size: usize,
    name: *const c_char,
    tensor: *mut *mut c_void,
) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_tensor_allocate") {
        return st;
    }
    if !s.initialized {
        return fail(&mut s, "nrt_tensor_allocate", UNINITIALIZED);
    }
    if !(0..=2).contains(&placement) || size == 0 {
        return fail(&mut s, "nrt_tensor_allocate", INVALID);
    }
    let h = s.handle();
    s.tensors.insert(h, (text(name).unwrap_or_default(), vec![0; size]));
    // SAFETY: valid out pointer.
    unsafe { *tensor = h as *mut c_void };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_tensor_free(tensor: *mut *mut c_void) {
    let mut s = state();
    s.log.push("nrt_tensor_free".into());
    // SAFETY: the caller passes a valid pointer to a tensor handle.
    let h = unsafe { *tensor } as usize;
    s.tensors.remove(&h);
    // SAFETY: as above.
    unsafe { *tensor = std::ptr::null_mut() };
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_tensor_read(tensor: *const c_void, buf: *mut c_void, offset: usize, size: usize) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_tensor_read") {
        return st;
    }
    let Some((_, data)) = s.tensors.get(&(tensor as usize)) else {
        return fail(&mut s, "nrt_tensor_read", INVALID_HANDLE);
    };
    let Some(src) = offset.checked_add(size).and_then(|end| data.get(offset..end)) else {
        return fail(&mut s, "nrt_tensor_read", INVALID);
    };
    // SAFETY: the caller passes `size` writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.cast::<u8>(), size) };
    SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_tensor_write(tensor: *mut c_void, buf: *const c_void, offset: usize, size: usize) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_tensor_write") {
        return st;
    }
    let Some((_, data)) = s.tensors.get_mut(&(tensor as usize)) else {
        return fail(&mut s, "nrt_tensor_write", INVALID_HANDLE);
    };
    let Some(dst) = offset.checked_add(size).and_then(|end| data.get_mut(offset..end)) else {
        return fail(&mut s, "nrt_tensor_write", INVALID);
    };
    // SAFETY: the caller passes `size` readable bytes.
    unsafe { std::ptr::copy_nonoverlapping(buf.cast::<u8>(), dst.as_mut_ptr(), size) };
    SUCCESS
}

fn i32s(b: &[u8]) -> Vec<i32> {
    b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// The toy graph; `Err(status)` on bad bindings.
fn run(s: &mut State, model: usize, input: usize, output: usize) -> Result<(), c_int> {
    let m = s.models.get(&model).ok_or(INVALID_HANDLE)?;
    let ins = s.sets.get(&input).ok_or(INVALID_HANDLE)?;
    let outs = s.sets.get(&output).ok_or(INVALID_HANDLE)?;
    for t in &m.tensors {
        let set = if t.usage == 0 { ins } else { outs };
        let h = set.get(&t.name).ok_or(EXEC_BAD_INPUT)?;
        let (_, data) = s.tensors.get(h).ok_or(INVALID_HANDLE)?;
        if data.len() != t.size {
            return Err(EXEC_BAD_INPUT);
        }
    }
    let role = |r: &str| m.roles.get(r).ok_or(INVALID);
    let input_of = |r: &str| -> Result<usize, c_int> { ins.get(role(r)?).copied().ok_or(EXEC_BAD_INPUT) };
    let ids = i32s(&s.tensors[&input_of("input_ids")?].1);
    let seq = i32s(&s.tensors[&input_of("seq_ids")?].1);
    let last = if m.prefill { i32s(&s.tensors[&input_of("last_index")?].1) } else { vec![0; m.batch] };
    let kv = input_of("kv")?;
    let out = *outs.get(role("out")?).ok_or(EXEC_BAD_INPUT)?;
    let (batch, tokens, vocab, logits) = (m.batch, m.tokens, m.vocab, m.out_kind == "logits");
    let mut next = Vec::with_capacity(batch);
    for r in 0..batch {
        let li = usize::try_from(last[r]).map_err(|_| EXEC_OOB)?;
        if li >= tokens {
            return Err(EXEC_OOB);
        }
        let id = ids[r * tokens + li];
        next.push(((id as usize) + 1) % vocab);
    }
    let counters = &mut s.tensors.get_mut(&kv).ok_or(INVALID_HANDLE)?.1;
    for &slot in &seq {
        let at = usize::try_from(slot).map_err(|_| EXEC_OOB)? * 4;
        let c = counters.get_mut(at..at + 4).ok_or(EXEC_OOB)?;
        let v = u32::from_le_bytes(c.try_into().unwrap()) + 1;
        c.copy_from_slice(&v.to_le_bytes());
    }
    let o = &mut s.tensors.get_mut(&out).ok_or(INVALID_HANDLE)?.1;
    o.fill(0);
    for (r, &n) in next.iter().enumerate() {
        if logits {
            o[(r * vocab + n) * 4..(r * vocab + n + 1) * 4].copy_from_slice(&1.0f32.to_le_bytes());
        } else {
            o[r * 4..r * 4 + 4].copy_from_slice(&(n as i32).to_le_bytes());
        }
    }
    Ok(())
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_execute(model: *mut c_void, input: *const c_void, output: *mut c_void) -> c_int {
    let mut s = state();
    if let Some(st) = enter(&mut s, "nrt_execute") {
        return st;
    }
    let name = s.models.get(&(model as usize)).map(|m| m.name.clone()).unwrap_or_default();
    match run(&mut s, model as usize, input as usize, output as usize) {
        Ok(()) => {
            if let Some(l) = s.log.last_mut() {
                l.push(' ');
                l.push_str(&name);
            }
            SUCCESS
        }
        Err(st) => fail(&mut s, "nrt_execute", st),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn nrt_get_status_as_str(status: c_int) -> *const c_char {
    match status {
        0 => c"mock-nrt: success".as_ptr(),
        4 => c"mock-nrt: resource".as_ptr(),
        5 => c"mock-nrt: timeout".as_ptr(),
        1005 => c"mock-nrt: nc busy".as_ptr(),
        _ => c"mock-nrt: other".as_ptr(),
    }
}

// ---------------------------------------------------------------------------------------------
// Test controls (not libnrt symbols)

fn copy_out(bytes: &[u8], buf: *mut u8, len: usize) -> bool {
    if buf.is_null() || len < bytes.len() {
        return false;
    }
    // SAFETY: the caller passes `len >= bytes.len()` writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    true
}

/// Copies the call log into `buf` and clears it when `len` is large enough; returns the bytes
/// needed either way. One call per line: `name`, `name <neff name>` for loads and executes,
/// `name!status` for a failed call.
#[unsafe(no_mangle)]
pub extern "C" fn mock_nrt_take_log(buf: *mut u8, len: usize) -> usize {
    let mut s = state();
    let text = s.log.join("\n");
    if copy_out(text.as_bytes(), buf, len) {
        s.log.clear();
    }
    text.len()
}

/// Makes the next `times` calls of `call` return `status` without doing anything.
#[unsafe(no_mangle)]
pub extern "C" fn mock_nrt_inject(call: *const c_char, status: c_int, times: u32) {
    if let Some(c) = text(call) {
        state().faults.insert(c, (status, times));
    }
}

/// `NEURON_RT_VISIBLE_CORES` as read by the last `nrt_init`: its length (copied when `len`
/// suffices), or -1 when it was unset.
#[unsafe(no_mangle)]
pub extern "C" fn mock_nrt_visible_cores(buf: *mut u8, len: usize) -> isize {
    match &state().visible_cores {
        Some(v) => {
            copy_out(v.as_bytes(), buf, len);
            v.len() as isize
        }
        None => -1,
    }
}

/// Copies the newest live tensor allocated under `name` into `buf` (when `len` suffices);
/// returns its size, or -1 when there is none.
#[unsafe(no_mangle)]
pub extern "C" fn mock_nrt_read_tensor(name: *const c_char, buf: *mut u8, len: usize) -> isize {
    let Some(name) = text(name) else { return -1 };
    let s = state();
    match s.tensors.iter().filter(|(_, (n, _))| *n == name).max_by_key(|(h, _)| **h) {
        Some((_, (_, data))) => {
            copy_out(data, buf, len);
            data.len() as isize
        }
        None => -1,
    }
}

/// Live tensors + tensor sets + models + tensor-info arrays.
#[unsafe(no_mangle)]
pub extern "C" fn mock_nrt_live_handles() -> usize {
    let s = state();
    s.tensors.len() + s.sets.len() + s.models.len() + s.infos.len()
}
