// Embedding gather: out[r, :] = table[ids[r], :] * scale, for each weight storage type.
// Grid: one block per row.
extern "C" __global__ void embed_bf16(float* out, const bf16_t* table, const u32* ids, int cols, float scale) {
    const long r = blockIdx.x;
    const bf16_t* src = table + (long)ids[r] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = bf16_to_f32(src[c]) * scale;
}

extern "C" __global__ void embed_f16(float* out, const f16_t* table, const u32* ids, int cols, float scale) {
    const long r = blockIdx.x;
    const f16_t* src = table + (long)ids[r] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = f16_to_f32(src[c]) * scale;
}

extern "C" __global__ void embed_f32(float* out, const float* table, const u32* ids, int cols, float scale) {
    const long r = blockIdx.x;
    const float* src = table + (long)ids[r] * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) out[r * cols + c] = src[c] * scale;
}
