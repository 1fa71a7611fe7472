// Greedy sampling on the device: the index of each row's largest logit (lowest index on ties).
// Grid: one block per row, 1024 threads.
extern "C" __global__ void argmax_f32(u32* out, const float* logits, int vocab) {
    __shared__ float best_v[32];
    __shared__ u32 best_i[32];
    const float* x = logits + (long)blockIdx.x * vocab;
    float bv = -INFINITY;
    u32 bi = 0xffffffffu;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = x[i];
        if (v > bv) { bv = v; bi = i; }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { best_v[warp] = bv; best_i[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) { bv = best_v[w]; bi = best_i[w]; }
        out[blockIdx.x] = bi == 0xffffffffu ? 0u : bi;
    }
}
