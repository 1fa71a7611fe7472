// Paged attention for every query row of a step: prefill chunks and decode tokens alike, each row
// over its own sequence's keys (causal, optional sliding window, optional softcap, GQA).
//
// Cache layout per layer: `[num_blocks * block_size, kv_heads * head_dim]` f16. Per row the host
// passes its position and the offset of its sequence's block table in `tables`; key position j of
// that sequence sits at slot `tables[off + j / block_size] * block_size + j % block_size`.
//
// Grid: (rows, kv_heads, splits); block: ATTN_THREADS threads. A block serves all G = heads /
// kv_heads query heads of one KV head (each key and value is read once for the group) over one
// split of the row's key range (flash-decoding: short batches still fill the GPU). It walks its keys
// in tiles of ATTN_TILE = one key per thread:
//   scores — each thread scores its key against the G queries (16-byte key loads issued four at a
//            time, queries broadcast from shared memory, no shuffles);
//   softmax — one warp per head updates the running max and sum over the tile;
//   P·V    — warp w takes the tile's keys w, w + ATTN_WARPS, ...; lane l owns head_dim / 32
//            consecutive dims (one 8- or 16-byte load per value row), accumulating per warp.
// The warps' accumulators are summed once at the end. With one split the block writes the
// normalised output; with several it writes unnormalised partials (acc, max, sum) that
// attention_combine_f32 merges.
// The kernel is compiled for a few (MAXG, DPL) bounds so that registers hold only what a model
// needs (G × head_dim / 32 accumulators per lane): attention_f32_g{MAXG}_d{DPL} serves G ≤ MAXG
// and head_dim ≤ 32 × DPL; the host picks the smallest that fits. head_dim is a multiple of 32.
// q is rounded to f16 first, as the CPU reference (and ggml's flash attention) does.

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_TILE ATTN_THREADS

__device__ __forceinline__ long kv_slot(const u32* table, u32 j, int block_size) {
    return (long)table[j / block_size] * block_size + j % block_size;
}

__device__ __forceinline__ void unpack8(const uint4 raw, float* out) {
    const u32 w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        out[2 * e] = f16_to_f32((f16_t)(w[e] & 0xffffu));
        out[2 * e + 1] = f16_to_f32((f16_t)(w[e] >> 16));
    }
}

// n ≤ 8 consecutive f16 values starting at p into out[0..n); vector loads for n = 2, 4, 8 (p is
// then aligned to 2n bytes).
__device__ __forceinline__ void load_f16s(const f16_t* p, int n, float* out) {
    if (n == 8) {
        unpack8(*(const uint4*)p, out);
    } else if (n == 4) {
        const uint2 r = *(const uint2*)p;
        out[0] = f16_to_f32((f16_t)(r.x & 0xffffu));
        out[1] = f16_to_f32((f16_t)(r.x >> 16));
        out[2] = f16_to_f32((f16_t)(r.y & 0xffffu));
        out[3] = f16_to_f32((f16_t)(r.y >> 16));
    } else if (n == 2) {
        const u32 r = *(const u32*)p;
        out[0] = f16_to_f32((f16_t)(r & 0xffffu));
        out[1] = f16_to_f32((f16_t)(r >> 16));
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i)
            if (i < n) out[i] = f16_to_f32(p[i]);
    }
}

