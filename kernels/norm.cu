// RMS norms over groups of `group` columns (a whole row, or one head for q/k norms). The stored
// weight already carries Gemma's `1 + w` (the GGUF converter folds it in), so it multiplies as is.
// Grid: one block per group; sums of squares in f64 (as the CPU reference does).

__device__ __forceinline__ float rms_scale(const float* x, int n, float eps) {
    double s = 0.0;
    for (int c = threadIdx.x; c < n; c += blockDim.x) s += (double)x[c] * (double)x[c];
    s = block_sum_f64(s);
    return 1.0f / sqrtf((float)(s / n) + eps);
}

// out = rms_norm(x) * w, per group.
extern "C" __global__ void rms_norm_f32(float* out, const float* x, const float* w, int group, float eps) {
    const long g = blockIdx.x;
    const float* xr = x + g * group;
    const float s = rms_scale(xr, group, eps);
    for (int c = threadIdx.x; c < group; c += blockDim.x) out[g * group + c] = xr[c] * s * w[c];
}

// acc += rms_norm(x) * w, per row (the post-norm residual of Gemma-style blocks).
extern "C" __global__ void add_rms_norm_f32(float* acc, const float* x, const float* w, int cols, float eps) {
    const long r = blockIdx.x;
    const float* xr = x + r * cols;
    const float s = rms_scale(xr, cols, eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) acc[r * cols + c] += xr[c] * s * w[c];
}
