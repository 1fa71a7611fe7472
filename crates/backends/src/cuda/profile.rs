//! Per-op timing of the CUDA op set (`CudaOps::set_profiling`).

/// Per-op wall time while profiling: label → (total, calls).
pub(super) type ProfileSink =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, (std::time::Duration, u64)>>>;

/// Times one op while profiling: the stream is drained at both ends, so the time is the op's own.
pub(super) struct OpTimer {
    stream: std::sync::Arc<cudarc::driver::CudaStream>,
    start: std::time::Instant,
    label: String,
    sink: ProfileSink,
}

impl OpTimer {
    pub(super) fn start(stream: std::sync::Arc<cudarc::driver::CudaStream>, label: String, sink: ProfileSink) -> Self {
        OpTimer { stream, start: std::time::Instant::now(), label, sink }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        if self.stream.synchronize().is_ok() {
            let mut m = self.sink.lock().unwrap_or_else(|e| e.into_inner());
            let e = m.entry(std::mem::take(&mut self.label)).or_default();
            e.0 += self.start.elapsed();
            e.1 += 1;
        }
    }
}
