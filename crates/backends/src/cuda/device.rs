//! Device discovery that never panics, and the per-device state every op uses: context, one
//! stream, a cuBLAS handle and the compiled kernels.
//!
//! cudarc loads libcuda, libnvrtc and libcublas at run time (`dynamic-loading`), so one binary runs
//! with or without a GPU. A missing library would panic on first use; we check each one first and
//! turn absence into an error that names it and says how to fix it.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use hearth_core::BackendError;

use super::kernels;

/// One CUDA library the backend needs, and whether the loader finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    pub name: &'static str,
    pub present: bool,
    pub fix: &'static str,
}

fn present(f: unsafe fn() -> bool) -> bool {
    // SAFETY: the check only dlopens candidate names; a loader panic is caught.
    catch_unwind(|| unsafe { f() }).unwrap_or(false)
}

/// Which of the libraries the CUDA backend loads are present on this machine.
pub fn libraries() -> Vec<Library> {
    vec![
        Library {
            name: "libcuda (the NVIDIA driver)",
            present: present(cudarc::driver::sys::is_culib_present),
            fix: "install the NVIDIA driver (580 or newer) or run on a machine with a GPU",
        },
        Library {
            name: "libnvrtc (CUDA runtime compiler)",
            present: present(cudarc::nvrtc::sys::is_culib_present),
            fix: "install CUDA 12.x/13.x or the nvidia-cuda-nvrtc wheel and add its lib folder to LD_LIBRARY_PATH",
        },
        Library {
            name: "libcublas",
            present: present(cudarc::cublas::sys::is_culib_present),
            fix: "install CUDA 12.x/13.x or the nvidia-cublas wheel and add its lib folder to LD_LIBRARY_PATH",
        },
    ]
}

/// Why no GPU can be used, or `None` when libraries and a device are there. Never panics.
pub fn unavailable_reason() -> Option<String> {
    let missing: Vec<String> =
        libraries().into_iter().filter(|l| !l.present).map(|l| format!("{} not found: {}", l.name, l.fix)).collect();
    if !missing.is_empty() {
        return Some(missing.join("; "));
    }
    match catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => None,
        Ok(Ok(_)) => Some("the NVIDIA driver reports no CUDA device".into()),
        Ok(Err(e)) => Some(format!("the NVIDIA driver reports no usable device: {e}")),
        Err(_) => Some("the CUDA driver library failed to load".into()),
    }
}

/// Free bytes on device `ordinal`, or `None` where there is no usable device. Never panics.
pub fn free_memory(ordinal: usize) -> Option<usize> {
    if unavailable_reason().is_some() {
        return None;
    }
    let ctx = catch_unwind(|| CudaContext::new(ordinal)).ok()?.ok()?;
    ctx.mem_get_info().ok().map(|(free, _total)| free)
}

/// The device state the ops use.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    _workspace: cudarc::driver::CudaSlice<u8>,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: usize,
    functions: HashMap<&'static str, CudaFunction>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("name", &self.name).field("cc", &self.compute_capability).finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{what}: {e}"))
}

impl Gpu {
    /// Opens device `ordinal`, compiles the kernels for its architecture and creates a cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Gpu, BackendError> {
        if let Some(why) = unavailable_reason() {
            return Err(BackendError::Unavailable(format!("CUDA backend: {why}")));
        }
        let ctx = catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| BackendError::Unavailable("CUDA: creating a context panicked".into()))?
            .map_err(|e| unavailable(&format!("CUDA device {ordinal}"), e))?;
        // One stream, used in order by every op: cudarc's cross-stream event tracking is not needed.
        // SAFETY: no slice of this context is used on another stream.
        unsafe { ctx.disable_event_tracking() };
        let name = ctx.name().map_err(|e| unavailable("CUDA device name", e))?;
        let cc = ctx.compute_capability().map_err(|e| unavailable("CUDA compute capability", e))?;
        if cc.0 < 8 {
            return Err(BackendError::Unavailable(format!(
                "CUDA device {ordinal} ({name}) has compute capability {}.{}; hearth needs 8.0 or newer (bf16 GEMMs)",
                cc.0, cc.1
            )));
        }
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable("CUDA multiprocessor count", e))? as usize;
        let arch = kernels::arch_name(cc.0, cc.1);
        let mut functions = HashMap::new();
        for ((file, ptx), (_, _, entries)) in
            kernels::compile_all(arch).map_err(BackendError::Unavailable)?.into_iter().zip(kernels::SOURCES)
        {
            let module = ctx.load_module(ptx).map_err(|e| unavailable(&format!("loading kernels/{file}"), e))?;
            for e in *entries {
                let f = module.load_function(e).map_err(|err| unavailable(&format!("kernel {e}"), err))?;
                functions.insert(*e, f);
            }
        }
        // A stream of our own (the legacy default stream cannot be captured into a graph).
        let stream = ctx.new_stream().map_err(|e| unavailable("CUDA stream", e))?;
        let blas = catch_unwind(AssertUnwindSafe(|| CudaBlas::new(stream.clone())))
            .map_err(|_| BackendError::Unavailable("cuBLAS: creating a handle panicked".into()))?
            .map_err(|e| unavailable("cuBLAS handle", e))?;
        // A workspace of our own, so GEMMs captured into graphs never allocate (32 MiB, as NVIDIA
        // recommends for Hopper).
        let workspace = stream.alloc_zeros::<u8>(32 << 20).map_err(|e| unavailable("cuBLAS workspace", e))?;
        {
            let (ptr, _guard) = cudarc::driver::DevicePtr::device_ptr(&workspace, &stream);
            // SAFETY: the workspace outlives the handle (both live in `Gpu`; fields drop in order,
            // blas before workspace).
            let status = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut std::ffi::c_void, 32 << 20)
            };
            if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(BackendError::Unavailable(format!("cuBLAS workspace: {status:?}")));
            }
        }
        Ok(Gpu { ctx, stream, blas, _workspace: workspace, name, compute_capability: cc, multiprocessors, functions })
    }

    /// A compiled kernel by entry-point name.
    pub fn function(&self, name: &str) -> &CudaFunction {
        self.functions.get(name).unwrap_or_else(|| panic!("kernel {name} is not in kernels::SOURCES. This is a bug."))
    }
}
