//! Hand-written bindings to AWS Neuron's runtime library, `libnrt`, loaded at run time.
//!
//! Written from the documented API (the public `nrt.h`, `nrt_experimental.h`, `nrt_status.h`
//! and `nrt_version.h` signatures quoted in `shared/reference/neuron.md` §1.1); checked only
//! against mock-nrt here. No AWS header or binary is vendored: every struct and signature below
//! was typed from the documentation, and the struct layouts are pinned by `offset_of!` tests (on
//! LP64). A real install should re-check them with `offsetof` in C.
//!
//! The library is opened with `libloading`, so the crate builds and its tests run on hosts without
//! the Neuron SDK. [`Nrt`] owns the library and the resolved function pointers, and offers safe
//! methods over opaque handles ([`Model`], [`Tensor`], [`TensorSet`]) that only those methods
//! create; a handle is consumed when it is freed, so it cannot be used afterwards. Status codes
//! are plain `c_int` (see [`crate::status`]).

// Private to the crate: its handles are not tied to the library's lifetime, so only
// `NeuronBackend` (which owns both and frees handles before closing) may use them. The whole
// documented surface is bound, used or not.
#![allow(dead_code)]
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};

use crate::status::{NrtError, check};

/// `NRT_STATUS`: a C enum, kept as an integer.
pub type NRT_STATUS = c_int;

/// Opaque `nrt_model_t`.
#[repr(C)]
pub struct nrt_model_t {
    _opaque: [u8; 0],
}

/// Opaque `nrt_tensor_t`.
#[repr(C)]
pub struct nrt_tensor_t {
    _opaque: [u8; 0],
}

/// `typedef void nrt_tensor_set_t`.
pub type nrt_tensor_set_t = c_void;

// nrt_tensor_placement_t
pub const NRT_TENSOR_PLACEMENT_DEVICE: c_int = 0;
pub const NRT_TENSOR_PLACEMENT_HOST: c_int = 1;
pub const NRT_TENSOR_PLACEMENT_VIRTUAL: c_int = 2;

// nrt_framework_type_t
pub const NRT_FRAMEWORK_TYPE_INVALID: c_int = 0;
pub const NRT_FRAMEWORK_TYPE_NO_FW: c_int = 1;

// nrt_tensor_usage_t
pub const NRT_TENSOR_USAGE_INPUT: c_int = 0;
pub const NRT_TENSOR_USAGE_OUTPUT: c_int = 1;

/// `NRT_TENSOR_NAME_MAX`.
pub const NRT_TENSOR_NAME_MAX: usize = 256;

// nrt_dtype_t, the values of the 2.28 header (the developer guide's sequential list is stale).
pub const NRT_DTYPE_UNKNOWN: c_int = 0x0;
pub const NRT_DTYPE_UINT64: c_int = 0x1;
pub const NRT_DTYPE_INT8: c_int = 0x2;
pub const NRT_DTYPE_UINT8: c_int = 0x3;
pub const NRT_DTYPE_INT16: c_int = 0x4;
pub const NRT_DTYPE_UINT16: c_int = 0x5;
pub const NRT_DTYPE_BFLOAT16: c_int = 0x6;
pub const NRT_DTYPE_FLOAT16: c_int = 0x7;
pub const NRT_DTYPE_INT32: c_int = 0x8;
pub const NRT_DTYPE_UINT32: c_int = 0x9;
pub const NRT_DTYPE_FLOAT32: c_int = 0xA;
pub const NRT_DTYPE_FP32R: c_int = 0xB;
pub const NRT_DTYPE_INT64: c_int = 0xC;
pub const NRT_DTYPE_FP8_E3: c_int = 0xD;
pub const NRT_DTYPE_FP8_E4: c_int = 0xE;
pub const NRT_DTYPE_FP8_E5: c_int = 0xF;

/// `nrt_tensor_info_t` (`nrt_experimental.h`).
#[repr(C)]
pub struct nrt_tensor_info_t {
    pub name: [c_char; NRT_TENSOR_NAME_MAX],
    /// `nrt_tensor_usage_t`.
    pub usage: c_int,
    pub size: usize,
    /// `nrt_dtype_t`.
    pub dtype: c_int,
    pub shape: *mut u32,
    pub ndim: u32,
}

