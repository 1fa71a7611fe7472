// KV write into the paged cache. One layer's cache is `[num_blocks * block_size, kv_dim]` f16, so
// token p of a sequence lives at slot `table[p / block_size] * block_size + p % block_size`; the
// host computes each row's slot. Grid: one block per row.
extern "C" __global__ void kv_write_f16(f16_t* kc, f16_t* vc, const float* k, const float* v, const u32* slots,
                                        int kv_dim) {
    const long r = blockIdx.x;
    const long dst = (long)slots[r] * kv_dim;
    for (int c = threadIdx.x; c < kv_dim; c += blockDim.x) {
        kc[dst + c] = f32_to_f16(k[r * kv_dim + c]);
        vc[dst + c] = f32_to_f16(v[r * kv_dim + c]);
    }
}