template <int ATTN_MAXG, int ATTN_DPL>
__device__ __forceinline__ void attention_impl(float* out, float* part_acc, float* part_ml, const float* q,
                                               const f16_t* kc, const f16_t* vc, const u32* row_pos,
                                               const u32* row_table, const u32* tables, int heads, int kv_heads,
                                               int head_dim, int block_size, float scale, int window,
                                               float softcap, int splits) {
    __shared__ float s_q[ATTN_MAXG][32 * ATTN_DPL];
    __shared__ float s_p[ATTN_MAXG][ATTN_TILE];
    __shared__ long s_slot[ATTN_TILE];
    __shared__ float s_m[ATTN_MAXG], s_l[ATTN_MAXG], s_corr[ATTN_MAXG];

    const long r = blockIdx.x;
    const int kvh = blockIdx.y, split = blockIdx.z;
    const int G = heads / kv_heads;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int dpl = head_dim >> 5;  // dims per lane in P·V
    const long kv_dim = (long)kv_heads * head_dim;
    const u32 pos = row_pos[r];
    const u32* table = tables + row_table[r];
    const u32 lo = (window > 0 && pos + 1 > (u32)window) ? pos + 1 - (u32)window : 0u;
    const u32 n = pos - lo + 1;
    const u32 chunk = (n + splits - 1) / splits;
    const u32 s_lo = lo + (u32)split * chunk;
    const u32 s_hi = min(pos, s_lo + chunk - 1);  // inclusive; empty when s_lo > pos

    for (int i = tid; i < G * head_dim; i += ATTN_THREADS) {
        const int g = i / head_dim, d = i % head_dim;
        s_q[g][d] = f16_to_f32(f32_to_f16(q[(r * heads + (long)kvh * G + g) * head_dim + d]));
    }
    if (tid < ATTN_MAXG) { s_m[tid] = -INFINITY; s_l[tid] = 0.0f; }
    float acc[ATTN_MAXG][ATTN_DPL];
#pragma unroll
    for (int g = 0; g < ATTN_MAXG; ++g)
#pragma unroll
        for (int i = 0; i < ATTN_DPL; ++i) acc[g][i] = 0.0f;
    __syncthreads();

    for (u32 base = s_lo; s_lo <= pos && base <= s_hi; base += ATTN_TILE) {
        // Scores: thread t takes key base + t; its slot is kept for P·V.
        const u32 j = base + tid;
        float dots[ATTN_MAXG];
#pragma unroll
        for (int g = 0; g < ATTN_MAXG; ++g) dots[g] = 0.0f;
        if (j <= s_hi) {
            const long slot = kv_slot(table, j, block_size);
            s_slot[tid] = slot;
            const uint4* kr = (const uint4*)(kc + slot * kv_dim + (long)kvh * head_dim);
            const int chunks = head_dim / 8;
            // Issue BATCH 16-byte loads before using any (half of a 128-dim key).
            constexpr int BATCH = 8;
            for (int c0 = 0; c0 < chunks; c0 += BATCH) {
                uint4 raw[BATCH];
#pragma unroll
                for (int u = 0; u < BATCH; ++u)
                    if (c0 + u < chunks) raw[u] = kr[c0 + u];
#pragma unroll
                for (int u = 0; u < BATCH; ++u) {
                    if (c0 + u < chunks) {
                        float k8[8];
                        unpack8(raw[u], k8);
#pragma unroll
                        for (int g = 0; g < ATTN_MAXG; ++g) {
                            if (g < G) {
                                const float* qg = &s_q[g][(c0 + u) * 8];
#pragma unroll
                                for (int e = 0; e < 8; ++e) dots[g] += qg[e] * k8[e];
                            }
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int g = 0; g < ATTN_MAXG; ++g) {
            if (g < G) {
                float sc = dots[g] * scale;
                if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
                s_p[g][tid] = j <= s_hi ? sc : -INFINITY;
            }
        }
        __syncthreads();
        // Online softmax per head: warp w updates heads w, w + ATTN_WARPS, ...
        for (int g = warp; g < G; g += ATTN_WARPS) {
            float v[ATTN_TILE / 32];
            float mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < ATTN_TILE / 32; ++i) {
                v[i] = s_p[g][lane + 32 * i];
                mx = fmaxf(mx, v[i]);
            }
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_old = s_m[g];
            const float m_new = fmaxf(m_old, mx);  // finite: every tile has at least one key
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < ATTN_TILE / 32; ++i) {
                const float p = expf(v[i] - m_new);
                s_p[g][lane + 32 * i] = p;
                sum += p;
            }
            sum = warp_sum(sum);
            if (lane == 0) {
                const float corr = expf(m_old - m_new);
                s_corr[g] = corr;
                s_l[g] = s_l[g] * corr + sum;
                s_m[g] = m_new;
            }
        }
        __syncthreads();
        // P·V: warp w takes keys w, w + ATTN_WARPS, ...; lane l owns dims [l * dpl, (l + 1) * dpl).
#pragma unroll
        for (int g = 0; g < ATTN_MAXG; ++g)
            if (g < G)
#pragma unroll
                for (int i = 0; i < ATTN_DPL; ++i) acc[g][i] *= s_corr[g];
        const int len = (int)(min(s_hi, base + ATTN_TILE - 1) - base) + 1;
#pragma unroll 8
        for (int jj = warp; jj < len; jj += ATTN_WARPS) {
            const f16_t* vr = vc + s_slot[jj] * kv_dim + (long)kvh * head_dim;
            float v[ATTN_DPL];
            load_f16s(vr + lane * dpl, dpl, v);
#pragma unroll
            for (int g = 0; g < ATTN_MAXG; ++g) {
                if (g < G) {
                    const float p = s_p[g][jj];
#pragma unroll
                    for (int i = 0; i < ATTN_DPL; ++i)
                        if (i < dpl) acc[g][i] += p * v[i];
                }
            }
        }
        __syncthreads();
    }

    // Sum the warps' accumulators (reusing s_q, no longer needed), then write.
    for (int w = 0; w < ATTN_WARPS; ++w) {
        if (warp == w) {
#pragma unroll
            for (int g = 0; g < ATTN_MAXG; ++g) {
                if (g < G) {
#pragma unroll
                    for (int i = 0; i < ATTN_DPL; ++i) {
                        if (i < dpl) {
                            float* dst = &s_q[g][lane * dpl + i];
                            *dst = (w == 0 ? 0.0f : *dst) + acc[g][i];
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
    for (int i = tid; i < G * head_dim; i += ATTN_THREADS) {
        const int g = i / head_dim, d = i % head_dim;
        const long h = (long)kvh * G + g;
        if (splits == 1) {
            out[(r * heads + h) * head_dim + d] = s_q[g][d] / s_l[g];
        } else {
            part_acc[((r * heads + h) * splits + split) * head_dim + d] = s_q[g][d];
        }
    }
    if (splits > 1 && tid < G) {
        const long h = (long)kvh * G + tid;
        part_ml[((r * heads + h) * splits + split) * 2] = s_m[tid];
        part_ml[((r * heads + h) * splits + split) * 2 + 1] = s_l[tid];
    }
}

// MINB: blocks per SM the register allocation must allow (occupancy hides the memory latency that
// bounds this kernel; at 128 registers per thread only 4 blocks fit and DRAM sat at 20%).
#define ATTN_ENTRY(G, D, MINB)                                                                                \
    extern "C" __global__ void __launch_bounds__(ATTN_THREADS, MINB) attention_f32_g##G##_d##D(             \
        float* out, float* part_acc, float* part_ml, const float* q, const f16_t* kc, const f16_t* vc,      \
        const u32* row_pos, const u32* row_table, const u32* tables, int heads, int kv_heads, int head_dim, \
        int block_size, float scale, int window, float softcap, int splits) {                               \
        attention_impl<G, D>(out, part_acc, part_ml, q, kc, vc, row_pos, row_table, tables, heads, kv_heads, \
                             head_dim, block_size, scale, window, softcap, splits);                         \
    }

ATTN_ENTRY(4, 4, 8)
ATTN_ENTRY(8, 4, 6)
ATTN_ENTRY(4, 8, 6)
ATTN_ENTRY(8, 8, 4)

// Merges the splits of attention_f32. Grid: (rows, heads); threads over head_dim.
extern "C" __global__ void attention_combine_f32(float* out, const float* part_acc, const float* part_ml, int heads,
                                                 int head_dim, int splits) {
    const long rh = (long)blockIdx.x * heads + blockIdx.y;
    const float* ml = part_ml + rh * splits * 2;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float total = 0.0f;
    for (int s = 0; s < splits; ++s)
        if (ml[2 * s] != -INFINITY) total += ml[2 * s + 1] * expf(ml[2 * s] - mx);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < splits; ++s)
            if (ml[2 * s] != -INFINITY) v += part_acc[(rh * splits + s) * head_dim + d] * expf(ml[2 * s] - mx);
        out[rh * head_dim + d] = v / total;
    }
}