/// `nrt_tensor_info_array_t`: a count followed by a flexible array of [`nrt_tensor_info_t`].
#[repr(C)]
pub struct nrt_tensor_info_array_t {
    pub tensor_count: u64,
    pub tensor_array: [nrt_tensor_info_t; 0],
}

/// `nrt_instance_info_t`.
#[repr(C)]
pub struct nrt_instance_info_t {
    pub family: u32,
    pub size: u32,
    pub arch_name: [c_char; 16],
    pub device_revision: [c_char; 8],
}

/// `nrt_version_t` (`nrt_version.h`).
#[repr(C)]
pub struct nrt_version_t {
    pub rt_major: u64,
    pub rt_minor: u64,
    pub rt_patch: u64,
    pub rt_maintenance: u64,
    pub rt_detail: [c_char; 128],
    pub git_hash: [c_char; 64],
}

/// `nrt_vnc_memory_stats_t` (append-only upstream).
#[repr(C)]
pub struct nrt_vnc_memory_stats_t {
    pub bytes_used: usize,
    pub bytes_limit: usize,
}

/// `nrt_model_info_t`.
#[repr(C)]
pub struct nrt_model_info_t {
    pub vnc: u32,
}

type InitFn = unsafe extern "C" fn(c_int, *const c_char, *const c_char) -> NRT_STATUS;
type CloseFn = unsafe extern "C" fn();
type LoadFn = unsafe extern "C" fn(*const c_void, usize, i32, i32, *mut *mut nrt_model_t) -> NRT_STATUS;
type LoadCollectivesFn =
    unsafe extern "C" fn(*const c_void, usize, i32, i32, u32, u32, *mut *mut nrt_model_t) -> NRT_STATUS;
type UnloadFn = unsafe extern "C" fn(*mut nrt_model_t) -> NRT_STATUS;
type GetTensorInfoFn = unsafe extern "C" fn(*mut nrt_model_t, *mut *mut nrt_tensor_info_array_t) -> NRT_STATUS;
type FreeTensorInfoFn = unsafe extern "C" fn(*mut nrt_tensor_info_array_t) -> NRT_STATUS;
type AllocateSetFn = unsafe extern "C" fn(*mut *mut nrt_tensor_set_t) -> NRT_STATUS;
type DestroySetFn = unsafe extern "C" fn(*mut *mut nrt_tensor_set_t);
type AddToSetFn = unsafe extern "C" fn(*mut nrt_tensor_set_t, *const c_char, *mut nrt_tensor_t) -> NRT_STATUS;
type TensorAllocateFn = unsafe extern "C" fn(c_int, c_int, usize, *const c_char, *mut *mut nrt_tensor_t) -> NRT_STATUS;
type TensorFreeFn = unsafe extern "C" fn(*mut *mut nrt_tensor_t);
type TensorReadFn = unsafe extern "C" fn(*const nrt_tensor_t, *mut c_void, usize, usize) -> NRT_STATUS;
type TensorWriteFn = unsafe extern "C" fn(*mut nrt_tensor_t, *const c_void, usize, usize) -> NRT_STATUS;
type ExecuteFn = unsafe extern "C" fn(*mut nrt_model_t, *const nrt_tensor_set_t, *mut nrt_tensor_set_t) -> NRT_STATUS;
type VisibleVncCountFn = unsafe extern "C" fn(*mut u32) -> NRT_STATUS;
type StatusAsStrFn = unsafe extern "C" fn(NRT_STATUS) -> *const c_char;

/// Why the library could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("could not load libnrt; tried {}", list_tried(.tried))]
    Library { tried: Vec<(String, String)> },
    #[error("{library} has no symbol {symbol}: {error}")]
    Symbol { library: String, symbol: &'static str, error: String },
}

fn list_tried(tried: &[(String, String)]) -> String {
    tried.iter().map(|(name, err)| format!("'{name}' ({err})")).collect::<Vec<_>>().join(", ")
}

/// The library names tried, in order, when no path is given.
pub const DEFAULT_LIBRARY_NAMES: [&str; 2] = ["libnrt.so.1", "libnrt.so"];

