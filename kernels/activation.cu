// Gated activations and casts, elementwise over n values.

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

// out = gelu_tanh(gate) * up (GeGLU, Gemma).
extern "C" __global__ void gelu_mul_f32(float* out, const float* gate, const float* up, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = gelu_tanh(gate[i]) * up[i];
}

// out = silu(gate) * up (SwiGLU, Llama).
extern "C" __global__ void silu_mul_f32(float* out, const float* gate, const float* up, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// acc += x (the pre-norm residual).
extern "C" __global__ void add_f32(float* acc, const float* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        acc[i] += x[i];
}

// x[r, c] += b[c] over n = rows * cols values (projection biases).
extern "C" __global__ void add_bias_f32(float* x, const float* b, int cols, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        x[i] += b[i % cols];
}

// out = bf16(x): the GEMM input.
extern "C" __global__ void cast_f32_bf16(bf16_t* out, const float* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        out[i] = f32_to_bf16(x[i]);
}

// out = f16(x), saturating at ±65504 (a GEMM input never becomes infinite; NaN stays NaN).
extern "C" __global__ void cast_f32_f16(f16_t* out, const float* x, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        const float v = x[i];
        out[i] = f32_to_f16(v != v ? v : fminf(fmaxf(v, -65504.0f), 65504.0f));
    }
}

// Keeps the given rows, in the given order: out[i, :] = x[rows[i], :]. Grid: one block per output row.
extern "C" __global__ void select_rows_f32(float* out, const float* x, const u32* rows, int cols) {
    const long i = blockIdx.x;
    const float* src = x + (long)rows[i] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[i * cols + c] = src[c];
}
