// Rotary embedding in place. NeoX layout (interleaved == 0): dims i and i + head_dim/2 rotate
// together; interleaved (llama.cpp's "normal" RoPE for Llama GGUF files): dims 2i and 2i + 1.
// freq_factors (read only when has_factors): head_dim/2 divisors of each pair's frequency (llama.cpp's
// rope_freqs, Llama 3.1's long-context scaling).
// Grid: (rows, heads); threads over half a head. Angles in f64 like the CPU reference's table.
extern "C" __global__ void rope_neox_f32(float* x, const u32* positions, int heads, int head_dim, float base,
                                         float position_scale, int interleaved, int has_factors,
                                         const float* freq_factors) {
    const long r = blockIdx.x;
    const int h = blockIdx.y, half = head_dim / 2;
    float* v = x + (r * heads + h) * head_dim;
    const double pos = (double)positions[r] / (double)position_scale;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double inv_freq = pow((double)base, -2.0 * i / (double)head_dim);
        if (has_factors) inv_freq /= (double)freq_factors[i];
        double s, c;
        sincos(pos * inv_freq, &s, &c);
        const float cs = (float)c, sn = (float)s;
        const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = v[ia], b = v[ib];
        v[ia] = a * cs - b * sn;
        v[ib] = a * sn + b * cs;
    }
}