/// The open runtime library and its resolved entry points.
pub struct Nrt {
    init: InitFn,
    close: CloseFn,
    load: LoadFn,
    #[allow(dead_code)] // resolved so a library without it is refused early; TP > 1 is not wired yet
    load_collectives: LoadCollectivesFn,
    unload: UnloadFn,
    get_model_tensor_info: GetTensorInfoFn,
    free_model_tensor_info: FreeTensorInfoFn,
    allocate_tensor_set: AllocateSetFn,
    destroy_tensor_set: DestroySetFn,
    add_tensor_to_tensor_set: AddToSetFn,
    tensor_allocate: TensorAllocateFn,
    tensor_free: TensorFreeFn,
    tensor_read: TensorReadFn,
    tensor_write: TensorWriteFn,
    execute: ExecuteFn,
    get_visible_vnc_count: VisibleVncCountFn,
    get_status_as_str: Option<StatusAsStrFn>,
    /// Where it was loaded from (for logs).
    pub path: String,
    // Last: the function pointers above are only valid while the library stays loaded.
    _library: libloading::Library,
}

impl std::fmt::Debug for Nrt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nrt").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A loaded model (`nrt_model_t *`), created by [`Nrt::load`] and consumed by [`Nrt::unload`].
#[derive(Debug)]
pub struct Model(NonNull<nrt_model_t>);

/// A tensor (`nrt_tensor_t *`), created by [`Nrt::tensor_allocate`] and consumed by
/// [`Nrt::tensor_free`].
#[derive(Debug)]
pub struct Tensor(NonNull<nrt_tensor_t>);

/// A tensor set, created by [`Nrt::allocate_tensor_set`] and consumed by
/// [`Nrt::destroy_tensor_set`].
#[derive(Debug)]
pub struct TensorSet(NonNull<nrt_tensor_set_t>);

// SAFETY: the handles are opaque runtime objects with no documented thread affinity (libnrt
// documents calling `nrt_execute` from several threads); hearth drives a backend from one thread
// at a time and only moves it between threads.
unsafe impl Send for Model {}
// SAFETY: as for `Model`.
unsafe impl Send for Tensor {}
// SAFETY: as for `Model`.
unsafe impl Send for TensorSet {}

/// One input or output of a loaded model, as `nrt_get_model_tensor_info` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// [`NRT_TENSOR_USAGE_INPUT`] or [`NRT_TENSOR_USAGE_OUTPUT`].
    pub usage: i32,
    pub size: usize,
    pub dtype: i32,
    pub shape: Vec<u32>,
}

fn c_string(s: &str) -> CString {
    // Names come from the manifest, which refuses interior NULs; a NUL here is a bug.
    CString::new(s).expect("tensor name without NUL (checked by the manifest). This is a bug.")
}

impl Nrt {
    /// Opens libnrt: `path` if given, else `libnrt.so.1`, then `libnrt.so` (through the dynamic
    /// loader's search path). The error lists every name tried and why it failed.
    pub fn open(path: Option<&Path>) -> Result<Nrt, OpenError> {
        let candidates: Vec<PathBuf> = match path {
            Some(p) => vec![p.to_path_buf()],
            None => DEFAULT_LIBRARY_NAMES.iter().map(PathBuf::from).collect(),
        };
        let mut tried = Vec::new();
        for c in candidates {
            // SAFETY: loading a shared library runs its initialisers; the operator chose this path
            // (or the loader's search path) as libnrt, whose initialisers we must trust.
            match unsafe { libloading::Library::new(&c) } {
                Ok(lib) => return Self::resolve(lib, c.display().to_string()),
                Err(e) => tried.push((c.display().to_string(), e.to_string())),
            }
        }
        Err(OpenError::Library { tried })
    }

    fn resolve(lib: libloading::Library, path: String) -> Result<Nrt, OpenError> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol's type is the documented C signature of `$name`; the pointer
                // is copied out and stays valid because `Nrt` keeps the library loaded.
                match unsafe { lib.get($name.as_bytes()) } {
                    Ok(s) => *s,
                    Err(e) => {
                        return Err(OpenError::Symbol { library: path.clone(), symbol: $name, error: e.to_string() });
                    }
                }
            };
        }
        // SAFETY: as above; this symbol is optional.
        let get_status_as_str = unsafe { lib.get::<StatusAsStrFn>(b"nrt_get_status_as_str") }.ok().map(|s| *s);
        Ok(Nrt {
            init: sym!("nrt_init"),
            close: sym!("nrt_close"),
            load: sym!("nrt_load"),
            load_collectives: sym!("nrt_load_collectives"),
            unload: sym!("nrt_unload"),
            get_model_tensor_info: sym!("nrt_get_model_tensor_info"),
            free_model_tensor_info: sym!("nrt_free_model_tensor_info"),
            allocate_tensor_set: sym!("nrt_allocate_tensor_set"),
            destroy_tensor_set: sym!("nrt_destroy_tensor_set"),
            add_tensor_to_tensor_set: sym!("nrt_add_tensor_to_tensor_set"),
            tensor_allocate: sym!("nrt_tensor_allocate"),
            tensor_free: sym!("nrt_tensor_free"),
            tensor_read: sym!("nrt_tensor_read"),
            tensor_write: sym!("nrt_tensor_write"),
            execute: sym!("nrt_execute"),
            get_visible_vnc_count: sym!("nrt_get_visible_vnc_count"),
            get_status_as_str,
            path,
            _library: lib,
        })
    }

    /// `nrt_init(NRT_FRAMEWORK_TYPE_NO_FW, "", "")`, as a custom application calls it. Reads
    /// `NEURON_RT_VISIBLE_CORES` and the other `NEURON_RT_*` variables.
    pub fn init(&self) -> Result<(), NrtError> {
        // SAFETY: documented signature; the two strings are valid NUL-terminated literals.
        check("nrt_init", unsafe { (self.init)(NRT_FRAMEWORK_TYPE_NO_FW, c"".as_ptr(), c"".as_ptr()) })
    }

    /// `nrt_close()`: releases the cores. Call once, after every handle was released.
    pub fn close(&self) {
        // SAFETY: documented signature, no arguments.
        unsafe { (self.close)() }
    }

    /// `nrt_load(neff, size, vnc, vnc_count, &model)`; `-1, -1` lets the runtime pick the first
    /// free core and the count the NEFF needs.
    pub fn load(&self, neff: &[u8], vnc: i32, vnc_count: i32) -> Result<Model, NrtError> {
        let mut m: *mut nrt_model_t = ptr::null_mut();
        // SAFETY: `neff` is valid for `neff.len()` bytes for the call; `m` is a valid out pointer.
        let st = unsafe { (self.load)(neff.as_ptr().cast(), neff.len(), vnc, vnc_count, &mut m) };
        check("nrt_load", st)?;
        NonNull::new(m).map(Model).ok_or_else(|| NrtError::new("nrt_load", crate::status::NRT_FAILURE))
    }

    /// `nrt_unload(model)`.
    pub fn unload(&self, model: Model) -> Result<(), NrtError> {
        // SAFETY: `model` came from `nrt_load` of this library and is consumed here.
        check("nrt_unload", unsafe { (self.unload)(model.0.as_ptr()) })
    }

    /// `nrt_get_model_tensor_info`, copied into owned values, then `nrt_free_model_tensor_info`.
    pub fn tensor_info(&self, model: &Model) -> Result<Vec<TensorInfo>, NrtError> {
        let mut arr: *mut nrt_tensor_info_array_t = ptr::null_mut();
        // SAFETY: `model` is a live handle; `arr` is a valid out pointer.
        check("nrt_get_model_tensor_info", unsafe { (self.get_model_tensor_info)(model.0.as_ptr(), &mut arr) })?;
        if arr.is_null() {
            return Err(NrtError::new("nrt_get_model_tensor_info", crate::status::NRT_FAILURE));
        }
        // SAFETY: on success the runtime returned an array of `tensor_count` entries that stays
        // valid until `nrt_free_model_tensor_info`; every entry's `name` is NUL-terminated within
        // its 256 bytes and `shape` points at `ndim` values (or is null when `ndim` is 0).
        let out = unsafe {
            let count = (*arr).tensor_count as usize;
            let first = ptr::addr_of!((*arr).tensor_array).cast::<nrt_tensor_info_t>();
            (0..count)
                .map(|i| {
                    let t = &*first.add(i);
                    let name_bytes = std::slice::from_raw_parts(t.name.as_ptr().cast::<u8>(), NRT_TENSOR_NAME_MAX);
                    let name = CStr::from_bytes_until_nul(name_bytes)
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| String::from_utf8_lossy(name_bytes).into_owned());
                    let shape = if t.shape.is_null() || t.ndim == 0 {
                        Vec::new()
                    } else {
                        std::slice::from_raw_parts(t.shape, t.ndim as usize).to_vec()
                    };
                    TensorInfo { name, usage: t.usage, size: t.size, dtype: t.dtype, shape }
                })
                .collect()
        };
        // SAFETY: `arr` came from `nrt_get_model_tensor_info` and is freed exactly once.
        check("nrt_free_model_tensor_info", unsafe { (self.free_model_tensor_info)(arr) })?;
        Ok(out)
    }

    /// `nrt_tensor_allocate(placement, vnc, size, name, &tensor)`.
    pub fn tensor_allocate(&self, placement: c_int, vnc: c_int, size: usize, name: &str) -> Result<Tensor, NrtError> {
        let name = c_string(name);
        let mut t: *mut nrt_tensor_t = ptr::null_mut();
        // SAFETY: `name` is NUL-terminated and outlives the call; `t` is a valid out pointer.
        let st = unsafe { (self.tensor_allocate)(placement, vnc, size, name.as_ptr(), &mut t) };
        check("nrt_tensor_allocate", st)?;
        NonNull::new(t).map(Tensor).ok_or_else(|| NrtError::new("nrt_tensor_allocate", crate::status::NRT_FAILURE))
    }

    /// `nrt_tensor_free(&tensor)`.
    pub fn tensor_free(&self, tensor: Tensor) {
        let mut p = tensor.0.as_ptr();
        // SAFETY: `p` came from `nrt_tensor_allocate` of this library and is consumed here.
        unsafe { (self.tensor_free)(&mut p) }
    }

    /// `nrt_tensor_write(tensor, data, offset, data.len())`.
    pub fn tensor_write(&self, tensor: &Tensor, offset: usize, data: &[u8]) -> Result<(), NrtError> {
        // SAFETY: `tensor` is live; `data` is valid for `data.len()` bytes during the call.
        check("nrt_tensor_write", unsafe {
            (self.tensor_write)(tensor.0.as_ptr(), data.as_ptr().cast(), offset, data.len())
        })
    }

    /// `nrt_tensor_read(tensor, buf, offset, buf.len())`.
    pub fn tensor_read(&self, tensor: &Tensor, offset: usize, buf: &mut [u8]) -> Result<(), NrtError> {
        // SAFETY: `tensor` is live; `buf` is valid for writes of `buf.len()` bytes during the call.
        check("nrt_tensor_read", unsafe {
            (self.tensor_read)(tensor.0.as_ptr(), buf.as_mut_ptr().cast(), offset, buf.len())
        })
    }

    /// `nrt_allocate_tensor_set(&set)`.
    pub fn allocate_tensor_set(&self) -> Result<TensorSet, NrtError> {
        let mut s: *mut nrt_tensor_set_t = ptr::null_mut();
        // SAFETY: `s` is a valid out pointer.
        check("nrt_allocate_tensor_set", unsafe { (self.allocate_tensor_set)(&mut s) })?;
        NonNull::new(s)
            .map(TensorSet)
            .ok_or_else(|| NrtError::new("nrt_allocate_tensor_set", crate::status::NRT_FAILURE))
    }

    /// `nrt_destroy_tensor_set(&set)` (the tensors in it are not freed).
    pub fn destroy_tensor_set(&self, set: TensorSet) {
        let mut p = set.0.as_ptr();
        // SAFETY: `p` came from `nrt_allocate_tensor_set` of this library and is consumed here.
        unsafe { (self.destroy_tensor_set)(&mut p) }
    }

    /// `nrt_add_tensor_to_tensor_set(set, name, tensor)`: binds `tensor` under `name`.
    pub fn add_tensor_to_tensor_set(&self, set: &TensorSet, name: &str, tensor: &Tensor) -> Result<(), NrtError> {
        let name = c_string(name);
        // SAFETY: both handles are live; `name` is NUL-terminated and outlives the call.
        check("nrt_add_tensor_to_tensor_set", unsafe {
            (self.add_tensor_to_tensor_set)(set.0.as_ptr(), name.as_ptr(), tensor.0.as_ptr())
        })
    }

    /// `nrt_execute(model, inputs, outputs)`: runs the graph once, synchronously.
    pub fn execute(&self, model: &Model, inputs: &TensorSet, outputs: &TensorSet) -> Result<(), NrtError> {
        // SAFETY: all three handles are live and were created by this library.
        check("nrt_execute", unsafe { (self.execute)(model.0.as_ptr(), inputs.0.as_ptr(), outputs.0.as_ptr()) })
    }

    /// `nrt_get_visible_vnc_count`: cores this process owns (after `NEURON_RT_VISIBLE_CORES`).
    pub fn visible_vnc_count(&self) -> Result<u32, NrtError> {
        let mut n = 0u32;
        // SAFETY: `n` is a valid out pointer.
        check("nrt_get_visible_vnc_count", unsafe { (self.get_visible_vnc_count)(&mut n) })?;
        Ok(n)
    }

    /// The runtime's own text for a status code, when the library exports
    /// `nrt_get_status_as_str`.
    pub fn status_text(&self, status: i32) -> Option<String> {
        let f = self.get_status_as_str?;
        // SAFETY: documented signature; the result is null or a static NUL-terminated string.
        let p = unsafe { f(status) };
        // SAFETY: checked non-null; the runtime owns the static string.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn tensor_info_has_the_lp64_layout() {
        assert_eq!(size_of::<nrt_tensor_info_t>(), 296);
        assert_eq!(align_of::<nrt_tensor_info_t>(), 8);
        assert_eq!(offset_of!(nrt_tensor_info_t, name), 0);
        assert_eq!(offset_of!(nrt_tensor_info_t, usage), 256);
        assert_eq!(offset_of!(nrt_tensor_info_t, size), 264);
        assert_eq!(offset_of!(nrt_tensor_info_t, dtype), 272);
        assert_eq!(offset_of!(nrt_tensor_info_t, shape), 280);
        assert_eq!(offset_of!(nrt_tensor_info_t, ndim), 288);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_other_structs_have_their_c_layout() {
        assert_eq!(size_of::<nrt_tensor_info_array_t>(), 8);
        assert_eq!(offset_of!(nrt_tensor_info_array_t, tensor_count), 0);
        assert_eq!(offset_of!(nrt_tensor_info_array_t, tensor_array), 8);

        assert_eq!(size_of::<nrt_instance_info_t>(), 32);
        assert_eq!(offset_of!(nrt_instance_info_t, family), 0);
        assert_eq!(offset_of!(nrt_instance_info_t, size), 4);
        assert_eq!(offset_of!(nrt_instance_info_t, arch_name), 8);
        assert_eq!(offset_of!(nrt_instance_info_t, device_revision), 24);

        assert_eq!(size_of::<nrt_version_t>(), 224);
        assert_eq!(offset_of!(nrt_version_t, rt_major), 0);
        assert_eq!(offset_of!(nrt_version_t, rt_minor), 8);
        assert_eq!(offset_of!(nrt_version_t, rt_patch), 16);
        assert_eq!(offset_of!(nrt_version_t, rt_maintenance), 24);
        assert_eq!(offset_of!(nrt_version_t, rt_detail), 32);
        assert_eq!(offset_of!(nrt_version_t, git_hash), 160);

        assert_eq!(size_of::<nrt_vnc_memory_stats_t>(), 16);
        assert_eq!(offset_of!(nrt_vnc_memory_stats_t, bytes_used), 0);
        assert_eq!(offset_of!(nrt_vnc_memory_stats_t, bytes_limit), 8);

        assert_eq!(size_of::<nrt_model_info_t>(), 4);
        assert_eq!(offset_of!(nrt_model_info_t, vnc), 0);
    }

    #[test]
    fn dtype_values_are_the_header_values() {
        assert_eq!(
            [NRT_DTYPE_FLOAT32, NRT_DTYPE_INT32, NRT_DTYPE_BFLOAT16, NRT_DTYPE_INT64, NRT_DTYPE_UINT64],
            [0xA, 0x8, 0x6, 0xC, 0x1]
        );
        assert_eq!((NRT_FRAMEWORK_TYPE_NO_FW, NRT_TENSOR_PLACEMENT_DEVICE, NRT_TENSOR_USAGE_OUTPUT), (1, 0, 1));
    }

    #[test]
    fn a_missing_library_lists_what_was_tried() {
        let err = Nrt::open(Some(Path::new("/nonexistent/libnrt-test.so"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libnrt-test.so"), "{msg}");
        match err {
            OpenError::Library { tried } => assert_eq!(tried.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
